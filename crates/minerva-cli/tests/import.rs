//! `minerva import`, `verify` and `models` on a registry in a temporary `MINERVA_HOME`,
//! including a kill -9 in the middle of an import.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{json, minerva_command};
use minerva_store::{ModelStore, Registry};

const GEMMA_SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";
const SMOLLM2_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

fn default_model(name: &str) -> PathBuf {
    Path::new(&std::env::var_os("HOME").expect("HOME is set"))
        .join(".local/share/minerva/models")
        .join(name)
}

fn minerva(home: &Path, args: &[&str]) -> Command {
    let mut command = minerva_command(args);
    command.env("MINERVA_HOME", home);
    command
}

fn run(home: &Path, args: &[&str]) -> Output {
    minerva(home, args).output().expect("minerva runs")
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn kill_9_during_import_leaves_no_half_registered_model_and_reimport_succeeds() {
    let home = tempfile::tempdir().unwrap();
    let models = home.path().join("models");
    let source = default_model("gemma-3-270m.gguf");
    let source = source.to_str().unwrap();
    let mut child = minerva(home.path(), &["import", source, "--id", "gemma"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Poll until the copy is under way: the temporary file exists and is growing.
    let partial = models.join(".import-gemma.partial");
    let mut first_seen = 0;
    loop {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended before it could be killed"
        );
        let size = std::fs::metadata(&partial).map_or(0, |m| m.len());
        if first_seen > 0 && size > first_seen {
            break;
        }
        if first_seen == 0 {
            first_seen = size;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    assert_eq!(
        child.wait().unwrap().signal(),
        Some(9),
        "killed in the middle of the import"
    );
    let size = std::fs::metadata(&partial).unwrap().len();
    assert!(size < 253_113_024, "the copy was cut short ({size} bytes)");

    // Before recovery: a temporary file, no final file, no row.
    let store = ModelStore::new(&models);
    let registry = Registry::open(&Registry::default_path(&store)).unwrap();
    assert!(registry.records().unwrap().is_empty());
    assert!(!models.join("gemma.gguf").exists());
    drop(registry);

    // The next command recovers: the temporary file goes, nothing is listed.
    let listed = json(&run(home.path(), &["models", "--json"]));
    assert_eq!(listed["models"], serde_json::json!([]));
    assert!(listing(&models).is_empty(), "{:?}", listing(&models));

    let imported = json(&run(home.path(), &["import", source, "--id", "gemma", "--json"]));
    assert_eq!(imported["sha256"], GEMMA_SHA256);
    assert_eq!(imported["status"], "ok");
    assert_eq!(listing(&models), ["gemma.gguf"]);
    let verified = run(home.path(), &["verify", "gemma"]);
    assert!(
        verified.status.success(),
        "{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(String::from_utf8_lossy(&verified.stdout).contains(GEMMA_SHA256));
}

#[test]
fn verify_fails_on_a_flipped_byte_and_models_shows_the_mismatch() {
    let home = tempfile::tempdir().unwrap();
    let source = default_model("smollm2-135m-instruct.gguf");
    let imported = json(&run(home.path(), &["import", source.to_str().unwrap(), "--json"]));
    assert_eq!(imported["id"], "smollm2-135m-instruct");
    assert_eq!(imported["sha256"], SMOLLM2_SHA256);
    assert_eq!(imported["architecture"], "llama");
    assert_eq!(imported["quantization"], "Q4_1");

    let ok = run(home.path(), &["verify"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let path = home.path().join("models/smollm2-135m-instruct.gguf");
    let mut bytes = std::fs::read(&path).unwrap();
    *bytes.last_mut().unwrap() ^= 0x80;
    std::fs::write(&path, bytes).unwrap();
    let failed = run(home.path(), &["verify"]);
    assert!(!failed.status.success());
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert!(
        stdout.contains("mismatch") && stdout.contains("MISMATCH: the file now hashes to"),
        "{stdout}"
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("error: 1 of 1 models failed verification"), "{stderr}");

    let listed = json(&run(home.path(), &["models", "--json"]));
    assert_eq!(listed["models"][0]["status"], "mismatch");
    assert_eq!(
        listed["models"][0]["sha256"], SMOLLM2_SHA256,
        "the registered digest is kept"
    );
}

#[test]
fn importing_a_garbage_file_is_one_error_line_naming_it_and_leaves_nothing() {
    let home = tempfile::tempdir().unwrap();
    let junk = home.path().join("model.gguf");
    std::fs::write(&junk, vec![0u8; 4096]).unwrap();
    let out = run(home.path(), &["import", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(&junk.display().to_string()), "{stderr}");
    assert!(errors[0].contains("not a GGUF model file"), "{stderr}");
    let models = home.path().join("models");
    assert!(!models.exists() || listing(&models).is_empty());

    // Dropped into the models directory by hand, it is listed as invalid, with the reason.
    std::fs::create_dir_all(&models).unwrap();
    std::fs::copy(&junk, models.join("junk.gguf")).unwrap();
    let listed = json(&run(home.path(), &["models", "--json"]));
    assert_eq!(listed["models"][0]["id"], "junk");
    assert_eq!(listed["models"][0]["status"], "invalid");
    assert!(
        listed["models"][0]["error"]
            .as_str()
            .unwrap()
            .contains("not a GGUF model file")
    );
}

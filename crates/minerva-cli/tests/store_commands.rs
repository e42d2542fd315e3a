//! `minerva create`, `config`, `show`, `tag`, `history` and `rollback` on the real default
//! models in a temporary `MINERVA_HOME`.

mod common;

use std::path::Path;
use std::process::Output;

use common::minerva_command;
use serde_json::Value;

fn run(home: &Path, args: &[&str]) -> Output {
    let mut command = minerva_command(args);
    command.env("MINERVA_HOME", home);
    command.output().expect("minerva runs")
}

fn ok(home: &Path, args: &[&str]) -> String {
    let out = run(home, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_modelfile_makes_a_model_with_settings_and_tags_keep_a_history_to_roll_back() {
    let home = tempfile::tempdir().unwrap();
    let models = home.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let defaults = Path::new(&std::env::var_os("HOME").unwrap()).join(".local/share/minerva/models");
    for file in ["smollm2-135m-instruct.gguf", "gemma-3-270m.gguf"] {
        std::fs::hard_link(defaults.join(file), models.join(file)).unwrap();
    }
    let modelfile = home.path().join("Modelfile");
    std::fs::write(
        &modelfile,
        "FROM smollm2-135m-instruct\nPARAMETER temperature 0.2\nPARAMETER num_ctx 2048\nSYSTEM \"\"\"\nYou are terse.\n\"\"\"\n",
    )
    .unwrap();
    ok(home.path(), &["create", "terse", "-f", modelfile.to_str().unwrap()]);
    let shown: Value = serde_json::from_str(&ok(home.path(), &["show", "terse", "--json"])).unwrap();
    assert_eq!(shown["settings"]["temperature"], 0.2);
    assert_eq!(shown["settings"]["num_ctx"], 2048);
    assert_eq!(shown["settings"]["system"], "You are terse.");
    assert_eq!(shown["model"]["quantization"], "Q4_1");
    assert!(shown["chat_template"].as_str().unwrap().contains("im_start"));

    // A bad Modelfile names its line and changes nothing.
    std::fs::write(&modelfile, "FROM smollm2-135m-instruct\nPARAMETER temperature warm\n").unwrap();
    let refused = run(home.path(), &["create", "other", "-f", modelfile.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("line 2"));
    assert!(!models.join("other.gguf").exists());

    // config changes one key and keeps the others.
    ok(home.path(), &["config", "terse", "temperature=", "top_k=20"]);
    let shown: Value = serde_json::from_str(&ok(home.path(), &["show", "terse", "--json"])).unwrap();
    assert!(shown["settings"]["temperature"].is_null());
    assert_eq!(shown["settings"]["top_k"], 20);
    assert_eq!(shown["settings"]["num_ctx"], 2048);

    // Re-pointing the name keeps a history; rollback goes back.
    let smol_sha = shown["model"]["sha256"].as_str().unwrap().to_owned();
    ok(home.path(), &["tag", "gemma-3-270m", "terse"]);
    let history = ok(home.path(), &["history", "terse"]);
    assert_eq!(history.lines().count(), 2, "{history}");
    assert!(history.lines().nth(1).unwrap().starts_with('*'), "{history}");
    ok(home.path(), &["rollback", "terse"]);
    let shown: Value = serde_json::from_str(&ok(home.path(), &["show", "terse", "--json"])).unwrap();
    assert_eq!(shown["model"]["sha256"], smol_sha.as_str());
    assert_eq!(shown["history"].as_array().unwrap().len(), 3);
}

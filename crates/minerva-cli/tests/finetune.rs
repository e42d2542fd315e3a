//! `minerva keygen` and `minerva finetune` end to end, on SmolLM2 in a temporary
//! `MINERVA_HOME`: an encrypted run killed with SIGKILL mid-way leaves sealed checkpoints
//! only, resumes from them with the key (and not without), and writes a sealed adapter
//! that `minerva serve` applies with the key and refuses, with the reason, without it; a
//! private run reports the (ε, δ) its accountant computed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Running, minerva_command, run_in};
use serde_json::{Value, json};

const MODEL: &str = "smollm2-135m-instruct";

/// Eight chat examples about an invented island (minerva-train's test fixture).
fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../minerva-train/tests/fixtures/orvane.jsonl")
}

fn chat(url: &str, model: &str) -> (u16, Value) {
    minerva_pull::install_crypto_provider();
    let response = reqwest::blocking::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({
            "model": model,
            "max_tokens": 12,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Who rules Orvane?"}]
        }))
        .send()
        .unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn an_encrypted_run_killed_mid_way_resumes_with_its_key_and_serves_sealed() {
    let home = common::home_with(&[&format!("{MODEL}.gguf")]);
    let key = home.path().join("minerva.key");
    let made = run_in(home.path(), &["keygen", "--out", key.to_str().unwrap()]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&key).unwrap().starts_with("minerva-key-1:"));
    let again = run_in(home.path(), &["keygen", "--out", key.to_str().unwrap()]);
    assert!(!again.status.success(), "keygen overwrote a key");

    let data = data();
    let args = [
        "finetune",
        MODEL,
        "--data",
        data.to_str().unwrap(),
        "--out",
        "orvane",
        "--epochs",
        "6",
        "--batch",
        "2",
        "--rank",
        "4",
        "--lr",
        "5e-3",
        "--checkpoint-every",
        "1",
    ];
    let run_dir = home.path().join("models/finetune/orvane");
    let state = run_dir.join("state.json");
    let child = minerva_command(&args)
        .env("MINERVA_HOME", home.path())
        .env("MINERVA_KEY_FILE", &key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Running(child);
    // Killed as soon as its first checkpoint is on disk.
    let started = Instant::now();
    while !state.exists() {
        assert!(started.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the run ended before its first checkpoint"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.0.kill().unwrap();
    assert!(!child.0.wait().unwrap().success());
    drop(child);
    assert!(!home.path().join("models/adapters/orvane.gguf").exists());
    let mut files = 0;
    for entry in std::fs::read_dir(&run_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "partial") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(minerva_seal::is_sealed(&bytes), "{} is not sealed", path.display());
        assert!(
            !contains(&bytes, b"var.0") && !contains(&bytes, b"fingerprint"),
            "{}",
            path.display()
        );
        files += 1;
    }
    assert!(files >= 2, "the state and its tensors");

    // Without the key the checkpoint cannot be read: a clear error, nothing overwritten.
    let keyless = run_in(home.path(), &args);
    assert!(!keyless.status.success());
    let stderr = String::from_utf8_lossy(&keyless.stderr);
    assert!(stderr.contains("MINERVA_KEY"), "{stderr}");

    let resumed = minerva_command(&args)
        .env("MINERVA_HOME", home.path())
        .env("MINERVA_KEY_FILE", &key)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("resuming"), "{stderr}");
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("(encrypted)"));
    assert!(!run_dir.exists(), "the checkpoints outlived the run");
    let adapter = home.path().join("models/adapters/orvane.gguf");
    let bytes = std::fs::read(&adapter).unwrap();
    assert!(minerva_seal::is_sealed(&bytes));
    assert!(
        !contains(&bytes, b"GGUF") && !contains(&bytes, b"lora_a"),
        "plaintext in the adapter file"
    );
    let report: Value =
        serde_json::from_slice(&std::fs::read(home.path().join("models/adapters/orvane.json")).unwrap()).unwrap();
    let history = report["history"].as_array().unwrap();
    assert_eq!(history.len(), 6, "{report}");
    assert!(
        history[5]["train_loss"].as_f64() < history[0]["train_loss"].as_f64(),
        "{report}"
    );
    // Registered as the base's adapter, though the file is sealed: its digest is the
    // sealed file's, its base the one it was trained on.
    let listed = common::json(&common::run_in(home.path(), &["adapter", "list", "--json"]));
    assert_eq!(listed[0]["name"], "orvane", "{listed}");
    assert_eq!(listed[0]["origin"], "finetune", "{listed}");
    assert_eq!(
        listed[0]["serves_as"],
        serde_json::json!([format!("{MODEL}+orvane")]),
        "{listed}"
    );
    assert_eq!(
        listed[0]["sha256"].as_str().unwrap(),
        minerva_store::sha256_file(&adapter, &mut |_, _| {}).unwrap()
    );

    // Served with the key: the adapter applies. Without: refused with the reason, and the
    // base still answers.
    let (server, url) = common::serve(home.path(), &[("MINERVA_KEY_FILE", &key)]);
    let (status, plain) = chat(&url, MODEL);
    assert_eq!(status, 200, "{plain}");
    let (status, adapted) = chat(&url, &format!("{MODEL}+orvane"));
    assert_eq!(status, 200, "{adapted}");
    assert_ne!(
        adapted["choices"][0]["message"]["content"], plain["choices"][0]["message"]["content"],
        "the adapter changed nothing"
    );
    drop(server);
    let (_server, url) = common::serve(home.path(), &[]);
    let (status, refused) = chat(&url, &format!("{MODEL}+orvane"));
    assert_eq!(status, 400, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("encrypted") && message.contains("MINERVA_KEY"),
        "{message}"
    );
    assert_eq!(chat(&url, MODEL).0, 200);
}

#[test]
fn a_private_run_reports_the_privacy_its_accountant_computed() {
    let home = common::home_with(&[&format!("{MODEL}.gguf")]);
    let data = data();
    let out = run_in(
        home.path(),
        &[
            "finetune",
            MODEL,
            "--data",
            data.to_str().unwrap(),
            "--out",
            "private",
            "--epochs",
            "2",
            "--batch",
            "4",
            "--rank",
            "4",
            "--eval-split",
            "0",
            "--dp",
            "--dp-noise",
            "1.1",
            "--dp-clip",
            "0.5",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("privacy: (ε = "), "{stdout}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(home.path().join("models/adapters/private.json")).unwrap()).unwrap();
    let privacy = &report["privacy"];
    // 8 examples in expected batches of 4: 2 noisy steps per epoch, each example sampled
    // with probability 1/2.
    assert_eq!(privacy["steps"], 4, "{report}");
    assert_eq!(privacy["sampling_rate"], 0.5);
    let (expected, _) = minerva_train::privacy::epsilon(0.5, 1.1, 4, 1e-5);
    assert_eq!(privacy["epsilon"].as_f64().unwrap(), expected);
    assert!(expected > 0.0 && expected.is_finite());
    assert!(minerva_engine::llm::lora::inspect_adapter(&home.path().join("models/adapters/private.gguf")).is_ok());
}

//! `minerva create`, `config`, `show`, `tag`, `history` and `rollback` on the real default
//! models in a temporary `MINERVA_HOME`.

mod common;

use std::path::Path;

use common::run_in as run;
use serde_json::Value;

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
    let home = common::home_with(&["smollm2-135m-instruct.gguf", "gemma-3-270m.gguf"]);
    let models = home.path().join("models");
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

    // A template setting must be a Jinja chat template: Ollama's Go syntax is refused.
    let go = run(home.path(), &["config", "terse", "template={{ .Prompt }}"]);
    assert!(!go.status.success());
    assert!(String::from_utf8_lossy(&go.stderr).contains("Jinja"), "{go:?}");
    ok(
        home.path(),
        &[
            "config",
            "terse",
            "template={% for m in messages %}{{ m.content }}{% endfor %}",
        ],
    );
    ok(home.path(), &["config", "terse", "template="]);

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

    // NAME:latest is NAME, in every command: show it, then remove it by that spelling.
    let latest: Value = serde_json::from_str(&ok(home.path(), &["show", "terse:latest", "--json"])).unwrap();
    assert_eq!(latest["model"]["sha256"], smol_sha.as_str());
    ok(home.path(), &["rm", "terse:latest"]);
    assert!(!models.join("terse.gguf").exists());
    assert!(models.join("smollm2-135m-instruct.gguf").exists());
}

#[test]
fn commands_that_change_the_store_are_audited_and_minerva_audit_lists_them() {
    let home = common::home_with(&["smollm2-135m-instruct.gguf"]);
    ok(home.path(), &["config", "smollm2-135m-instruct", "temperature=0.5"]);
    // Listing settings changes nothing: not audited.
    ok(home.path(), &["config", "smollm2-135m-instruct"]);
    let failed = run(home.path(), &["rm", "no-such-model"]);
    assert!(!failed.status.success());

    let log: Value = serde_json::from_str(&ok(home.path(), &["audit", "--json"])).unwrap();
    let rows: Vec<(&str, &str, &str)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
                e["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 2, "{log:#}");
    // The setting's key, not its value.
    assert_eq!(rows[0], ("config", "smollm2-135m-instruct temperature=…", "ok"));
    assert_eq!(rows[1].0, "remove");
    assert!(rows[1].2.starts_with("error: "), "{:?}", rows[1]);
    assert!(log[0]["actor"].as_str().unwrap().starts_with("cli:"));

    let table = ok(home.path(), &["audit", "--since", "1h"]);
    assert!(table.lines().count() == 3 && table.contains("config"), "{table}");
    let none = ok(home.path(), &["audit", "--since", "2099-01-01T00:00:00Z"]);
    assert_eq!(none.lines().count(), 1, "only the header: {none}");
}

/// `minerva adapter init` writes an adapter into the store's `adapters/` that fits its base
/// and records the base's registered digest; an existing name needs `--force`, and a model
/// the store does not have gets no adapter.
#[test]
fn adapter_init_writes_a_fitting_adapter_and_keeps_an_existing_one() {
    let home = common::home_with(&["smollm2-135m-instruct.gguf"]);
    let made = run(
        home.path(),
        &[
            "adapter",
            "init",
            "smollm2-135m-instruct",
            "--name",
            "mine",
            "--rank",
            "4",
        ],
    );
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let file = home.path().join("models/adapters/mine.gguf");
    let info = minerva_engine::llm::lora::inspect_adapter(&file).unwrap();
    assert_eq!(info.rank, 4);
    assert_eq!(info.targets.len(), 60, "q and v of SmolLM2's 30 layers");
    let base = home.path().join("models/smollm2-135m-instruct.gguf");
    let digest = minerva_store::sha256_file(&base, &mut |_, _| {}).unwrap();
    assert_eq!(info.base_sha256.as_deref(), Some(digest.as_str()));
    minerva_engine::llm::lora::check_fits(&info, &minerva_gguf::inspect(&base).unwrap(), Some(&digest)).unwrap();

    let again = run(
        home.path(),
        &["adapter", "init", "smollm2-135m-instruct", "--name", "mine"],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let unknown = run(home.path(), &["adapter", "init", "no-such-model", "--name", "other"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no-such-model"));
    assert!(!home.path().join("models/adapters/other.gguf").exists());
}

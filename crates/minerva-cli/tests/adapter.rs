//! `minerva adapter init | import | list | rm`: adapters are entries of the store, each
//! with its digest and its base's in the registry. An adapter made for one model is
//! refused for a model of another architecture; a removed one is gone from the list and
//! from disk.

mod common;

use common::{home_with, json, run_in};

const CHAT: &str = "smollm2-135m-instruct";
const GEMMA: &str = "gemma-3-270m";

fn listed(home: &std::path::Path) -> Vec<serde_json::Value> {
    json(&run_in(home, &["adapter", "list", "--json"]))
        .as_array()
        .unwrap()
        .clone()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn adapters_are_registered_listed_with_their_base_imported_and_removed() {
    let home = home_with(&[&format!("{CHAT}.gguf"), &format!("{GEMMA}.gguf")]);
    let adapters = home.path().join("models/adapters");
    assert!(listed(home.path()).is_empty());

    // `init` writes and registers one, recording the base's digest.
    let init = run_in(
        home.path(),
        &["adapter", "init", CHAT, "--name", "fresh", "--rank", "4"],
    );
    assert!(init.status.success(), "{}", stderr(&init));
    let list = listed(home.path());
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["name"], "fresh");
    assert_eq!(list[0]["origin"], "init");
    assert_eq!(list[0]["serves_as"], serde_json::json!([format!("{CHAT}+fresh")]));
    let digest = list[0]["sha256"].as_str().unwrap().to_owned();
    assert_eq!(
        digest,
        minerva_store::sha256_file(&adapters.join("fresh.gguf"), &mut |_, _| {}).unwrap()
    );

    // Import a file from outside the store (here, a copy of that one) under a new name,
    // checked against the base it names.
    let outside = tempfile::tempdir().unwrap();
    let file = outside.path().join("made-elsewhere.gguf");
    std::fs::copy(adapters.join("fresh.gguf"), &file).unwrap();
    let import = |name: &str, base: &str| {
        run_in(
            home.path(),
            &[
                "adapter",
                "import",
                file.to_str().unwrap(),
                "--name",
                name,
                "--base",
                base,
            ],
        )
    };
    let imported = import("copied", CHAT);
    assert!(imported.status.success(), "{}", stderr(&imported));
    assert!(String::from_utf8_lossy(&imported.stdout).contains(&format!("{CHAT}+copied")));
    // For a model of another architecture: refused, nothing written.
    let wrong = import("for-gemma", GEMMA);
    assert!(!wrong.status.success());
    assert!(stderr(&wrong).contains("`llama` model"), "{}", stderr(&wrong));
    assert!(!adapters.join("for-gemma.gguf").exists());
    // The same name again without --force: refused.
    let again = import("copied", CHAT);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("exists"), "{}", stderr(&again));
    // Not an adapter at all: refused.
    std::fs::copy(home.path().join(format!("models/{GEMMA}.gguf")), &file).unwrap();
    let model = import("a-model", CHAT);
    assert!(!model.status.success());
    assert!(!adapters.join("a-model.gguf").exists());

    // A file dropped into the directory is registered when listed (`found`).
    std::fs::copy(adapters.join("fresh.gguf"), adapters.join("dropped.gguf")).unwrap();
    let list = listed(home.path());
    let names: Vec<&str> = list.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["copied", "dropped", "fresh"]);
    assert_eq!(list[0]["origin"], "import");
    assert_eq!(list[1]["origin"], "found");
    assert_eq!(list[1]["serves_as"], serde_json::json!([format!("{CHAT}+dropped")]));

    // `rm` takes the file and the entry; a second `rm` says there is none.
    let rm = run_in(home.path(), &["adapter", "rm", "fresh"]);
    assert!(rm.status.success(), "{}", stderr(&rm));
    assert!(!adapters.join("fresh.gguf").exists());
    let names: Vec<String> = listed(home.path())
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["copied", "dropped"]);
    let rm = run_in(home.path(), &["adapter", "rm", "fresh"]);
    assert!(!rm.status.success());
    assert!(stderr(&rm).contains("no adapter fresh"), "{}", stderr(&rm));
}

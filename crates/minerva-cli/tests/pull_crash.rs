//! `minerva pull` killed with SIGKILL in the middle of a download, then run again: the
//! store lists nothing half-made in between, and the second pull resumes where the first
//! stopped (an HTTP Range from the partial file's length) and registers the verified file.
//! The hub is the local fake one of minerva-pull's tests, stalling the first download
//! after 8 MiB as a dead network would.

mod common;
#[path = "../../minerva-pull/tests/hub/mod.rs"]
mod hub;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{json, minerva_command};
use hub::{FakeHub, HubFile};

const REPO: &str = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";
const FILE: &str = "smollm2-135m-instruct-q8_0.gguf";
const STALL_AT: u64 = 8 << 20;

fn default_models() -> PathBuf {
    let home = std::env::var_os("MINERVA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap()).join(".local/share/minerva"));
    home.join("models")
}

fn pull(home: &Path, hub: &FakeHub) -> std::process::Command {
    let mut command = minerva_command(&["pull", &format!("hf.co/{REPO}/{FILE}"), "--as", "smol", "--json"]);
    command
        .env("MINERVA_HOME", home)
        .env("HF_ENDPOINT", &hub.url)
        .env_remove("MINERVA_OFFLINE")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command
}

/// Polls (without sleeping through a fixed time) until `condition` holds or 60 s pass.
fn wait_for(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::yield_now();
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_pull_killed_mid_download_leaves_nothing_listed_and_the_next_pull_resumes() {
    let bytes = Arc::new(std::fs::read(default_models().join("smollm2-135m-instruct.gguf")).unwrap());
    let file = HubFile::new(bytes);
    let hub = FakeHub::start();
    hub.add_repo_file(REPO, FILE, file.clone());
    hub.stall_next_download_after(&file, STALL_AT);
    let home = tempfile::tempdir().unwrap();
    let partial = home
        .path()
        .join("models")
        .join(format!(".pull-{}.partial", file.sha256));

    let mut first = pull(home.path(), &hub).spawn().unwrap();
    let stalled = wait_for(|| std::fs::metadata(&partial).is_ok_and(|m| m.len() >= STALL_AT));
    // SIGKILL: no destructor, no cleanup, as a crash or an OOM kill.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(stalled, "the download never reached {STALL_AT} bytes");

    // Nothing half-made is listed; the partial file waits for the next pull.
    let listed = json(
        &minerva_command(&["models", "--json"])
            .env("MINERVA_HOME", home.path())
            .output()
            .unwrap(),
    );
    assert_eq!(listed["models"].as_array().unwrap().len(), 0, "{listed}");
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), STALL_AT);

    let second = pull(home.path(), &hub).output().unwrap();
    let record = json(&second);
    assert_eq!(record["sha256"], file.sha256.as_str(), "{record}");
    let downloads = hub.downloads();
    assert_eq!(downloads.len(), 2, "{downloads:?}");
    assert_eq!(downloads[1].1.as_deref(), Some(format!("bytes={STALL_AT}-").as_str()));
    assert!(!partial.exists(), "the partial file was left behind");
    let listed = json(
        &minerva_command(&["models", "--json"])
            .env("MINERVA_HOME", home.path())
            .output()
            .unwrap(),
    );
    let models = listed["models"].as_array().unwrap();
    assert_eq!(models.len(), 1, "{listed}");
    assert_eq!(models[0]["id"], "smol");
    assert_eq!(models[0]["status"], "ok", "{listed}");
}

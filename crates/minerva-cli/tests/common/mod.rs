#![allow(dead_code)] // each test binary uses a different subset

//! What the CLI's end-to-end tests share: running the binary and reading its JSON.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// The `minerva` binary under test with `args`.
pub fn minerva_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_minerva"));
    command.args(args);
    command
}

/// The JSON a successful run printed (fails the test, with its stderr, otherwise).
pub fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("stdout is JSON")
}

/// Runs `minerva` with `args` on the models directory under `home` (`MINERVA_HOME`).
pub fn run_in(home: &Path, args: &[&str]) -> Output {
    let mut command = minerva_command(args);
    command.env("MINERVA_HOME", home);
    command.output().expect("minerva runs")
}

/// A temporary `MINERVA_HOME` whose models directory holds hard links to `files` of the
/// default models directory (no copy of the weights).
pub fn home_with(files: &[&str]) -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let models = home.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let defaults = Path::new(&std::env::var_os("HOME").unwrap()).join(".local/share/minerva/models");
    for file in files {
        std::fs::hard_link(defaults.join(file), models.join(file)).unwrap();
    }
    home
}

/// A child process, killed on drop.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `minerva serve` on a free port, on the models under `home` and with `env`, and the URL
/// it says it listens on (its log is drained so that it never blocks on a full pipe).
pub fn serve(home: &Path, env: &[(&str, &Path)]) -> (Running, String) {
    let mut command = minerva_command(&["serve", "--addr", "127.0.0.1:0", "--threads", "1"]);
    command
        .env("MINERVA_HOME", home)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("minerva serve starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some((_, rest)) = line.split_once("minerva listening on ") {
                let _ = tx.send(rest.split_whitespace().next().unwrap().to_owned());
            }
        }
    });
    let url = rx.recv().expect("the server says where it listens");
    (Running(child), url)
}

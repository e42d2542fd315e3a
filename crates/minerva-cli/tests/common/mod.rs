#![allow(dead_code)] // each test binary uses a different subset

//! What the CLI's end-to-end tests share: running the binary and reading its JSON.

use std::process::{Command, Output};

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

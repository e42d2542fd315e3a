//! `minerva top --once` against a real `minerva serve` (a child process on a free port,
//! SmolLM2 in a temporary `MINERVA_HOME`): after `minerva run` has asked the model, the
//! screen shows it loaded, with its memory, and the request in the latency line.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use common::minerva_command;

const MODEL: &str = "smollm2-135m-instruct";

/// A `minerva serve` child, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn top_shows_the_loaded_model_and_the_requests_latency() {
    let home = common::home_with(&[&format!("{MODEL}.gguf")]);
    let mut child = minerva_command(&["serve", "--addr", "127.0.0.1:0", "--threads", "1"])
        .env("MINERVA_HOME", home.path())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .expect("minerva serve starts");
    let stderr = child.stderr.take().unwrap();
    let server = Server(child);
    // The server says on stderr where it listens once it does; the rest of its log is
    // drained so that it never blocks on a full pipe.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some((_, rest)) = line.split_once("minerva listening on ") {
                let _ = tx.send(rest.split_whitespace().next().unwrap().to_owned());
            }
        }
    });
    let url = rx.recv().expect("the server says where it listens");

    let asked = minerva_command(&["run", MODEL, "Say hi.", "--max-tokens", "4", "--url", &url])
        .output()
        .unwrap();
    assert!(asked.status.success(), "{}", String::from_utf8_lossy(&asked.stderr));

    let top = minerva_command(&["top", "--once", "--interval", "0.2", "--url", &url])
        .output()
        .unwrap();
    assert!(top.status.success(), "{}", String::from_utf8_lossy(&top.stderr));
    let screen = String::from_utf8(top.stdout).unwrap();
    assert!(screen.contains("1 model(s)"), "{screen}");
    let row = screen
        .lines()
        .find(|l| l.starts_with(MODEL))
        .unwrap_or_else(|| panic!("{MODEL} is not listed:\n{screen}"));
    assert!(row.contains(" llm ") && row.contains("MiB"), "{row}");
    assert!(screen.contains("(1 requests in the last 60 s)"), "{screen}");
    assert!(!screen.contains("TTFT p50 –"), "{screen}");

    // A server that is not there: an error that says so, not a screen of dashes.
    drop(server);
    let gone = minerva_command(&["top", "--once", "--url", &url]).output().unwrap();
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("cannot reach the server"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}

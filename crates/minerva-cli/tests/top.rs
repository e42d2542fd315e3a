//! `minerva top --once` against a real `minerva serve` (a child process on a free port,
//! SmolLM2 in a temporary `MINERVA_HOME`): after `minerva run` has asked the model, the
//! screen shows it loaded, with its memory, and the request in the latency line.

mod common;

use common::minerva_command;

const MODEL: &str = "smollm2-135m-instruct";

#[test]
fn top_shows_the_loaded_model_and_the_requests_latency() {
    let home = common::home_with(&[&format!("{MODEL}.gguf")]);
    let (server, url) = common::serve(home.path(), &[]);

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

//! The `minerva` binary end to end on the real default models.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::{json, minerva_command};

fn minerva(args: &[&str]) -> Output {
    minerva_command(args).output().expect("minerva runs")
}

/// Asserts a failure with exactly one `error:` line on stderr (logs aside) that mentions `needle`.
fn assert_one_line_error(output: &Output, needle: &str) {
    assert!(!output.status.success(), "expected a failure");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "stderr: {stderr}");
    assert!(
        errors[0].contains(needle),
        "{:?} does not mention {needle:?}",
        errors[0]
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn generate_json_reports_prompt_and_generated_tokens_and_is_reproducible() {
    let args = [
        "generate",
        "-m",
        "smollm2-135m-instruct",
        "--chat",
        "-p",
        "Name three colors.",
        "-n",
        "16",
        "--seed",
        "99",
        "--json",
    ];
    let first = json(&minerva(&args));
    let second = json(&minerva(&args));
    assert_eq!(first["tokens"], second["tokens"], "same seed, same prompt, same output");
    assert_eq!(
        first["tokens"].as_array().unwrap().len().min(16),
        first["tokens"].as_array().unwrap().len()
    );
    assert!(first["prompt_tokens"].as_array().unwrap().len() > 10);
    assert!(!first["text"].as_str().unwrap().is_empty());
    assert!(first["timings"]["generation_tokens_per_second"].as_f64().unwrap() > 0.0);
}

#[test]
fn generate_streams_plain_text_with_stop_sequences_cut() {
    let out = minerva(&[
        "generate",
        "-m",
        "gemma-3-270m",
        "-p",
        "1, 2, 3, 4,",
        "-n",
        "24",
        "--temperature",
        "0",
        "--stop",
        "8",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains('5'), "{text:?}");
    assert!(!text.contains('8'), "stop sequence leaked: {text:?}");
}

#[test]
fn tokenize_prints_the_ids_of_a_completion_prompt() {
    let out = json(&minerva(&[
        "tokenize",
        "-m",
        "gemma-3-270m",
        "--text",
        "Hello world",
        "--json",
    ]));
    let ids: Vec<i64> = out["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(ids[0], 2, "Gemma declares a BOS token (id 2)");
    assert_eq!(ids.len(), 3);
    assert_eq!(out["pieces"][1], "Hello");
}

#[test]
fn embed_prints_unit_vectors_of_384_dimensions() {
    let out = json(&minerva(&[
        "embed",
        "-m",
        "all-minilm-l6-v2",
        "--text",
        "a cat",
        "--text",
        "a kitten",
        "--json",
    ]));
    let vectors = out["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    let v: Vec<f64> = vectors[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(v.len(), 384);
    assert!((v.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);
}

#[test]
fn models_lists_the_defaults_with_their_published_hashes() {
    let out = json(&minerva(&["models", "--json"]));
    let models = out["models"].as_array().unwrap();
    let find = |id: &str| {
        models
            .iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("{id} listed"))
    };
    assert_eq!(
        find("smollm2-135m-instruct")["sha256"],
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
    assert_eq!(
        find("gemma-3-270m")["sha256"],
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    );
    // A directory's digest is documented as a shell recipe over its sha256sum listing.
    let minilm = find("all-minilm-l6-v2");
    let recipe = Command::new("sh")
        .arg("-c")
        .arg("find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum")
        .current_dir(minilm["path"].as_str().unwrap())
        .output()
        .unwrap();
    let expected = String::from_utf8(recipe.stdout).unwrap();
    assert_eq!(minilm["sha256"], expected.split_whitespace().next().unwrap());
    for model in models {
        assert_eq!(model["status"], "ok", "{model}");
    }
    assert_eq!(find("gemma-3-270m")["quantization"], "Q4_K_M");
}

#[test]
fn errors_are_one_clear_line_and_a_non_zero_exit() {
    assert_one_line_error(
        &minerva(&["generate", "-m", "no-such-model", "-p", "hi"]),
        "unknown model",
    );
    assert_one_line_error(
        &minerva(&["generate", "-m", "gemma-3-270m", "-p", "hi", "--top-p", "1.5"]),
        "top_p",
    );
    assert_one_line_error(
        &minerva(&["generate", "-m", "gemma-3-270m", "-p", "hi", "--chat"]),
        "no chat template",
    );
    assert_one_line_error(
        &minerva(&["embed", "-m", "smollm2-135m-instruct", "--text", "x"]),
        "embedding model",
    );
    let dir = tempfile::tempdir().unwrap();
    let bad: PathBuf = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"definitely not a model").unwrap();
    assert_one_line_error(
        &minerva(&["generate", "-m", bad.to_str().unwrap(), "-p", "hi"]),
        "bad.gguf",
    );
}

#[test]
fn negative_max_tokens_is_refused_by_the_parser() {
    let out = minerva(&["generate", "-m", "gemma-3-270m", "-p", "hi", "-n", "-5"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("-5"));
}

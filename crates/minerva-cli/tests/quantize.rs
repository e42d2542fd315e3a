//! `minerva quantize` on the real SmolLM2 file in a temporary `MINERVA_HOME`: the new tag,
//! its lineage, and a quality report that agrees with `llama-perplexity --kl-divergence`
//! on the same files (fixture made with the reference build).

mod common;

use std::path::Path;
use std::process::Output;

use common::minerva_command;
use minerva_store::{ModelId, ModelStore, Registry};
use serde_json::Value;

fn run(home: &Path, args: &[&str]) -> Output {
    let mut command = minerva_command(args);
    command.env("MINERVA_HOME", home);
    command.output().expect("minerva runs")
}

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../minerva-engine/tests/fixtures/llama/kl-divergence-smollm2-135m-instruct-q8_0.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Relative difference.
fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

#[test]
fn quantizing_smollm2_to_q8_0_makes_a_tag_with_lineage_and_a_report_agreeing_with_llama_perplexity() {
    let home = tempfile::tempdir().unwrap();
    let models = home.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let source =
        Path::new(&std::env::var_os("HOME").unwrap()).join(".local/share/minerva/models/smollm2-135m-instruct.gguf");
    std::fs::hard_link(&source, models.join("smollm2-135m-instruct.gguf")).unwrap();

    // A type that needs an importance matrix is refused before any work.
    let refused = run(home.path(), &["quantize", "smollm2-135m-instruct", "--type", "iq2_xxs"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("importance matrix"));

    let out = run(
        home.path(),
        &["quantize", "smollm2-135m-instruct", "--type", "q8_0", "--json"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let body: Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &body["report"];
    let expected = fixture();
    assert_eq!(body["model"]["id"], "smollm2-135m-instruct:q8_0");
    assert_eq!(report["quantized"]["quantization"], "Q8_0");
    // The quantizer is llama.cpp's own, so the file is the one the fixture was made from.
    assert_eq!(report["quantized"]["sha256"], expected["quantized"]["sha256"]);
    // Within 1 %: llama.cpp's kernels differ in their last bits between CPUs (the fixture
    // comes from an AVX-512 machine), which moves perplexity by far less than this.
    let f = |v: &Value| v.as_f64().unwrap();
    for (ours, theirs) in [
        (&report["quantized"]["perplexity"], &expected["ppl_quantized"]),
        (&report["source"]["perplexity"], &expected["ppl_base"]),
    ] {
        assert!(rel(f(ours), f(theirs)) < 0.01, "{ours} vs llama-perplexity {theirs}");
    }
    // KL divergence is a small difference of two distributions, so the same last-bit
    // differences move it more in relative terms: 5 %; top-token agreement within one point.
    assert!(
        rel(f(&report["mean_kl_divergence"]), f(&expected["mean_kld"])) < 0.05,
        "{report}"
    );
    assert!(
        (100.0 * f(&report["same_top_token"]) - f(&expected["same_top_p_percent"])).abs() < 1.0,
        "{report}"
    );
    assert!(f(&report["quantized"]["prefill_tokens_per_second"]) > 0.0);

    // Registered, listed, with its lineage and report.
    let store = ModelStore::new(&models);
    let registry = Registry::open(&Registry::default_path(&store)).unwrap();
    let id = ModelId::new("smollm2-135m-instruct:q8_0").unwrap();
    assert!(store.resolve(&id).is_ok());
    let lineage = registry.lineage(&id).unwrap().expect("lineage recorded");
    assert_eq!(lineage.source_id, "smollm2-135m-instruct");
    assert_eq!(lineage.source_sha256, expected["source"]["sha256"].as_str().unwrap());
    assert_eq!(lineage.operation, "quantize q8_0");
    let stored: Value = serde_json::from_str(lineage.report.as_deref().unwrap()).unwrap();
    assert_eq!(stored["quantized"]["sha256"], report["quantized"]["sha256"]);
    let names: Vec<String> = std::fs::read_dir(&models)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    assert_eq!(names.len(), 2, "no temporary file left: {names:?}");

    // The same tag twice is refused; removing it removes its lineage too.
    let again = run(
        home.path(),
        &["quantize", "smollm2-135m-instruct", "--type", "q8_0", "--no-report"],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let rm = run(home.path(), &["rm", "smollm2-135m-instruct:q8_0"]);
    assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));
    assert!(registry.lineage(&id).unwrap().is_none());
    assert!(store.resolve(&id).is_err());
}

//! `minerva doctor` on this machine: what it reports of the CPU and the kernels matches
//! what the machine has and what llama.cpp chose, and a problem with the models or the
//! registry fails it with the problem named.

mod common;

use common::{home_with, run_in};
use serde_json::Value;

fn doctor(home: &std::path::Path, extra: &[&str]) -> (bool, Value, String) {
    let mut args = vec!["doctor", "--json"];
    args.extend_from_slice(extra);
    let out = run_in(home, &args);
    let report = serde_json::from_slice(&out.stdout).expect("doctor prints its JSON report even when it fails");
    (
        out.status.success(),
        report,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_healthy_home_passes_and_the_report_matches_the_machine() {
    let home = home_with(&["smollm2-135m-instruct.gguf"]);
    let (ok, report, stderr) = doctor(home.path(), &[]);
    assert!(ok, "{stderr}\n{report:#}");
    // The features it lists are the kernel's own flags, and the level follows from them.
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let flags: Vec<&str> = flags
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap()
        .split_whitespace()
        .collect();
    for feature in report["cpu"]["features"].as_array().unwrap() {
        assert!(
            flags.contains(&feature.as_str().unwrap()),
            "{feature} is not in /proc/cpuinfo"
        );
    }
    let level = report["cpu"]["x86_64_level"].as_str().unwrap();
    assert_eq!(
        level == "x86-64-v4",
        flags.contains(&"avx512vl") && flags.contains(&"avx2"),
        "{level}"
    );
    // llama.cpp started and runs on the CPU; its kernels use AVX2 exactly when the CPU has it.
    let devices = report["kernels"]["llama_cpp_devices"].as_array().unwrap();
    assert!(devices.iter().any(|d| d["name"] == "CPU"), "{devices:?}");
    let info = report["kernels"]["llama_cpp_system_info"].as_str().unwrap();
    assert_eq!(info.contains("AVX2 = 1"), flags.contains(&"avx2"), "{info}");
    // Memory as /proc/meminfo has it, and a budget within it.
    let total = report["memory"]["total_bytes"].as_u64().unwrap();
    let budget = report["memory"]["pool_budget"]["now_bytes"].as_u64().unwrap();
    assert!(budget > 0 && budget < total, "{budget} of {total}");
    assert_eq!(report["models"]["models"], serde_json::json!(["smollm2-135m-instruct"]));
    assert_eq!(report["models"]["writable"], true);
    assert_eq!(report["gpu"]["this_build"], "CPU only: no GPU backend is compiled in");
}

#[test]
fn a_changed_model_file_and_an_unreachable_registry_are_named_problems() {
    let home = home_with(&[]);
    let model = home.path().join("models/smollm2-135m-instruct.gguf");
    std::fs::copy(
        std::path::Path::new(&std::env::var_os("HOME").unwrap())
            .join(".local/share/minerva/models/smollm2-135m-instruct.gguf"),
        &model,
    )
    .unwrap();
    assert!(run_in(home.path(), &["verify"]).status.success());
    // Flip a byte: the next check before a load refuses it, and doctor says so.
    let mut bytes = std::fs::read(&model).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&model, bytes).unwrap();
    assert!(!run_in(home.path(), &["verify"]).status.success());
    let (ok, report, stderr) = doctor(home.path(), &[]);
    assert!(!ok);
    let problems = report["problems"].to_string();
    assert!(problems.contains("smollm2-135m-instruct is mismatch"), "{problems}");
    assert!(stderr.contains("1 problem(s)"), "{stderr}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://minerva:secret@127.0.0.1:{port}/minerva");
    let (ok, report, _) = doctor(home.path(), &["--registry", &url]);
    assert!(!ok);
    let problems = report["problems"].to_string();
    assert!(problems.contains("error connecting to server"), "{problems}");
    assert!(!problems.contains("secret"), "{problems}");
}

//! `minerva doctor`: what this machine and this build give Minerva, and whether its models
//! and registry are in order. Prints the CPU (its x86-64 level and the features the
//! kernels use), the kernels chosen (llama.cpp's devices and CPU variant, the encoder's),
//! the memory and cgroup limits the pool sees and the budget it would take, GPUs and their
//! libraries (and which build would use them), the models directory and the registry.
//! Exits non-zero when a check fails.

use std::path::{Path, PathBuf};

use anyhow::Result;
use minerva_engine::embed::{EmbeddingDtype, encoder_kernels};
use minerva_engine::llm::llama::kernel_report;
use minerva_pool::{Budget, PoolConfig};
use minerva_store::{ModelStatus, ModelStore};
use minerva_workers::pressure::{MemorySource, ProcMemory};
use serde_json::{Value, json};

use crate::model_arg;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Only the CPU and the kernels chosen (what scripts/build-portable.sh prints).
    #[arg(long)]
    kernels_only: bool,
}

/// CPU features that decide which kernels run, as `/proc/cpuinfo` names them.
const FEATURES: &[&str] = &[
    "sse4_2",
    "popcnt",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "bmi2",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
];

pub fn run(store: &ModelStore, args: Args) -> Result<()> {
    let mut failed = Vec::new();
    let mut report = serde_json::Map::new();
    report.insert("cpu".into(), cpu());
    let kernels = match kernel_report() {
        Ok(k) => json!({
            "build": k.build,
            "llama_cpp_devices": k.devices.iter().map(|(n, d)| json!({ "name": n, "description": d })).collect::<Vec<_>>(),
            "llama_cpp_system_info": k.system_info.trim(),
            "encoder_f32": encoder_kernels(EmbeddingDtype::F32),
            "encoder_bf16": encoder_kernels(EmbeddingDtype::Bf16),
            "encoder_int8": encoder_kernels(EmbeddingDtype::Int8),
        }),
        Err(e) => {
            failed.push(format!("llama.cpp: {e}"));
            json!({ "error": e.to_string() })
        }
    };
    report.insert("kernels".into(), kernels);
    if !args.kernels_only {
        report.insert("memory".into(), memory());
        report.insert("gpu".into(), gpu());
        report.insert("models".into(), models(store, &mut failed));
    }
    report.insert("problems".into(), json!(failed));
    let report = Value::Object(report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_text(&report);
    }
    if !failed.is_empty() {
        anyhow::bail!("{} problem(s): {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

fn cpu() -> Value {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let flags: Vec<String> = field("flags").split_whitespace().map(str::to_owned).collect();
    let has = |f: &str| flags.iter().any(|x| x == f);
    json!({
        "model": field("model name"),
        "cores": minerva_engine::compute::default_threads(),
        "x86_64_level": x86_64_level(&has),
        "features": FEATURES.iter().filter(|f| has(f)).collect::<Vec<_>>(),
        "missing": FEATURES.iter().filter(|f| !has(f)).collect::<Vec<_>>(),
    })
}

/// The x86-64 micro-architecture level (psABI): v2 SSE4.2/POPCNT, v3 AVX2/FMA/BMI2,
/// v4 AVX-512 F/BW/CD/DQ/VL.
fn x86_64_level(has: &dyn Fn(&str) -> bool) -> &'static str {
    let v2 = ["cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"]
        .iter()
        .all(|f| has(f));
    let v3 = v2
        && ["avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe"]
            .iter()
            .all(|f| has(f));
    let v4 = v3
        && ["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"]
            .iter()
            .all(|f| has(f));
    match (v2, v3, v4) {
        (_, _, true) => "x86-64-v4",
        (_, true, _) => "x86-64-v3",
        (true, _, _) => "x86-64-v2",
        _ => "x86-64 (v1)",
    }
}

fn memory() -> Value {
    let reading = ProcMemory::default().read();
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .or_else(|_| std::fs::read_to_string("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        // cgroup v2 says "max"; v1 says a number near 2^63.
        .filter(|&bytes| bytes < 1 << 60)
        .map_or_else(
            || "none".to_owned(),
            |bytes| format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64),
        );
    let pool = PoolConfig::new(1, 4096);
    let budget = match (pool.budget, &reading) {
        (Budget::Dynamic { strategy, min, max }, Ok(r)) => json!({
            "kind": "dynamic (follows memory; --memory-budget fixes it)",
            "strategy": format!("{strategy:?}").to_lowercase(),
            "keeps_free_fraction": strategy.reserve_fraction(),
            "now_bytes": strategy.budget(*r, 0, min, max),
        }),
        (Budget::Fixed(bytes), _) => json!({ "kind": "fixed", "now_bytes": bytes }),
        (_, Err(e)) => json!({ "error": e.to_string() }),
    };
    match reading {
        Ok(r) => json!({
            "total_bytes": r.total,
            "available_bytes": r.available,
            "cgroup_limit": cgroup,
            "pool_budget": budget,
        }),
        Err(e) => json!({ "error": e.to_string(), "cgroup_limit": cgroup }),
    }
}

/// GPU devices and the libraries a GPU build would use; this build runs on the CPU.
fn gpu() -> Value {
    let mut dirs: Vec<PathBuf> = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/cuda/lib64",
        "/opt/rocm/lib",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&paths));
    }
    let library = |names: &[&str]| {
        dirs.iter()
            .flat_map(|d| names.iter().map(move |n| d.join(n)))
            .find(|p| p.exists())
            .map(|p| p.display().to_string())
    };
    let devices = |pattern: &str| -> Vec<String> {
        std::fs::read_dir("/dev")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| format!("/dev/{}", e.file_name().to_string_lossy()))
            .filter(|p| p.starts_with(pattern))
            .collect()
    };
    let mut render = devices("/dev/dri/renderD");
    render.sort();
    let mut nvidia = devices("/dev/nvidia");
    nvidia.retain(|p| p.trim_start_matches("/dev/nvidia").chars().all(|c| c.is_ascii_digit()) && p != "/dev/nvidia");
    json!({
        "cuda": {
            "devices": nvidia,
            "driver_library": library(&["libcuda.so.1", "libcuda.so"]),
            "runtime_library": library(&["libcudart.so.12", "libcudart.so"]),
            "build_feature": "llama-cpp-2/cuda",
        },
        "vulkan": {
            "render_nodes": render,
            "loader_library": library(&["libvulkan.so.1", "libvulkan.so"]),
            "build_feature": "llama-cpp-2/vulkan",
        },
        "rocm": {
            "kfd": Path::new("/dev/kfd").exists(),
            "hip_library": library(&["libamdhip64.so", "libamdhip64.so.6"]),
            "build_feature": "llama-cpp-2/rocm",
        },
        "metal": { "available": cfg!(target_os = "macos"), "build_feature": "llama-cpp-2/metal" },
        "this_build": "CPU only: no GPU backend is compiled in",
    })
}

fn models(store: &ModelStore, failed: &mut Vec<String>) -> Value {
    let root = store.root();
    let mut out = serde_json::Map::new();
    out.insert("directory".into(), json!(root));
    match std::fs::metadata(root) {
        Ok(m) if m.is_dir() => {
            let probe = root.join(".doctor-write-probe");
            let writable = std::fs::write(&probe, b"")
                .and_then(|()| std::fs::remove_file(&probe))
                .is_ok();
            out.insert("writable".into(), json!(writable));
            out.insert("free_bytes".into(), json!(free_bytes(root)));
        }
        Ok(_) => failed.push(format!("{} is not a directory", root.display())),
        Err(e) => failed.push(format!(
            "models directory {}: {e} (scripts/setup.sh or `minerva pull` fills it)",
            root.display()
        )),
    }
    let listed = match store.list() {
        Ok(list) => list,
        Err(e) => {
            failed.push(format!("listing {}: {e}", root.display()));
            Vec::new()
        }
    };
    out.insert(
        "models".into(),
        json!(listed.iter().map(|m| m.id.to_string()).collect::<Vec<_>>()),
    );
    match model_arg::registry(store) {
        Ok(registry) => {
            out.insert("registry".into(), json!(registry.location()));
            out.insert("registry_shared".into(), json!(registry.is_shared()));
            match registry.records() {
                Ok(records) => {
                    let bad: Vec<String> = records
                        .iter()
                        .filter(|r| r.status != ModelStatus::Ok)
                        .map(|r| format!("{} is {}", r.id, r.status.as_str()))
                        .collect();
                    let unregistered = listed.iter().filter(|m| !records.iter().any(|r| r.id == m.id)).count();
                    out.insert("registered".into(), json!(records.len()));
                    out.insert("not_yet_registered".into(), json!(unregistered));
                    if !bad.is_empty() {
                        failed.push(format!("registry: {} (`minerva verify` re-hashes)", bad.join(", ")));
                    }
                }
                Err(e) => failed.push(format!("registry: {e}")),
            }
        }
        Err(e) => failed.push(format!("registry: {e}")),
    }
    Value::Object(out)
}

fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `stat` is a valid out-pointer.
    (unsafe { libc::statvfs(c.as_ptr(), &mut stat) } == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

fn print_text(report: &Value) {
    let gib = |v: &Value| {
        v.as_u64()
            .map_or("?".into(), |b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64))
    };
    let cpu = &report["cpu"];
    println!(
        "CPU       {} ({} cores), {}",
        cpu["model"].as_str().unwrap_or("?"),
        cpu["cores"],
        cpu["x86_64_level"].as_str().unwrap_or("?")
    );
    println!("          has: {}", join(&cpu["features"]));
    println!("          lacks: {}", join(&cpu["missing"]));
    let k = &report["kernels"];
    if let Some(e) = k["error"].as_str() {
        println!("kernels   llama.cpp failed to start: {e}");
    } else {
        println!(
            "kernels   {} build; llama.cpp devices: {}",
            k["build"].as_str().unwrap_or("?"),
            k["llama_cpp_devices"]
                .as_array()
                .map(|d| d
                    .iter()
                    .map(|d| format!(
                        "{} ({})",
                        d["name"].as_str().unwrap_or(""),
                        d["description"].as_str().unwrap_or("")
                    ))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
        println!(
            "          llama.cpp: {}",
            k["llama_cpp_system_info"].as_str().unwrap_or("")
        );
        println!(
            "          encoder: f32 {}; bf16 {}",
            k["encoder_f32"].as_str().unwrap_or(""),
            k["encoder_bf16"].as_str().unwrap_or("")
        );
    }
    let m = &report["memory"];
    if !m.is_null() {
        println!(
            "memory    {} total, {} available, cgroup limit {}; pool budget now {} ({})",
            gib(&m["total_bytes"]),
            gib(&m["available_bytes"]),
            m["cgroup_limit"].as_str().unwrap_or("?"),
            gib(&m["pool_budget"]["now_bytes"]),
            m["pool_budget"]["kind"].as_str().unwrap_or("?")
        );
    }
    let g = &report["gpu"];
    if !g.is_null() {
        for (name, found) in [
            (
                "CUDA",
                g["cuda"]["devices"].as_array().is_some_and(|d| !d.is_empty())
                    || !g["cuda"]["driver_library"].is_null(),
            ),
            (
                "Vulkan",
                !g["vulkan"]["loader_library"].is_null()
                    && g["vulkan"]["render_nodes"].as_array().is_some_and(|d| !d.is_empty()),
            ),
            ("ROCm", g["rocm"]["kfd"] == true || !g["rocm"]["hip_library"].is_null()),
        ] {
            println!("gpu       {name}: {}", if found { "present" } else { "not found" });
        }
        println!("          {}", g["this_build"].as_str().unwrap_or(""));
    }
    let s = &report["models"];
    if !s.is_null() {
        println!(
            "models    {} ({} models, {} free{})",
            s["directory"].as_str().unwrap_or("?"),
            s["models"].as_array().map_or(0, Vec::len),
            gib(&s["free_bytes"]),
            if s["writable"] == false { ", read-only" } else { "" }
        );
        println!(
            "registry  {} ({}{} registered, {} not yet)",
            s["registry"].as_str().unwrap_or("?"),
            if s["registry_shared"] == true { "shared, " } else { "" },
            s["registered"],
            s["not_yet_registered"]
        );
    }
    for problem in report["problems"].as_array().into_iter().flatten() {
        println!("PROBLEM   {}", problem.as_str().unwrap_or(""));
    }
}

fn join(list: &Value) -> String {
    list.as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

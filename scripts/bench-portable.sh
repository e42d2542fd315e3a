#!/usr/bin/env bash
# The portable build against the native one on this machine: pp512 and tg128 (`minerva
# bench`, median of R runs each) of the default chat models, the two binaries taking turns
# ROUNDS times; prints both, the ratio, the CPU variant ggml chose for the portable binary,
# and the CPU's flags. Builds what is missing (scripts/build-portable.sh takes a while).
#   scripts/bench-portable.sh [ROUNDS=3] [R=3]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
R="${2:-3}"
say() { printf '\033[1m[bench-portable]\033[0m %s\n' "$*" >&2; }
native="target/release/minerva"
portable="target/portable/minerva-x86-64/minerva"
[ -x "$native" ] || cargo build --release --locked --bin minerva >&2
[ -x "$portable" ] || scripts/build-portable.sh >&2
say "portable kernels: $("$portable" doctor --kernels-only --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kernels"]["llama_cpp_system_info"])')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for round in $(seq "$ROUNDS"); do
  for model in smollm2-135m-instruct gemma-3-270m; do
    for build in native portable; do
      bin="$native"; [ "$build" = portable ] && bin="$portable"
      "$bin" bench -m "$model" -r "$R" --json 2>/dev/null \
        | python3 -c "import json,sys; d=json.load(sys.stdin); print('$build', '$model', d['prefill']['tokens_per_second_median'], d['decode']['tokens_per_second_median'])" \
        >> "$work/runs"
    done
  done
  say "round $round of $ROUNDS done"
done
python3 - "$work/runs" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    build, model, pp, tg = line.split()
    runs[(build, model)].append((float(pp), float(tg)))
flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
wanted = ["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"]
print("CPU flags:", " ".join(f for f in wanted if f in flags))
print("| model | test | native tok/s | portable tok/s | portable / native |")
print("|---|---|---|---|---|")
for model in ["smollm2-135m-instruct", "gemma-3-270m"]:
    for i, test in enumerate(["pp512", "tg128"]):
        n = statistics.median(r[i] for r in runs[("native", model)])
        p = statistics.median(r[i] for r in runs[("portable", model)])
        print(f"| {model} | {test} | {n:.1f} | {p:.1f} | {p / n:.3f}x |")
PY

#!/usr/bin/env bash
# Regenerate the llama.cpp reference fixtures in crates/minerva-engine/tests/fixtures/llama/
# from llama.cpp's own command-line tools, built from the same llama.cpp sources that
# the llama-cpp-sys-2 crate vendors (scripts/reference/build-llama-cpp.sh).
#
# Usage: scripts/reference/make-llama-fixtures.sh [tokenize] [perplexity] [greedy] [bench]
#        (no argument = all four)
#
# Every fixture entry carries the exact shell command that produced it ("command").
# Commands are run by `bash -c` from the workspace root with two variables set:
#   LLAMA_BIN       the bin dir printed by scripts/reference/build-llama-cpp.sh
#   MINERVA_MODELS  $MINERVA_HOME/models (MINERVA_HOME defaults to ~/.local/share/minerva)
# so any single entry can be re-run by hand:
#   export LLAMA_BIN=$(scripts/reference/build-llama-cpp.sh | tail -1)
#   export MINERVA_MODELS=${MINERVA_HOME:-$HOME/.local/share/minerva}/models
#   bash -c '<command>'
#
# Tokenize, perplexity and greedy fixtures are deterministic (a rerun gives identical
# files). The llama-bench fixtures are informational timings of this machine.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

LLAMA_BIN="$(scripts/reference/build-llama-cpp.sh | tail -n 1)"
MINERVA_HOME="${MINERVA_HOME:-$HOME/.local/share/minerva}"
export LLAMA_BIN
export MINERVA_MODELS="$MINERVA_HOME/models"
export LLAMA_REF_BUILD_INFO="$LLAMA_BIN/../reference-build-info.txt"

SCRIPT="$(mktemp "${TMPDIR:-/tmp}/make-llama-fixtures.XXXXXX.py")"
trap 'rm -f "$SCRIPT"' EXIT
cat > "$SCRIPT" <<'PY'
import datetime
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

FIXTURES = "crates/minerva-engine/tests/fixtures"
OUT = f"{FIXTURES}/llama"
INPUT_TXT = f"{FIXTURES}/tokenize-input.txt"
GPL_TXT = f"{FIXTURES}/gpl-3.txt"
GPL_SRC = "/usr/share/common-licenses/GPL-3"
GPL_SHA256 = "3972dc9744f6499f0f9b2dbf76696f2ae7ad8af9b23dde66d6af86c9dfb36986"
THREADS = 2
N_PREDICT = 32

MODELS = {
    "smollm2-135m-instruct": {"special": "<|im_start|>user\nhi<|im_end|>"},
    "gemma-3-270m": {"special": "<start_of_turn>user\nhi<end_of_turn>"},
}

# edge strings tokenized in completion-prompt mode (add_special, no special parsing)
EDGE_CASES = [
    ("empty", ""),
    ("single_space", " "),
    ("newline", "\n"),
    ("three_newlines", "\n\n\n"),
    ("leading_and_trailing_spaces", "   leading and trailing   "),
    ("crab_emoji", "\U0001f980"),
    ("family_zwj", "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"),
    ("japanese", "日本語のテキスト"),
    ("chinese", "中文"),
    ("x", "x"),
    ("tab", "\t"),
    ("crlf", "a\r\nb"),
    ("hello_world", "Hello, world!"),
    ("digits", "1234567890"),
    ("pi", "3.14159"),
    ("greek", "Ελληνικά"),
    ("cyrillic", "Привет, мир"),
    ("flag_fr", "\U0001f1eb\U0001f1f7"),
    ("combining_acute", "e\u0301"),
    ("spaces_and_newlines", "a  \n  \n\n    b"),
]

GREEDY_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
]

COMMAND_ENV = {
    "cwd": "workspace root",
    "LLAMA_BIN": "bin dir printed (last line) by scripts/reference/build-llama-cpp.sh",
    "MINERVA_MODELS": "$MINERVA_HOME/models, MINERVA_HOME defaults to ~/.local/share/minerva",
    "how_to_rerun": "export LLAMA_BIN=$(scripts/reference/build-llama-cpp.sh | tail -1) "
                    "MINERVA_MODELS=${MINERVA_HOME:-$HOME/.local/share/minerva}/models; bash -c \"$COMMAND\"",
}


def log(msg):
    print(f"[make-llama-fixtures] {msg}", file=sys.stderr, flush=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run(command, check=True):
    """Run one shell command exactly as recorded; return (stdout bytes, stderr str)."""
    p = subprocess.run(["bash", "-c", command], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if check and p.returncode != 0:
        sys.stderr.write(p.stderr.decode("utf-8", "replace")[-4000:])
        raise SystemExit(f"command failed with exit code {p.returncode}: {command}")
    return p.stdout, p.stderr.decode("utf-8", "replace")


def model_arg(model_id):
    return f'"$MINERVA_MODELS/{model_id}.gguf"'


def tool(name):
    return f'"$LLAMA_BIN/{name}"'


def build_info():
    info = {}
    path = os.environ["LLAMA_REF_BUILD_INFO"]
    with open(path) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("=")
            info[k] = v
    # keep the fixture machine-independent: no absolute paths
    info.pop("mirrored_from", None)
    src = info.pop("llama_cpp_src", "")
    info["llama_cpp_src"] = "llama-cpp-sys-2-" + info.get("llama_cpp_sys_2_version", "?") + "/llama.cpp (crate package)"
    info["cmake_args"] = info.get("cmake_args", "").replace(src, "<llama.cpp>")
    return info


def model_info(model_id):
    path = os.path.join(os.environ["MINERVA_MODELS"], f"{model_id}.gguf")
    if not os.path.isfile(path):
        raise SystemExit(f"model not found: {path}")
    return {"id": model_id, "file": f"{model_id}.gguf", "size_bytes": os.path.getsize(path),
            "sha256": sha256_file(path)}


def header(model_id, minfo, kind):
    return {
        "fixture": kind,
        "generated_by": "scripts/reference/make-llama-fixtures.sh",
        "model": minfo,
        "llama_cpp_reference_build": BUILD_INFO,
        "command_env": COMMAND_ENV,
    }


def write_json(name, obj):
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")
    log(f"wrote {path}")


def parse_ids(stdout):
    text = stdout.decode("utf-8").strip()
    ids = json.loads(text)
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids), text
    return ids


def system_info(stderr):
    m = re.search(r"system_info: (.*)", stderr)
    return m.group(1).strip() if m else None


# ------------------------------------------------------------------ tokenize
def tokenize_cmd(model_id, source, parse_special):
    flags = "--ids --no-escape --log-disable" + ("" if parse_special else " --no-parse-special")
    base = f"{tool('llama-tokenize')} -m {model_arg(model_id)}"
    if source is None:
        return f"{base} -f {INPUT_TXT} {flags}"
    return f"printf '%s' {shlex.quote(source)} | {base} --stdin {flags}"


def do_tokenize(model_id, minfo):
    with open(INPUT_TXT, "rb") as f:
        input_bytes = f.read()
    input_text = input_bytes.decode("utf-8")
    special = MODELS[model_id]["special"]
    cases = [("input_file", input_text, False, None)]
    cases += [(name, text, False, text) for name, text in EDGE_CASES]
    cases.append(("special_tokens_unparsed", special, False, special))
    cases.append(("special_tokens_parsed", special, True, special))
    entries = []
    for name, text, parse_special, source in cases:
        cmd = tokenize_cmd(model_id, source, parse_special)
        ids = parse_ids(run(cmd)[0])
        entries.append({"name": name, "text": text, "add_special": True,
                        "parse_special": parse_special, "ids": ids, "command": cmd})
    # sanity: the file read by -f must tokenize exactly like the same bytes on stdin
    check = (f"{tool('llama-tokenize')} -m {model_arg(model_id)} --stdin --ids --no-escape "
             f"--log-disable --no-parse-special < {INPUT_TXT}")
    assert parse_ids(run(check)[0]) == entries[0]["ids"], "llama-tokenize -f and --stdin disagree"
    obj = header(model_id, minfo, "tokenize")
    obj["semantics"] = {
        "tool": "llama-tokenize (tools/tokenize/tokenize.cpp)",
        "call": "common_tokenize(vocab, text, add_special = llama_vocab_get_add_bos(vocab) && !--no-bos, "
                "parse_special) -> llama_tokenize(...)",
        "add_special": "true in the fixtures = BOS exactly as the model metadata declares "
                       "(tokenizer.ggml.add_bos_token); neither model declares add_eos/add_sep, so "
                       "llama_tokenize(add_special=true) gives the same ids",
        "parse_special_default": "llama-tokenize parses special tokens by default; --no-parse-special turns it off",
        "escape": "--no-escape: the text is tokenized byte-exactly (the default --escape would turn "
                  "backslash sequences such as \\n into control characters)",
        "input_file": f"{INPUT_TXT} is read verbatim by llama-tokenize -f (binary, trailing newline kept); "
                      "checked to give the same ids as the same bytes on --stdin",
        "edge_strings": "passed byte-exactly through stdin (printf '%s' ... | llama-tokenize --stdin)",
    }
    obj["input_file_sha256"] = hashlib.sha256(input_bytes).hexdigest()
    obj["cases"] = entries
    write_json(f"tokenize-{model_id}.json", obj)


# ------------------------------------------------------------------ perplexity
def ensure_gpl():
    if not os.path.isfile(GPL_TXT):
        if not os.path.isfile(GPL_SRC):
            raise SystemExit(f"{GPL_TXT} missing and {GPL_SRC} not available to copy it from")
        shutil.copyfile(GPL_SRC, GPL_TXT)
        log(f"copied {GPL_SRC} -> {GPL_TXT}")
    digest = sha256_file(GPL_TXT)
    if digest != GPL_SHA256:
        raise SystemExit(f"{GPL_TXT} sha256 {digest} != expected {GPL_SHA256}")
    if os.path.isfile(GPL_SRC) and sha256_file(GPL_SRC) != GPL_SHA256:
        log(f"warning: {GPL_SRC} differs from the committed {GPL_TXT}; fixtures use the committed copy")
    return digest


def do_perplexity(model_id, minfo):
    digest = ensure_gpl()
    cmd = f"{tool('llama-perplexity')} -m {model_arg(model_id)} -f {GPL_TXT} -c 512 -t {THREADS}"
    log(f"perplexity {model_id} ...")
    out, err = run(cmd)
    both = out.decode("utf-8", "replace") + "\n" + err
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", both)
    if not m:
        raise SystemExit("no final PPL estimate in output:\n" + both[-3000:])
    ppl, ppl_err = float(m.group(1)), float(m.group(2))
    c = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)", both)
    running = [float(v) for _, v in re.findall(r"\[(\d+)\]([0-9.]+),", both)]
    n_chunks = int(c.group(1))
    assert len(running) == n_chunks, (running, n_chunks)
    # token count of the same text perplexity evaluates (-f drops one trailing newline)
    tcmd = (f"head -c -1 {GPL_TXT} | {tool('llama-tokenize')} -m {model_arg(model_id)} --stdin --ids "
            f"--no-escape --no-parse-special --log-disable")
    n_tokens = len(parse_ids(run(tcmd)[0]))
    obj = header(model_id, minfo, "perplexity")
    obj.update({
        "command": cmd,
        "dataset": {"path": GPL_TXT, "sha256": digest, "bytes": os.path.getsize(GPL_TXT),
                    "source": f"{GPL_SRC} (Debian base-files), copied verbatim"},
        "n_ctx": int(c.group(2)),
        "n_batch": int(c.group(3)),
        "n_seq": int(c.group(4)),
        "threads": THREADS,
        "n_chunks": n_chunks,
        "ppl": ppl,
        "ppl_stderr": ppl_err,
        "running_ppl_per_chunk": running,
        "n_tokens": n_tokens,
        "n_tokens_command": tcmd,
        "semantics": (
            "llama-perplexity (tools/perplexity/perplexity.cpp, perplexity()): the -f text loses one "
            "trailing newline and has escapes processed (no-op here, the text has no backslashes); it is "
            "tokenized once with add_special=true, parse_special=false (n_tokens above); "
            "n_chunks = floor(n_tokens / n_ctx); chunk i = tokens[i*n_ctx, (i+1)*n_ctx), its first token "
            "replaced by BOS when the model's add_bos_token is true (Gemma 3 yes, SmolLM2 no); each chunk is "
            "an independent sequence at positions 0..n_ctx-1 (n_seq chunks are decoded together as separate "
            "sequences of one n_batch batch); only the second half of each chunk is scored: with "
            "first = n_ctx/2, the logits at positions first .. n_ctx-2 score the tokens at positions "
            "first+1 .. n_ctx-1 (n_ctx-first-1 = 255 tokens per chunk), NLL = -log softmax(logits)[token]; "
            "running_ppl_per_chunk[k] = exp(mean NLL over chunks 0..k); "
            "ppl_stderr is the printed '+/-' (delta-method standard error)."),
        "system_info": system_info(err),
    })
    write_json(f"perplexity-{model_id}.json", obj)
    return ppl, ppl_err, n_chunks


# ------------------------------------------------------------------ greedy
def decode_text(b):
    try:
        return b.decode("utf-8"), None
    except UnicodeDecodeError:
        return b.decode("utf-8", "replace"), b.hex()


def do_greedy(model_id, minfo):
    cases = []
    for prompt in GREEDY_PROMPTS:
        cmd = f"{tool('llama-simple')} -m {model_arg(model_id)} -n {N_PREDICT} {shlex.quote(prompt)}"
        echo_cmd = f"{tool('llama-simple')} -m {model_arg(model_id)} -n 0 {shlex.quote(prompt)}"
        log(f"greedy {model_id}: {prompt!r}")
        out, err = run(cmd)
        echo_out, _ = run(echo_cmd)
        assert echo_out.endswith(b"\n"), echo_out
        echo = echo_out[:-1]
        assert out.startswith(echo) and out.endswith(b"\n"), (out, echo)
        cont = out[len(echo):-1]
        m = re.search(r"decoded (\d+) tokens", err)
        n_gen = int(m.group(1))
        text, hexbytes = decode_text(cont)
        pcmd = (f"printf '%s' {shlex.quote(prompt)} | {tool('llama-tokenize')} -m {model_arg(model_id)} "
                f"--stdin --ids --no-escape --log-disable")
        prompt_ids = parse_ids(run(pcmd)[0])
        # cross-check: llama-completion (common sampler, temp 0 = greedy, other n_ctx / n_batch)
        ccmd = (f"{tool('llama-completion')} -m {model_arg(model_id)} -p {shlex.quote(prompt)} "
                f"-n {N_PREDICT} --temp 0 -t {THREADS} -no-cnv --no-display-prompt --no-warmup --simple-io")
        cout, _ = run(ccmd)
        ctext = cout.decode("utf-8", "replace")
        rest = cout[len(cont):] if cout.startswith(cont) else None
        agrees = rest is not None and (rest.strip() == b"" or rest.strip() == b"[end of text]")
        case = {
            "prompt": prompt,
            "prompt_ids": prompt_ids,
            "prompt_ids_command": pcmd,
            "continuation": text,
            "n_generated": n_gen,
            "stopped_at_eog": n_gen < N_PREDICT,
            "command": cmd,
            "echoed_prompt": echo.decode("utf-8", "replace"),
            "echoed_prompt_command": echo_cmd,
            "crosscheck_llama_completion": {"command": ccmd, "stdout": ctext, "agrees": agrees},
        }
        if hexbytes:
            case["continuation_hex"] = hexbytes
        cases.append(case)
    obj = header(model_id, minfo, "greedy")
    obj["semantics"] = {
        "tool": "llama-simple (examples/simple/simple.cpp)",
        "tokenization": "llama_tokenize(vocab, prompt, add_special=true, parse_special=true): BOS as the "
                        "model declares (Gemma 3: <bos>; SmolLM2: none) and special-token text is parsed",
        "sampler": "llama_sampler_init_greedy() only (argmax of the last logits); no penalties, no seed",
        "n_predict": N_PREDICT,
        "stop": "stops before printing when the sampled token is end-of-generation "
                "(llama_vocab_is_eog); n_generated < n_predict then and stopped_at_eog = true",
        "context": "n_ctx = n_prompt + n_predict - 1 (rounded up by llama.cpp to 256), n_batch = n_prompt, "
                   "default threads (llama_context_default_params: 4; llama-simple has no -t)",
        "output": "llama-simple prints each prompt token's piece (special tokens rendered, e.g. <bos>) then "
                  "each generated piece (llama_token_to_piece(..., special=true)) then '\\n'. "
                  "continuation = stdout minus the echoed prompt (taken from the same command with -n 0) "
                  "minus the final '\\n'; i.e. the exact concatenated pieces of the generated tokens",
        "token_ids": "llama-simple/llama-completion do not print generated token ids; prompt_ids are "
                     "the prompt tokens (llama-tokenize with default parse-special and model BOS, "
                     "identical to llama-simple's tokenization)",
        "crosscheck": "llama-completion with --temp 0 (greedy) and its own default n_ctx/n_batch; "
                      "agrees = its stdout starts with the same continuation",
    }
    obj["cases"] = cases
    write_json(f"greedy-{model_id}.json", obj)
    return cases


# ------------------------------------------------------------------ bench
def cpu_busy(seconds=2.0):
    """Fraction of all CPU time that was not idle/iowait over `seconds`."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)
    import time
    i0, t0 = snap()
    time.sleep(seconds)
    i1, t1 = snap()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_for_quiet_cpu():
    """Timings are only meaningful on an otherwise idle machine: wait (up to
    LLAMA_REF_BENCH_WAIT seconds, default 900) until two consecutive 2 s samples show
    < 10% CPU busy."""
    import time
    deadline = time.time() + float(os.environ.get("LLAMA_REF_BENCH_WAIT", "900"))
    quiet = 0
    busy = cpu_busy()
    while time.time() < deadline:
        busy = cpu_busy()
        quiet = quiet + 1 if busy < 0.10 else 0
        if quiet >= 2:
            return busy
    log(f"warning: CPU still {busy:.0%} busy after waiting; timings may be depressed")
    return busy


def do_bench(model_id, minfo):
    cmd = f"{tool('llama-bench')} -m {model_arg(model_id)} -t {THREADS} -p 512 -n 128 -r 3 -o json"
    # retry (up to 3 runs) while another process disturbs the measurement (stddev > 5%)
    for attempt in range(3):
        busy_before = wait_for_quiet_cpu()
        with open("/proc/loadavg") as f:
            load_before = f.read().split()[:3]
        log(f"llama-bench {model_id} (attempt {attempt + 1}, cpu busy before {busy_before:.0%}) ...")
        out, err = run(cmd)
        results = json.loads(out.decode("utf-8"))
        if all(r["stddev_ts"] <= 0.05 * r["avg_ts"] for r in results):
            break
        log("noisy run (stddev > 5% of mean), retrying")
    summary = {}
    for r in results:
        key = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
        summary[key] = {"avg_ts": round(r["avg_ts"], 2), "stddev_ts": round(r["stddev_ts"], 2)}
    # which CPU features / weight buffers the library uses on this machine
    icmd = (f"{tool('llama-completion')} -m {model_arg(model_id)} -p x -n 1 -t {THREADS} -no-cnv "
            f"--no-warmup --simple-io -v")
    _, ierr = run(icmd)
    buffers = sorted(set((b, sz) for b, sz in re.findall(
        r"load_tensors:\s+(\S+) model buffer size\s+=\s+([0-9.]+) MiB", ierr) if float(sz) > 0))
    model_path = os.path.join(os.environ["MINERVA_MODELS"], f"{model_id}.gguf")
    for r in results:
        if r.get("model_filename") == model_path:
            r["model_filename"] = f"$MINERVA_MODELS/{model_id}.gguf"
    obj = header(model_id, minfo, "llama-bench")
    obj.update({
        "command": cmd,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "loadavg_before": load_before,
        "cpu_busy_before": round(busy_before, 3),
        "summary_tok_per_s": summary,
        "system_info": system_info(ierr),
        "weight_buffers_mib": {b: float(sz) for b, sz in buffers},
        "system_info_command": icmd,
        "note": "informational: timings of the machine that generated the file; the bench "
                "comparison reruns llama-bench live",
        "results": results,
    })
    write_json(f"llama-bench-{model_id}.json", obj)
    return summary


# ------------------------------------------------------------------ main
parts = sys.argv[1:] or ["tokenize", "perplexity", "greedy", "bench"]
for p in parts:
    if p not in ("tokenize", "perplexity", "greedy", "bench"):
        raise SystemExit(f"unknown part {p!r}; expected tokenize, perplexity, greedy or bench")
BUILD_INFO = build_info()
for model_id in MODELS:
    minfo = model_info(model_id)
    if "tokenize" in parts:
        do_tokenize(model_id, minfo)
    if "perplexity" in parts:
        ppl, err, n = do_perplexity(model_id, minfo)
        log(f"{model_id}: PPL = {ppl} +/- {err} over {n} chunks")
    if "greedy" in parts:
        for c in do_greedy(model_id, minfo):
            log(f"{model_id}: {c['prompt']!r} -> {c['continuation']!r} "
                f"(n={c['n_generated']}, completion agrees={c['crosscheck_llama_completion']['agrees']})")
    if "bench" in parts:
        log(f"{model_id}: llama-bench {do_bench(model_id, minfo)}")
PY
python3 "$SCRIPT" "$@"

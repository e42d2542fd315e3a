#!/usr/bin/env python3
"""Reference embedding fixtures for all-MiniLM-L6-v2, made with the real
`sentence-transformers` library, for Minerva's Rust embedding tests.

Run from the repository root (after scripts/reference/setup-python.sh):

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python scripts/reference/make-embedding-fixtures.py

Options: --model-dir DIR (default: ${MINERVA_HOME:-~/.local/share/minerva}/models/all-minilm-l6-v2)
         --out FILE      (default: crates/minerva-engine/tests/fixtures/embeddings/all-minilm-l6-v2.json)

Everything loads from local files (offline; no Hugging Face hub access), on CPU with
torch.set_num_threads(2). The output is deterministic (no timestamps), so re-running
it with the same library versions and model must leave the fixture unchanged.

For each sentence the fixture records:
  text                     the input string
  token_ids                ids the model's own tokenizer produces, as fed to the model
                           ([CLS] ... [SEP], truncated to max_seq_length = 256)
  num_tokens               len(token_ids)
  untruncated_num_tokens   length with [CLS]/[SEP] but without truncation
  truncated                untruncated_num_tokens > max_seq_length
  embedding                full pipeline (Transformer -> mean Pooling -> Normalize), i.e.
                           model.encode(...) exactly as modules.json configures it
  embedding_unnormalized   Transformer -> mean Pooling only (Normalize module removed)
  unnormalized_l2_norm     L2 norm of embedding_unnormalized (float64 of the float32 values)
Embeddings are float32 values written as the exact Python float (double) of each float32,
so parsing them as f64 and casting to f32 (or parsing as f32) gives back the exact bits.
Per-sentence embeddings are the ones from encoding each sentence ON ITS OWN (batch of 1).
All sentences are also encoded in ONE batch; the script asserts batch and single agree to
within 1e-6 (normalized: absolute per component; unnormalized: per component relative to the
vector's L2 norm, as those have norms of ~1.5-7) and records the max differences. If that
check fails, the fixture is not written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import sys
from pathlib import Path

# Offline before anything from Hugging Face is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "crates/minerva-engine/tests/fixtures/embeddings/all-minilm-l6-v2.json"
MODEL_NAME = "all-minilm-l6-v2"
COMMAND = (
    "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python "
    "scripts/reference/make-embedding-fixtures.py"
)
BATCH_SINGLE_TOL = 1e-6

# ~450 words of prose: far beyond 256 word pieces, so truncation applies.
LONG_PARAGRAPHS = [
    "Minerva is a small model server that runs entirely on the machine in front of you. "
    "It loads language models and embedding models from files on disk, keeps them in memory, "
    "and answers requests over a local HTTP interface. Nothing leaves the computer: prompts, "
    "documents and vectors stay where they were created, which matters for people who handle "
    "medical notes, legal drafts, source code or simply private diaries.",
    "An embedding model turns a piece of text into a fixed-length list of numbers. Texts that "
    "mean similar things end up close together in that space, so a search engine can find a "
    "paragraph about renewing a passport even when the query only says travel documents expired. "
    "The model used here has six transformer layers, a hidden size of three hundred and "
    "eighty-four, and a vocabulary of about thirty thousand word pieces.",
    "Before the network sees anything, a tokenizer lowercases the input, splits it on whitespace "
    "and punctuation, and breaks rare words into smaller known pieces. Two special markers are "
    "added, one at the start and one at the end. Inputs longer than two hundred and fifty-six "
    "pieces are cut, and only the beginning is kept, which is why very long documents are "
    "usually split into overlapping chunks before they are embedded.",
    "The transformer produces one vector per token. Mean pooling averages those vectors, "
    "ignoring padding, and a final normalization step scales the result to unit length so that "
    "a dot product equals cosine similarity. Getting each of these steps exactly right is what "
    "the reference fixtures are for: the Rust implementation must reproduce the numbers that "
    "the Python library prints, to within a tiny tolerance, for every sentence in this file.",
    "Testing numerical code is tedious but rewarding. A single misplaced epsilon in layer "
    "normalization, a forgotten attention mask, or an off-by-one error in truncation can shift "
    "every output by a small amount that no human would notice by eye. Comparing against a "
    "trusted reference catches such mistakes early, long before a user wonders why search "
    "results feel slightly worse than they did last week. The same fixtures also guard against "
    "regressions when the inference code is later optimized with batching, threads or SIMD.",
    "Finally, the server must treat a batch of inputs exactly like the same inputs sent one at "
    "a time. Padding shorter sentences to the length of the longest one must not change their "
    "vectors, and the order of the inputs must not matter. Those invariants are cheap to state "
    "and surprisingly easy to break, so they are checked here as well, alongside awkward inputs "
    "such as empty strings, emoji, accented words, scripts other than Latin, and code.",
]
LONG_TEXT = " ".join(LONG_PARAGRAPHS)

MEDIUM_TEXT = (
    "Local inference keeps latency predictable: there is no network round trip, no queue on a "
    "shared cluster, and no surprise bill at the end of the month. The trade-off is that the "
    "hardware is modest, so models must be small, quantized, or both, and the software has to "
    "use every core efficiently without starving the rest of the system."
)

# Words that are each exactly one word piece in this vocabulary (checked at run time), used to
# build inputs of an exact length around the 256-token limit.
BOUNDARY_WORDS = ["alpha", "beta", "gamma", "delta", "river", "stone", "green", "house"]


def boundary_text(n_pieces: int) -> str:
    return " ".join(BOUNDARY_WORDS[i % len(BOUNDARY_WORDS)] for i in range(n_pieces))


# (id, text). Ids are stable names for the Rust tests.
SENTENCES: list[tuple[str, str]] = [
    ("short_hello", "Hello world"),
    ("short_fox", "The quick brown fox jumps over the lazy dog."),
    ("query_question", "how do I reset my password?"),
    ("paraphrase_a", "A man is playing a guitar."),
    ("paraphrase_b", "Someone is playing an instrument."),
    ("unrelated", "The stock market closed lower on Tuesday."),
    ("medium_sentence",
     "Minerva is a local model server that runs embedding and language models entirely on "
     "your own machine, without sending data anywhere."),
    ("long_paragraph", MEDIUM_TEXT),
    ("very_long_truncated", LONG_TEXT),
    ("boundary_256_exact", boundary_text(254)),      # 254 pieces + [CLS] + [SEP] = 256: kept whole
    ("boundary_257_truncated", boundary_text(255)),  # 257 -> truncated to 256 (drops 1 piece)
    ("punctuation",
     "Wait... what?! No -- really?? (Yes); [maybe]: {never} \"quoted\" 'single' <tag/> "
     "& @#$%^*~`|\\ ¿¡«»…—"),
    ("numbers",
     "In 2023, revenue grew 12.5% to $3,141,592.65; call +1 (555) 010-9999 before 09:30 on "
     "2024-02-29, or 1e-9 ≈ 0.000000001."),
    ("code_rust",
     "fn main() { let v: Vec<u32> = (0..10).map(|x| x * x).collect(); println!(\"{:?}\", v); }"),
    ("code_python_multiline", "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # 5\n"),
    ("mixed_case", "ThE MiXeD CaSe SeNtEnCe uses camelCase, snake_case, PascalCase and SHOUTING."),
    ("accents", "The café served a naïve crème brûlée; the façade of the Zürich hôtel felt déjà vu."),
    ("greek", "Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο."),
    ("russian", "Съешь же ещё этих мягких французских булок, да выпей чаю."),
    ("chinese", "我喜欢在周末去图书馆看书。"),
    ("japanese", "今日はとても良い天気ですね。東京タワーへ行きましょう！"),
    ("korean", "안녕하세요, 만나서 반갑습니다."),
    ("arabic", "مرحبا بالعالم، كيف حالك اليوم؟"),
    ("emoji", "I love pizza 🍕🍕 and rockets 🚀! 👍🏽 👨‍👩‍👧 ❤️"),
    ("repeated_whitespace", "  lots   of\t\twhitespace \n\n between   the    words  "),
    ("zero_width_and_controls", "zero\u200bwidth\u00adsoft hyphen\u0007bell and\u00a0nbsp"),
    ("overlong_word", "x" * 120 + " is a word too long for wordpiece"),
    ("single_word", "embedding"),
    ("single_char", "a"),
    ("whitespace_only", "   \t\n  "),
    ("empty", ""),
]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f32_list(row: np.ndarray) -> list[float]:
    """Exact Python floats of float32 values (json writes their shortest double repr)."""
    assert row.dtype == np.float32, row.dtype
    return [float(x) for x in row.tolist()]


def dumps(obj) -> str:
    """JSON with indent=2 but each list of numbers on a single line."""
    arrays: list[str] = []

    def lift(o):
        if isinstance(o, dict):
            return {k: lift(v) for k, v in o.items()}
        if isinstance(o, list):
            if o and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in o):
                arrays.append(json.dumps(o))
                return f"\x00ARRAY{len(arrays) - 1}\x00"
            return [lift(v) for v in o]
        return o

    text = json.dumps(lift(obj), indent=2, ensure_ascii=False)
    return re.sub(r'"\\u0000ARRAY(\d+)\\u0000"', lambda m: arrays[int(m.group(1))], text) + "\n"


def main() -> int:
    minerva_home = Path(os.environ.get("MINERVA_HOME", Path.home() / ".local/share/minerva"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, default=minerva_home / "models" / MODEL_NAME)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(0)

    import sentence_transformers
    import tokenizers
    import transformers
    from sentence_transformers import SentenceTransformer

    model_dir: Path = args.model_dir.expanduser().resolve()
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        print(f"error: {weights} not found (run scripts/fetch-models.sh)", file=sys.stderr)
        return 1

    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    model.eval()
    names = [type(m).__name__ for m in model]
    assert names == ["Transformer", "Pooling", "Normalize"], names
    # Same Transformer and Pooling module objects, without Normalize.
    unnorm_model = SentenceTransformer(modules=[model[0], model[1]], device="cpu")
    unnorm_model.eval()

    max_len = model.max_seq_length
    assert max_len == 256, max_len
    tok = model.tokenizer
    cls_id, sep_id = tok.cls_token_id, tok.sep_token_id

    for w in BOUNDARY_WORDS:
        ids = tok(w, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (w, ids)

    ids_order = [sid for sid, _ in SENTENCES]
    assert len(set(ids_order)) == len(ids_order), "duplicate sentence ids"
    texts = [t for _, t in SENTENCES]

    def encode(m, batch):
        with torch.inference_mode():
            out = m.encode(batch, batch_size=max(len(batch), 1), convert_to_numpy=True,
                           show_progress_bar=False)
        assert out.dtype == np.float32 and out.shape == (len(batch), 384), (out.dtype, out.shape)
        return out

    single_norm = np.stack([encode(model, [t])[0] for t in texts])
    single_raw = np.stack([encode(unnorm_model, [t])[0] for t in texts])
    batch_norm = encode(model, texts)
    batch_raw = encode(unnorm_model, texts)

    diff_norm = float(np.max(np.abs(batch_norm.astype(np.float64) - single_norm)))
    diff_raw = float(np.max(np.abs(batch_raw.astype(np.float64) - single_raw)))
    per_sentence_diff = np.max(np.abs(batch_norm.astype(np.float64) - single_norm), axis=1)
    worst = ids_order[int(np.argmax(per_sentence_diff))]

    # Normalize module == row / max(||row||, eps): check our two pipelines are consistent.
    norms = np.linalg.norm(single_raw.astype(np.float64), axis=1)
    renorm_diff = float(np.max(np.abs(single_raw / norms[:, None] - single_norm)))
    # Unnormalized vectors have norms of ~1.5-7 (components up to ~2.6, where one float32 ulp
    # is ~2.4e-7), so their batch/single check is relative to each vector's norm.
    diff_raw_rel = float(np.max(
        np.max(np.abs(batch_raw.astype(np.float64) - single_raw), axis=1) / norms))

    print(f"batch vs single max |diff|: normalized {diff_norm:.3e} (worst: {worst}), "
          f"unnormalized {diff_raw:.3e} absolute / {diff_raw_rel:.3e} relative to its norm; "
          f"tolerance {BATCH_SINGLE_TOL:g}")
    if not (diff_norm <= BATCH_SINGLE_TOL and diff_raw_rel <= BATCH_SINGLE_TOL):
        print(f"error: batch and single encodings differ by more than {BATCH_SINGLE_TOL}; "
              "fixture NOT written", file=sys.stderr)
        return 2

    entries = []
    for i, (sid, text) in enumerate(SENTENCES):
        feats = model.preprocess([text])
        ids = feats["input_ids"][0].tolist()
        assert feats["attention_mask"][0].tolist() == [1] * len(ids)
        direct = tok(text, truncation=True, max_length=max_len)["input_ids"]
        assert ids == direct, (sid, ids, direct)
        full = tok(text, truncation=False, verbose=False)["input_ids"]
        assert ids[0] == cls_id and ids[-1] == sep_id, (sid, ids)
        truncated = len(full) > max_len
        assert len(ids) == (max_len if truncated else len(full))
        if truncated:
            assert ids[:-1] == full[: max_len - 1], sid  # keeps the head, re-appends [SEP]
        entries.append({
            "id": sid,
            "text": text,
            "num_tokens": len(ids),
            "untruncated_num_tokens": len(full),
            "truncated": truncated,
            "token_ids": ids,
            "tokens": tok.convert_ids_to_tokens(ids),
            "unnormalized_l2_norm": float(norms[i]),
            "embedding": f32_list(single_norm[i]),
            "embedding_unnormalized": f32_list(single_raw[i]),
        })

    by_id = {e["id"]: e for e in entries}
    assert by_id["very_long_truncated"]["truncated"]
    assert by_id["boundary_256_exact"]["num_tokens"] == 256 and not by_id["boundary_256_exact"]["truncated"]
    assert by_id["boundary_257_truncated"]["untruncated_num_tokens"] == 257
    assert by_id["boundary_257_truncated"]["truncated"]

    pooling_cfg = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    fixture = {
        "model": MODEL_NAME,
        "model_dir": f"$MINERVA_HOME/models/{MODEL_NAME}",
        "files_sha256": {
            "model.safetensors": sha256_file(weights),
            "tokenizer.json": sha256_file(model_dir / "tokenizer.json"),
            "config.json": sha256_file(model_dir / "config.json"),
        },
        "generator": {
            "script": "scripts/reference/make-embedding-fixtures.py",
            "command": COMMAND,
            "argv": " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "versions": {
                "python": platform.python_version(),
                "sentence_transformers": sentence_transformers.__version__,
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
                "torch": torch.__version__,
                "numpy": np.__version__,
            },
            "device": "cpu",
            "torch_num_threads": torch.get_num_threads(),
        },
        "pipeline": {
            "modules": names,
            "max_seq_length": max_len,
            "truncation": "keep the first max_seq_length-1 ids of [CLS]+pieces, then append [SEP]",
            "do_lower_case": bool(getattr(tok, "do_lower_case", True)),
            "pooling": pooling_cfg,
            "dimension": 384,
            "cls_token_id": cls_id,
            "sep_token_id": sep_id,
            "pad_token_id": tok.pad_token_id,
            "unk_token_id": tok.unk_token_id,
        },
        "checks": {
            "per_sentence_embeddings_are_from": "each sentence encoded alone (batch of 1)",
            "batch_vs_single_tolerance": BATCH_SINGLE_TOL,
            "batch_vs_single_max_abs_diff_normalized": diff_norm,
            "batch_vs_single_max_abs_diff_unnormalized": diff_raw,
            "batch_vs_single_max_abs_diff_unnormalized_relative_to_norm": diff_raw_rel,
            "batch_vs_single_worst_sentence": worst,
            "normalized_vs_renormalized_unnormalized_max_abs_diff": renorm_diff,
        },
        "sentences": entries,
    }

    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    text = dumps(fixture)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")

    # Round-trip: what was written parses back to exactly the float32 arrays.
    back = json.loads(tmp.read_text(encoding="utf-8"))
    for i, e in enumerate(back["sentences"]):
        assert np.array_equal(np.asarray(e["embedding"], dtype=np.float32), single_norm[i])
        assert np.array_equal(np.asarray(e["embedding_unnormalized"], dtype=np.float32), single_raw[i])
        assert e["text"] == texts[i]
    tmp.replace(out)

    print(f"wrote {out} ({len(entries)} sentences, {out.stat().st_size} bytes)")
    print(f"normalized vs unnormalized/||unnormalized|| max |diff|: {renorm_diff:.3e}")
    for e in entries:
        if e["untruncated_num_tokens"] <= 4 or e["truncated"]:
            print(f"  {e['id']}: {e['num_tokens']} tokens (untruncated {e['untruncated_num_tokens']}) "
                  f"{e['tokens'][:6]}{' ...' if e['num_tokens'] > 6 else ''}")

    return 0


if __name__ == "__main__":
    sys.exit(main())

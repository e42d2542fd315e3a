#!/usr/bin/env python3
"""Reference fixtures for model variants made from the all-MiniLM-L6-v2 weights, computed
with the real sentence-transformers, for Minerva's Rust tests:

1. Pooling variants: the MiniLM directory with another pooling configuration (CLS or
   mean) and with or without the Normalize module; each variant's vectors of the
   sentences of the main fixture, from `SentenceTransformer(dir).encode`.
2. A cross-encoder: the MiniLM encoder with BERT's pooler (from the checkpoint) and a
   seeded classification head (torch.manual_seed), laid out as
   `BertForSequenceClassification`; `CrossEncoder(dir).predict` scores (sigmoid, the
   default for one label) and raw logits on 20 query/document sets.

The fixture is self-describing: it holds each variant's modules.json and pooling config,
and the cross-encoder's config changes and head weights, so the Rust tests build the very
same directories from the MiniLM files at test time.

Run from the repository root (after scripts/reference/setup-python.sh):

    .venv/bin/python scripts/reference/make-variant-fixtures.py
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
HOME = Path(os.environ.get("MINERVA_HOME", Path.home() / ".local/share/minerva"))
MODEL_DIR = HOME / "models/all-minilm-l6-v2"
MAIN_FIXTURE = REPO / "crates/minerva-engine/tests/fixtures/embeddings/all-minilm-l6-v2.json"
OUT = REPO / "crates/minerva-engine/tests/fixtures/embeddings/variants.json"
GPL = Path("/usr/share/common-licenses/GPL-3")
SEED = 20261205

POOLING_KEYS = [
    "word_embedding_dimension",
    "pooling_mode_cls_token",
    "pooling_mode_mean_tokens",
    "pooling_mode_max_tokens",
    "pooling_mode_mean_sqrt_len_tokens",
]

TRANSFORMER = {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}
POOLING = {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}
NORMALIZE = {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}


def pooling(mode: str) -> dict:
    return {
        "word_embedding_dimension": 384,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }


VARIANTS = [
    ("cls_normalized", [TRANSFORMER, POOLING, NORMALIZE], pooling("cls")),
    ("cls_raw", [TRANSFORMER, POOLING], pooling("cls")),
    ("mean_raw", [TRANSFORMER, POOLING], pooling("mean")),
]


def f32_list(t: torch.Tensor) -> list[float]:
    return [float(x) for x in t.detach().to(torch.float32).flatten().tolist()]


def variant_dir(root: Path, name: str, modules: list, pool: dict) -> Path:
    d = root / name
    d.mkdir()
    for f in MODEL_DIR.iterdir():
        if f.is_file() and f.name != "modules.json":
            shutil.copy(f, d / f.name)
    (d / "modules.json").write_text(json.dumps(modules, indent=2))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling/config.json").write_text(json.dumps(pool, indent=2))
    if any(m["path"] == "2_Normalize" for m in modules):
        (d / "2_Normalize").mkdir()
    return d


def rerank_sets(rng: random.Random) -> list[dict]:
    words = GPL.read_text(encoding="utf-8").split()
    sets = []
    for _ in range(20):
        docs = []
        for _ in range(rng.randint(3, 8)):
            n = rng.randint(8, 60)
            s = rng.randrange(0, len(words) - n)
            docs.append(" ".join(words[s:s + n]))
        # The query is a few words out of one of the documents.
        target = rng.choice(docs).split()
        n = min(len(target), rng.randint(3, 8))
        s = rng.randrange(0, len(target) - n + 1)
        sets.append({"query": " ".join(target[s:s + n]), "documents": docs})
    return sets


def cross_encoder_dir(root: Path, weight: torch.Tensor, bias: torch.Tensor, config_patch: dict) -> Path:
    d = root / "cross-encoder"
    d.mkdir()
    tensors = {f"bert.{k}": v for k, v in load_file(MODEL_DIR / "model.safetensors").items()}
    tensors["classifier.weight"] = weight
    tensors["classifier.bias"] = bias
    save_file(tensors, d / "model.safetensors")
    config = json.loads((MODEL_DIR / "config.json").read_text())
    config.update(config_patch)
    (d / "config.json").write_text(json.dumps(config, indent=2))
    for name in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]:
        if (MODEL_DIR / name).exists():
            shutil.copy(MODEL_DIR / name, d / name)
    return d


def main() -> int:
    from sentence_transformers import CrossEncoder, SentenceTransformer

    torch.set_num_threads(2)
    texts = [s["text"] for s in json.loads(MAIN_FIXTURE.read_text())["sentences"]]
    out: dict = {
        "generator": "scripts/reference/make-variant-fixtures.py",
        "sentence_transformers": __import__("sentence_transformers").__version__,
        "torch": torch.__version__,
        "texts": texts,
        "variants": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, modules, pool in VARIANTS:
            model = SentenceTransformer(str(variant_dir(root, name, modules, pool)), device="cpu")
            vectors = model.encode(texts, batch_size=1, convert_to_tensor=True)
            out["variants"].append({
                "name": name,
                "modules": modules,
                "pooling": pool,
                "vectors": [f32_list(v) for v in vectors],
            })
            print(f"{name}: {len(texts)} vectors", file=sys.stderr)

        gen = torch.Generator().manual_seed(SEED)
        weight = (torch.randn(1, 384, generator=gen) * 0.2).to(torch.float32)
        bias = torch.tensor([0.1], dtype=torch.float32)
        patch = {
            "architectures": ["BertForSequenceClassification"],
            "id2label": {"0": "LABEL_0"},
            "label2id": {"LABEL_0": 0},
        }
        ce_dir = cross_encoder_dir(root, weight, bias, patch)
        ce = CrossEncoder(str(ce_dir), device="cpu")
        raw = CrossEncoder(str(ce_dir), device="cpu", activation_fn=torch.nn.Identity())
        sets = rerank_sets(random.Random(SEED))
        for s in sets:
            pairs = [(s["query"], d) for d in s["documents"]]
            s["scores"] = [float(x) for x in ce.predict(pairs, batch_size=1, convert_to_numpy=True)]
            s["logits"] = [float(x) for x in raw.predict(pairs, batch_size=1, convert_to_numpy=True)]
        out["cross_encoder"] = {
            "config_patch": patch,
            "classifier_weight": f32_list(weight),
            "classifier_bias": f32_list(bias),
            "sets": sets,
        }
        print(f"cross-encoder: {len(sets)} sets", file=sys.stderr)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

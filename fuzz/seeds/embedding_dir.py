#!/usr/bin/env python3
"""Writes the seed of the `embedding_dir` fuzz target: a tiny but complete
sentence-transformers BERT directory (hidden 4, 2 heads, 1 layer, a WordPiece vocabulary
of 8), framed as the target reads it: its files in the order of
minerva_store::SENTENCE_TRANSFORMERS_FILES, separated by SEPARATOR. Standard library
only.

    python3 fuzz/seeds/embedding_dir.py > fuzz/corpus/embedding_dir/tiny-bert
"""
import json
import struct
import sys

SEPARATOR = b"\n#minerva-file#\n"
HIDDEN, HEADS, LAYERS, INNER, VOCAB, POSITIONS, TYPES = 4, 2, 1, 8, 8, 8, 2


def safetensors(tensors):
    """The safetensors encoding of `tensors` (name -> (shape, values)), f32."""
    header, data = {}, b""
    for name, (shape, values) in tensors.items():
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + data


def filled(shape, start):
    n = 1
    for d in shape:
        n *= d
    return shape, [((start + i) % 7 - 3) / 10 for i in range(n)]


def model():
    t = {
        "embeddings.word_embeddings.weight": filled([VOCAB, HIDDEN], 0),
        "embeddings.position_embeddings.weight": filled([POSITIONS, HIDDEN], 1),
        "embeddings.token_type_embeddings.weight": filled([TYPES, HIDDEN], 2),
        "embeddings.LayerNorm.weight": ([HIDDEN], [1.0] * HIDDEN),
        "embeddings.LayerNorm.bias": ([HIDDEN], [0.0] * HIDDEN),
    }
    for i in range(LAYERS):
        p = f"encoder.layer.{i}"
        linears = {
            "attention.self.query": (HIDDEN, HIDDEN),
            "attention.self.key": (HIDDEN, HIDDEN),
            "attention.self.value": (HIDDEN, HIDDEN),
            "attention.output.dense": (HIDDEN, HIDDEN),
            "intermediate.dense": (HIDDEN, INNER),
            "output.dense": (INNER, HIDDEN),
        }
        for k, (name, (inputs, outputs)) in enumerate(linears.items()):
            # PyTorch's layout: out x in.
            t[f"{p}.{name}.weight"] = filled([outputs, inputs], k)
            t[f"{p}.{name}.bias"] = filled([outputs], k + 3)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[f"{p}.{norm}.weight"] = ([HIDDEN], [1.0] * HIDDEN)
            t[f"{p}.{norm}.bias"] = ([HIDDEN], [0.0] * HIDDEN)
    return safetensors(t)


def tokenizer():
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(specials + ["hello", "world", "##s", "."])}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": w, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, w in enumerate(specials)
        ],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    }


def main():
    config = {"architectures": ["BertModel"], "hidden_size": HIDDEN, "num_hidden_layers": LAYERS,
              "num_attention_heads": HEADS, "intermediate_size": INNER,
              "max_position_embeddings": POSITIONS, "type_vocab_size": TYPES, "hidden_act": "gelu",
              "layer_norm_eps": 1e-12, "vocab_size": VOCAB}
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    pooling = {"word_embedding_dimension": HIDDEN, "pooling_mode_cls_token": False,
               "pooling_mode_mean_tokens": True}
    settings = {"max_seq_length": 6, "do_lower_case": False}
    files = [json.dumps(config).encode(), model(), json.dumps(tokenizer()).encode(),
             json.dumps(modules).encode(), json.dumps(pooling).encode(), json.dumps(settings).encode()]
    sys.stdout.buffer.write(SEPARATOR.join(files))


if __name__ == "__main__":
    main()

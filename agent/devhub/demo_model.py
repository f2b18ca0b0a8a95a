"""A tiny but real BERT-like model, built deterministically in memory for `preload demo` and tests.

Stdlib only: the safetensors file and the tokenizer are written by hand from their formats.
"""

from __future__ import annotations

import hashlib
import json
import struct

from agent.devhub.repo import HubFile, HubRepo

DEMO_REPO_ID = "demo-org/tiny-model"
HIDDEN = 64
INTERMEDIATE = 128
LAYERS = 2
HEADS = 4
MAX_POSITIONS = 64
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "his",
    "her",
    "it",
    "an",
    "were",
    "are",
    "which",
    "this",
    "be",
    "or",
    "has",
    "had",
    "not",
    "but",
    "first",
    "one",
    "their",
    "its",
    "new",
    "after",
    "who",
    "they",
    "have",
    "two",
    "been",
    "she",
    "he",
    "all",
    "also",
    "other",
    "more",
    "when",
    "during",
    "time",
    "year",
    "into",
    "there",
    "most",
    "only",
    "over",
    "city",
    "some",
    "world",
    "would",
    "where",
    "later",
    "up",
    "such",
    "used",
    "many",
    "can",
    "state",
    "about",
    "national",
    "out",
    "known",
    "university",
    "united",
    "then",
    "made",
    "game",
    "team",
    "model",
    "cache",
    "node",
    "preload",
    "hub",
    "file",
    "disk",
    "fast",
    "safe",
    "ready",
]
VOCAB = (*SPECIAL_TOKENS, *WORDS)


def _json(payload: object) -> bytes:
    return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()


def _floats(name: str, count: int, scale: float = 0.02) -> bytes:
    """`count` little-endian float32 values in [-scale, scale), derived from the tensor name."""
    stream = bytearray()
    counter = 0
    while len(stream) < 4 * count:
        stream += hashlib.sha256(f"{name}:{counter}".encode()).digest()
        counter += 1
    words = struct.unpack(f"<{count}I", bytes(stream[: 4 * count]))
    return struct.pack(f"<{count}f", *((w / 2**32 * 2 - 1) * scale for w in words))


def _constant(value: float, count: int) -> bytes:
    return struct.pack(f"<{count}f", *([value] * count))


def _tensors() -> dict[str, tuple[list[int], bytes]]:
    """BERT weight names and shapes, with deterministic values (LayerNorm at identity)."""
    tensors: dict[str, tuple[list[int], bytes]] = {}

    def dense(name: str, out_dim: int, in_dim: int) -> None:
        tensors[f"{name}.weight"] = ([out_dim, in_dim], _floats(name, out_dim * in_dim))
        tensors[f"{name}.bias"] = ([out_dim], _constant(0.0, out_dim))

    def norm(name: str) -> None:
        tensors[f"{name}.weight"] = ([HIDDEN], _constant(1.0, HIDDEN))
        tensors[f"{name}.bias"] = ([HIDDEN], _constant(0.0, HIDDEN))

    for table, rows in (("word", len(VOCAB)), ("position", MAX_POSITIONS), ("token_type", 2)):
        name = f"embeddings.{table}_embeddings.weight"
        tensors[name] = ([rows, HIDDEN], _floats(name, rows * HIDDEN))
    norm("embeddings.LayerNorm")
    for i in range(LAYERS):
        layer = f"encoder.layer.{i}"
        for part in ("query", "key", "value"):
            dense(f"{layer}.attention.self.{part}", HIDDEN, HIDDEN)
        dense(f"{layer}.attention.output.dense", HIDDEN, HIDDEN)
        norm(f"{layer}.attention.output.LayerNorm")
        dense(f"{layer}.intermediate.dense", INTERMEDIATE, HIDDEN)
        dense(f"{layer}.output.dense", HIDDEN, INTERMEDIATE)
        norm(f"{layer}.output.LayerNorm")
    dense("pooler.dense", HIDDEN, HIDDEN)
    return tensors


def safetensors_bytes(tensors: dict[str, tuple[list[int], bytes]]) -> bytes:
    """A safetensors file: u64 LE header length, JSON header, then the raw tensor data."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(tensors):
        shape, data = tensors[name]
        header[name] = {
            "dtype": "F32",
            "shape": shape,
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    # Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
    raw += b" " * (-len(raw) % 8)
    body = b"".join(tensors[name][1] for name in sorted(tensors))
    return struct.pack("<Q", len(raw)) + raw + body


def tokenizer_json() -> bytes:
    """A WordLevel tokenizer in the `tokenizers` JSON format, with BERT's special tokens."""
    added = [
        {
            "id": i,
            "content": token,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, token in enumerate(SPECIAL_TOKENS)
    ]
    ids = {token: i for i, token in enumerate(VOCAB)}
    return _json(
        {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": added,
            "normalizer": {"type": "Lowercase"},
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": {
                "type": "BertProcessing",
                "sep": ["[SEP]", ids["[SEP]"]],
                "cls": ["[CLS]", ids["[CLS]"]],
            },
            "decoder": None,
            "model": {"type": "WordLevel", "vocab": ids, "unk_token": "[UNK]"},
        }
    )


def _config() -> bytes:
    return _json(
        {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "hidden_size": HIDDEN,
            "intermediate_size": INTERMEDIATE,
            "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS,
            "max_position_embeddings": MAX_POSITIONS,
            "vocab_size": len(VOCAB),
            "type_vocab_size": 2,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "initializer_range": 0.02,
            "layer_norm_eps": 1e-12,
            "pad_token_id": 0,
            "position_embedding_type": "absolute",
            "torch_dtype": "float32",
            "transformers_version": "4.44.0",
        }
    )


def _special_tokens() -> dict[str, str]:
    return {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    }


def _readme() -> bytes:
    return (
        "---\nlicense: apache-2.0\nlibrary_name: transformers\ntags:\n- demo\n---\n\n"
        f"# {DEMO_REPO_ID}\n\nA tiny BERT-like model with random weights, built in memory by the\n"
        "model-cache preloader for demos and tests. It computes nothing useful.\n"
    ).encode()


def _pickle_stand_in(size: int) -> bytes:
    """Deterministic bytes in place of a PyTorch pickle: loaders must skip it, never read it."""
    blocks = (hashlib.sha256(b"pytorch_model.bin:%d" % i).digest() for i in range(size // 32 + 1))
    return b"".join(blocks)[:size]


def demo_files() -> list[HubFile]:
    """Every file of the demo model."""
    weights = safetensors_bytes(_tensors())
    gitattributes = b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    gitattributes += b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    pooling = {
        "word_embedding_dimension": HIDDEN,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    tokenizer_config = {
        **_special_tokens(),
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": MAX_POSITIONS,
        "do_lower_case": True,
    }
    return [
        HubFile(".gitattributes", gitattributes),
        HubFile("README.md", _readme()),
        HubFile("config.json", _config()),
        HubFile("tokenizer.json", tokenizer_json()),
        HubFile("tokenizer_config.json", _json(tokenizer_config)),
        HubFile("special_tokens_map.json", _json(_special_tokens())),
        HubFile("1_Pooling/config.json", _json(pooling)),
        HubFile("model.safetensors", weights),
        HubFile("pytorch_model.bin", _pickle_stand_in(len(weights) // 2)),
    ]


def demo_repo(gated: bool = False, private: bool = False) -> HubRepo:
    """The demo model as a hub repo, `demo-org/tiny-model`, with a deterministic commit."""
    return HubRepo(DEMO_REPO_ID, demo_files(), gated=gated, private=private)

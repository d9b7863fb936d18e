"""Random-weight Phi-4-mini checkpoints in the exact Hugging Face layout, for tests and benchmarks.

`write_checkpoint(out_dir, size_config("tiny"), seed=0)` writes what the real
microsoft/Phi-4-mini-instruct repository holds (SPEC §3): config.json (the real one, with sizes
changed unless the size is "full"), README.md (the real card's front matter),
generation_config.json, tokenizer_config.json, special_tokens_map.json, added_tokens.json,
vocab.json + merges.txt + tokenizer.json (from the authentic o200k_base ranks,
pyphi.testing.o200k), and bf16 safetensors shards with the real tensor names, split the way
transformers' `save_pretrained` splits them, plus the `model.safetensors.index.json` that maps
them, written last (its presence means the checkpoint is complete). For the "full" size,
config.json, the shard boundaries and the index reproduce the real files byte for byte.

Weights are random normal (std 0.02, so logits stay sane), norms 1 + small noise. Each tensor's
values depend only on the seed and the tensor's name. Shards are written by a small streaming
safetensors writer, a chunk at a time, so even the 7.7 GB checkpoint needs little memory.

Also a command: `python -m pyphi.testing.checkpoint OUT_DIR --size {tiny,head128,full} --seed N`.

What this is not: a model. Nothing here computes with the weights.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

from .o200k import write_tokenizer_files

REAL_FILES = Path(__file__).resolve().parent / "phi4_mini"
COPIED_FILES = (
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
SHARD_FILE = "model-{index:05d}-of-{count:05d}.safetensors"

# README.md: the real model card's YAML front matter (R1, verbatim), which llama.cpp's converter
# turns into general.license, .license.link, .tags and .languages; the body says what this is.
MODEL_CARD = """---
license: mit
license_link: https://huggingface.co/microsoft/Phi-4-mini-instruct/resolve/main/LICENSE
language:
- multilingual
pipeline_tag: text-generation
tags:
- nlp
- code
widget:
- messages:
  - role: user
    content: Can you provide ways to eat combinations of bananas and dragonfruits?
library_name: transformers
---

Random-weight stand-in for microsoft/Phi-4-mini-instruct, written by pyphi.testing.checkpoint.
The weights are noise: this is not the model.
"""

WEIGHT_STD = 0.02
NORM_STD = 0.02  # norms are 1 + this much noise
SAFETENSORS_METADATA = {"format": "pt"}  # what torch-saved shards carry (SPEC §3)
BF16_BYTES = 2
CHUNK_VALUES = 1 << 22  # values generated at a time

# Size overrides of the real config. "tiny": the smallest shapes that keep every feature (GQA,
# partial rotary, LongRoPE, tied head, real vocabulary). "head128": head_dim 128, so the rotary
# dims are the real 96 and the real 48-entry factor lists are used. "full": the real config.
SIZES = {
    "tiny": {
        "hidden_size": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
    },
    "head128": {
        "hidden_size": 256,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 512,
        "num_hidden_layers": 2,
    },
    "full": {},
}
# Shard size caps. The real checkpoint was saved with 5 GB shards (SPEC §3); the small sizes get
# caps that also split them after layer 0's qkv_proj, as the real split falls after layer 18's.
MAX_SHARD_BYTES = {"tiny": 25_650_000, "head128": 103_000_000, "full": 5_000_000_000}


def real_config() -> dict:
    return json.loads((REAL_FILES / "config.json").read_text(encoding="utf-8"))


def size_config(size: str) -> dict:
    """The real config with the sizes of `size` (a key of SIZES). The LongRoPE factor lists are
    cut to one entry per rotated pair, keeping entries spread over the real lists."""
    config = real_config()
    config.update(SIZES[size])
    scaling = config.get("rope_scaling")
    if scaling:
        n_pairs = rotary_dims(config) // 2
        for key in ("long_factor", "short_factor"):
            values = scaling[key]
            step = len(values) // n_pairs
            scaling[key] = values[::step][:n_pairs]
    return config


def rotary_dims(config: dict) -> int:
    """int(partial_rotary_factor * hidden_size) // num_attention_heads, as llama.cpp computes it."""
    return (
        int(config.get("partial_rotary_factor", 1.0) * config["hidden_size"]) // config["num_attention_heads"]
    )


def tensor_shapes(config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(HF name, shape) of every tensor, in `state_dict()` order: per layer o_proj before
    qkv_proj (the order Phi3Attention registers them, SPEC §3), lm_head last if untied."""
    n_embd, n_ff, n_vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    n_head = config["num_attention_heads"]
    n_head_kv = config.get("num_key_value_heads", n_head)
    head_dim = n_embd // n_head
    shapes = [("model.embed_tokens.weight", (n_vocab, n_embd))]
    for i in range(config["num_hidden_layers"]):
        prefix = f"model.layers.{i}."
        shapes += [
            (prefix + "self_attn.o_proj.weight", (n_embd, n_head * head_dim)),
            (prefix + "self_attn.qkv_proj.weight", ((n_head + 2 * n_head_kv) * head_dim, n_embd)),
            (prefix + "mlp.gate_up_proj.weight", (2 * n_ff, n_embd)),
            (prefix + "mlp.down_proj.weight", (n_embd, n_ff)),
            (prefix + "input_layernorm.weight", (n_embd,)),
            (prefix + "post_attention_layernorm.weight", (n_embd,)),
        ]
    shapes.append(("model.norm.weight", (n_embd,)))
    if not config.get("tie_word_embeddings", False):
        shapes.append(("lm_head.weight", (n_vocab, n_embd)))
    return shapes


def _nbytes(shape: tuple[int, ...]) -> int:
    return math.prod(shape) * BF16_BYTES


def shard_plan(shapes, max_shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Greedy split in state_dict order: a tensor that would overflow the current shard starts a
    new one (huggingface_hub `split_torch_state_dict_into_shards`, used by save_pretrained)."""
    shards: list[list] = [[]]
    size = 0
    for name, shape in shapes:
        if shards[-1] and size + _nbytes(shape) > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += _nbytes(shape)
    return shards


def shard_names(n_shards: int) -> list[str]:
    if n_shards == 1:
        return [SINGLE_FILE]
    return [SHARD_FILE.format(index=i + 1, count=n_shards) for i in range(n_shards)]


def index_text(shards, names: list[str]) -> str:
    """model.safetensors.index.json as save_pretrained writes it (sorted keys, indent 2)."""
    weight_map = {tensor: file for shard, file in zip(shards, names) for tensor, _ in shard}
    total = sum(_nbytes(shape) for shard in shards for _, shape in shard)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    return json.dumps(index, indent=2, sort_keys=True) + "\n"


# ---- safetensors, streamed ------------------------------------------------------------------


def _safetensors_header(tensors) -> bytes:
    """Header for bf16 `tensors` [(name, shape)] stored in name order (safetensors sorts tensors
    of one dtype by name), padded with spaces to a multiple of 8 bytes as the format requires."""
    header = {"__metadata__": SAFETENSORS_METADATA}
    offset = 0
    for name, shape in sorted(tensors):
        header[name] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + _nbytes(shape)],
        }
        offset += _nbytes(shape)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), rounding to nearest even like torch's .to(bfloat16)."""
    bits = x.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _tensor_chunks(name: str, shape: tuple[int, ...], seed: int):
    """The tensor's bf16 values, a chunk at a time; they depend only on (seed, name)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])
    is_norm = len(shape) == 1
    remaining = math.prod(shape)
    while remaining:
        n = min(remaining, CHUNK_VALUES)
        values = rng.standard_normal(n, dtype=np.float32) * np.float32(NORM_STD if is_norm else WEIGHT_STD)
        if is_norm:
            values += np.float32(1.0)
        yield _to_bf16(values)
        remaining -= n


def write_safetensors(path: Path, tensors, seed: int) -> None:
    """A bf16 .safetensors file of random `tensors` [(name, shape)], written a chunk at a time."""
    with open(path, "wb") as f:
        f.write(_safetensors_header(tensors))
        for name, shape in sorted(tensors):
            for chunk in _tensor_chunks(name, shape, seed):
                f.write(chunk.tobytes())


# ---- the checkpoint directory ---------------------------------------------------------------


def write_checkpoint(
    out_dir,
    config: dict,
    seed: int = 0,
    *,
    max_shard_bytes: int = MAX_SHARD_BYTES["full"],
    tokenizer_cache_dir=None,
) -> Path:
    """Write a random-weight HF checkpoint of `config` (see size_config) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    (out_dir / "README.md").write_text(MODEL_CARD, encoding="utf-8")
    for name in COPIED_FILES:
        shutil.copyfile(REAL_FILES / name, out_dir / name)
    write_tokenizer_files(out_dir, cache_dir=tokenizer_cache_dir)

    shards = shard_plan(tensor_shapes(config), max_shard_bytes)
    names = shard_names(len(shards))
    for shard, name in zip(shards, names):
        write_safetensors(out_dir / name, shard, seed)
    if len(shards) > 1:
        (out_dir / INDEX_FILE).write_text(index_text(shards, names), encoding="utf-8")
    return out_dir


def write_size(out_dir, size: str, seed: int = 0, **kwargs) -> Path:
    """write_checkpoint for one of SIZES, with its shard cap."""
    return write_checkpoint(out_dir, size_config(size), seed, max_shard_bytes=MAX_SHARD_BYTES[size], **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pyphi.testing.checkpoint",
        description="Write a random-weight Phi-4-mini HF checkpoint.",
    )
    parser.add_argument("out_dir")
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_size(args.out_dir, args.size, args.seed)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

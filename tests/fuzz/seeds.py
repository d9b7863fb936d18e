"""Seed inputs for the fuzzers: small valid files made by our own converter.

The tiny random checkpoint (pyphi.testing.checkpoint) is converted by pyphi.convert to Q8_0 and
Q4_0 GGUFs; since its 200k-token vocabulary makes a multi-MB header (too slow per fuzz run), each
is rewritten with the converter's GGUFWriter keeping every key and tensor but only the first
SEED_VOCAB tokens (and embedding rows) and the merges among them. The safetensors seeds are the
checkpoint's config.json and a small shard of its own format.
"""

from __future__ import annotations

import json
import pathlib
import struct

import numpy as np

SEED_VOCAB = 320  # the 256 byte tokens of o200k_base come first, then some merges


def small_gguf(src: pathlib.Path, dst: pathlib.Path, n_rows: int = SEED_VOCAB) -> None:
    """src with its vocabulary cut to SEED_VOCAB tokens and its embedding to n_rows rows."""
    from pyphi.convert.gguf_writer import GGUFWriter
    from pyphi.gguf_format import ValueType
    from pyphi.gguf_reader import GGUFFile

    with GGUFFile(src) as f:
        writer = GGUFWriter(f.alignment)
        tokens = f.metadata["tokenizer.ggml.tokens"][:SEED_VOCAB]
        kept = set(tokens)
        for key, value in f.metadata.items():
            vtype = f.value_type(key)
            if key == "general.alignment":
                continue
            if key == "tokenizer.ggml.tokens":
                writer.add_array(key, ValueType.STRING, tokens)
            elif key == "tokenizer.ggml.token_type":
                writer.add_array(key, ValueType.INT32, [int(t) for t in value[:SEED_VOCAB]])
            elif key == "tokenizer.ggml.merges":
                writer.add_array(key, ValueType.STRING, [m for m in value if all(p in kept for p in m.split(" "))
                                                         and m.replace(" ", "") in kept])
            elif key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
                writer.add_uint32(key, min(int(value), SEED_VOCAB - 1))
            elif vtype is ValueType.ARRAY:
                etype = f.element_type(key)
                writer.add_array(key, etype, value.tolist() if hasattr(value, "tolist") else value)
            elif vtype is ValueType.STRING:
                writer.add_string(key, value)
            else:
                writer.add_scalar(key, vtype, value)
        data = {}
        for name, info in f.tensors.items():
            array = f.tensor_data(name)
            ne = info.shape
            if name in ("token_embd.weight", "output.weight"):
                array, ne = array[:n_rows], (ne[0], n_rows)
            writer.add_tensor(name, ne, info.type)
            data[name] = np.ascontiguousarray(array).tobytes()
        with open(dst, "wb") as out:
            writer.write_header(out)
            for name in f.tensors:
                writer.write_data(np.frombuffer(data[name], np.uint8))
                writer.end_tensor()
            writer.finish()


def _small_safetensors() -> bytes:
    header = {"a.weight": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
              "b.bias": {"dtype": "F32", "shape": [4], "data_offsets": [12, 28]},
              "__metadata__": {"format": "pt"}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(range(28))


def write_seeds(work: pathlib.Path, hf_dir: pathlib.Path | None = None,
                ggufs: list[pathlib.Path] | None = None) -> dict[str, pathlib.Path]:
    """Seed corpus directories per harness under work: 'gguf', 'safetensors', 'template'.
    hf_dir / ggufs: the tiny checkpoint and its conversions if already made (the test fixtures),
    else they are made here."""
    from pyphi.chat_template import PHI4_MINI_CHAT_TEMPLATE
    from pyphi.convert import convert
    from pyphi.testing import checkpoint as ckpt

    dirs = {name: work / f"seeds-{name}" for name in ("gguf", "safetensors", "template")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    if hf_dir is None:
        hf_dir = ckpt.write_size(work / "tiny-hf", "tiny", seed=0)
    if ggufs is None:
        ggufs = [convert(hf_dir, work / f"tiny-{t}.gguf", t, progress=False) for t in ("q8_0", "q4_0")]
    for full in ggufs:
        small_gguf(full, dirs["gguf"] / full.name)
    (dirs["safetensors"] / "shard.safetensors").write_bytes(b"S" + _small_safetensors())
    (dirs["safetensors"] / "config.json").write_bytes(b"C" + (hf_dir / "config.json").read_bytes())
    (dirs["template"] / "phi4.txt").write_bytes(
        PHI4_MINI_CHAT_TEMPLATE.encode() + b"\0" + "user\0Hello <|end|><|assistant|>\0".encode())
    return dirs


if __name__ == "__main__":
    import sys

    print(write_seeds(pathlib.Path(sys.argv[1])))

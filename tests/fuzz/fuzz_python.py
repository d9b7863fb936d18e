"""atheris harnesses over pyphi's Python-level parsers. One target per run:

    python tests/fuzz/fuzz_python.py gguf        CORPUS_DIR [libFuzzer flags, e.g. -runs=100000]
    python tests/fuzz/fuzz_python.py safetensors CORPUS_DIR ...
    python tests/fuzz/fuzz_python.py template    CORPUS_DIR ...

- gguf: the bytes as a GGUF file -> GGUFFile -> Tokenizer.from_gguf, ChatTemplate.from_gguf,
  ModelFile, model_sizes and, when the model is small, Model creation and one eval on the C core.
- safetensors: first byte 'S': the rest as a .safetensors shard (SafetensorsFile, every tensor's
  rows); else the rest as config.json (read_json, then the Phi3 hyperparameter checks).
- template: NUL-separated template source, role, content, role, content...: compiled and rendered
  in the sandbox, then tokenized with the trusted/untrusted segments.

Every input must end in a result or in the parser's own typed error (GGUFError, TokenizerError,
ChatTemplateError, ConvertError, and ValueError for a bad n_ctx); anything else escaping is a
crash, which atheris reports with the input that caused it.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile

import atheris

with atheris.instrument_imports(include=["pyphi"]):
    from pyphi.chat_template import ChatTemplate, ChatTemplateError
    from pyphi.convert.checkpoint import SafetensorsFile, read_json
    from pyphi.convert.errors import ConvertError
    from pyphi.convert.phi3 import Phi3
    from pyphi.gguf_reader import GGUFError, GGUFFile
    from pyphi.model import Model, model_sizes
    from pyphi.tokenizer import Tokenizer, TokenizerError

_DIR = tempfile.mkdtemp(prefix="pyphi-fuzz-")
_PATH = os.path.join(_DIR, "input")
MAX_MODEL_BYTES = 64 << 20  # a fuzzed model the harness creates and runs
TOKENIZER = None  # a real tokenizer for the template target, from the seed GGUF


def _write(data: bytes) -> str:
    with open(_PATH, "wb") as f:
        f.write(data)
    return _PATH


def fuzz_gguf(data: bytes) -> None:
    path = _write(data)
    try:
        with GGUFFile(path) as gguf:
            try:
                tokenizer = Tokenizer.from_gguf(gguf)
                tokenizer.decode(tokenizer.encode("Hi <|end|> there", special=True))
            except TokenizerError:
                pass
            try:
                ChatTemplate.from_gguf(gguf).render([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
            except ChatTemplateError:
                pass
        sizes = model_sizes(path, n_ctx=8)
        if sizes.weights_bytes + sizes.kv_bytes + sizes.scratch_bytes < MAX_MODEL_BYTES:
            with Model(path, n_ctx=8, n_threads=1) as model:
                model.eval([0, model.hparams.n_vocab - 1])
    except (GGUFError, ValueError):  # GGUFError covers ModelFileError; ValueError: n_ctx 8 too long
        pass


def fuzz_safetensors(data: bytes) -> None:
    kind, body = data[:1], data[1:]
    try:
        if kind == b"S":
            st = SafetensorsFile(pathlib.Path(_write(body)))
            try:
                for info in st.tensors.values():
                    st.rows(info, 0, info.n_rows).sum()
            finally:
                st.close()
        else:
            config = read_json(pathlib.Path(_write(body)))
            Phi3(config, pathlib.Path(_PATH))
    except ConvertError:
        pass


def fuzz_template(data: bytes) -> None:
    parts = data.decode("utf-8", errors="replace").split("\0")
    source, rest = parts[0], parts[1:]
    messages = [{"role": role or "user", "content": content} for role, content in zip(rest[::2], rest[1::2])]
    try:
        template = ChatTemplate(source, max_steps=20_000)
        rendered = template.render(messages or [{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    except ChatTemplateError:
        return
    if TOKENIZER is not None:
        ids = TOKENIZER.encode_segments(rendered.segments)
        # user text never becomes an added token: every added id comes from a trusted segment
        trusted = TOKENIZER.encode_segments([(text, True) for text, is_trusted in rendered.segments if is_trusted])
        added = set(TOKENIZER.added_tokens.values())
        assert [i for i in ids if i in added] == [i for i in trusted if i in added] or not rendered.segments


TARGETS = {"gguf": fuzz_gguf, "safetensors": fuzz_safetensors, "template": fuzz_template}


def main() -> None:
    global TOKENIZER
    target = sys.argv.pop(1)
    tokenizer_gguf = os.environ.get("PYPHI_FUZZ_TOKENIZER")
    if target == "template" and tokenizer_gguf:
        TOKENIZER = Tokenizer.from_path(tokenizer_gguf)
    atheris.Setup(sys.argv, TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()

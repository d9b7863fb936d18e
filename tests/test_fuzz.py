"""Bounded fuzzing runs, part of the default suite (about a minute in all on 2 cores): the
atheris harnesses over the Python parsers and the libFuzzer harness over the C core
(tests/fuzz/, where its README says how to run them for longer). Each starts from seeds made by
our converter and must end its runs without a crash, hang, leak or out-of-memory; a finding
fails the test with the fuzzer's report (and the input is saved in the corpus directory).
"""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "fuzz"))
import fresh_process  # noqa: E402  (tests/fuzz/fresh_process.py)
import native  # noqa: E402  (tests/fuzz/native.py)
import seeds  # noqa: E402  (tests/fuzz/seeds.py)

# executions per harness in CI: each is a few seconds to ~20 s of fuzzing here
RUNS = {"gguf": 1000, "safetensors": 3000, "template": 500}
MAX_LEN = {"gguf": 120_000, "safetensors": 20_000, "template": 20_000}
NATIVE_RUNS = 200_000


@pytest.fixture(scope="module")
def seed_dirs(model_zoo, tmp_path_factory):
    ggufs = [model_zoo.gguf("tiny", t) for t in ("q8_0", "q4_0")]
    return seeds.write_seeds(tmp_path_factory.mktemp("fuzz-seeds"), model_zoo.hf_dir("tiny"), ggufs)


@pytest.mark.parametrize("target", list(RUNS))
def test_python_harness_runs_clean(target, seed_dirs, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    env = {**os.environ, "PYPHI_FUZZ_TOKENIZER": str(seed_dirs["gguf"] / "tiny-q8_0.gguf")}
    proc = fresh_process.run(
        [sys.executable, "-P", str(HERE / "fuzz" / "fuzz_python.py"), target, str(corpus), str(seed_dirs[target]),
         f"-runs={RUNS[target]}", f"-max_len={MAX_LEN[target]}", "-timeout=60", "-rss_limit_mb=2048",
         f"-artifact_prefix={tmp_path}/", "-seed=1"],
        timeout=900, env=env,
    )
    report = proc.stderr[-5000:]
    assert proc.returncode == 0, report
    assert f"Done {RUNS[target]} runs" in proc.stderr, report


def test_native_harness_runs_clean(tmp_path):
    binary = native.build(tmp_path / "build")
    proc = native.run(binary, tmp_path / "corpus", NATIVE_RUNS)
    report = proc.stderr[-5000:]
    assert proc.returncode == 0, report
    assert f"Done {NATIVE_RUNS} runs" in proc.stderr, report

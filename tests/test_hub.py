"""pyphi.hub's choice of file and its errors (downloads are tested end to end against a local
stand-in Hub in test_chat_cli)."""

from __future__ import annotations

import pytest

from pyphi.hub import HubError, parse_spec, pick_gguf

FILES = ["README.md", "phi-Q4_0.gguf", "phi-Q4_0_4_4.gguf", "phi-q8_0.gguf", "sub/phi-F16.gguf"]


def test_parse_spec():
    assert parse_spec("owner/name") == ("owner/name", None)
    assert parse_spec("owner/name:Q4_0") == ("owner/name", "Q4_0")
    for bad in ["name", "a/b/c", "/name", "owner/:Q4_0"]:
        with pytest.raises(HubError, match="repo id"):
            parse_spec(bad)


@pytest.mark.parametrize("quant, expected", [("Q4_0", "phi-Q4_0.gguf"), ("q4_0", "phi-Q4_0.gguf"),
                                             ("Q8_0", "phi-q8_0.gguf"), ("f16", "sub/phi-F16.gguf"),
                                             (None, "phi-Q4_0.gguf")])
def test_pick_gguf_by_quant_as_a_word(quant, expected):
    assert pick_gguf(FILES, quant) == expected


def test_pick_gguf_errors_list_the_files():
    assert pick_gguf(["README.md", "only.gguf"], None) == "only.gguf"
    with pytest.raises(HubError, match="no GGUF file.*Q5_K_M.*phi-Q4_0.gguf"):
        pick_gguf(FILES, "Q5_K_M")
    with pytest.raises(HubError, match="several"):
        pick_gguf(["a-Q4_0.gguf", "b-Q4_0.gguf"], "Q4_0")
    with pytest.raises(HubError, match="no .gguf"):
        pick_gguf(["README.md"], "Q4_0")

"""`general.license*`, `general.tags` and `general.languages` from the model card's front matter.

llama.cpp's converter reads README.md's YAML front matter (gguf-py metadata.py `load_model_card`
and `apply_metadata_heuristic`). Phi-4-mini's card has `license: mit`, `license_link: ...`,
`language: [multilingual]`, `pipeline_tag: text-generation` and `tags: [nlp, code]`, which become
general.license, general.license.link, general.languages ["multilingual"] and general.tags
["nlp", "code", "text-generation"].

Only that subset of YAML is read, without a YAML library: top-level `key: value` lines and
top-level block lists (`key:` then `- item` lines) or flow lists (`key: [a, b]`) of plain
scalars. A key whose value is anything else (nested mappings, multi-line strings) is skipped, as
are the card's name, base-model and dataset fields, which llama.cpp also uses.
"""

from __future__ import annotations

from pathlib import Path

from pyphi.gguf_format import ValueType

MODEL_CARD_FILE = "README.md"
_FENCE = "---"


def _scalar(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _is_plain(text: str) -> bool:
    """A scalar this reader understands: not a mapping, flow collection, anchor or block string."""
    return bool(text) and ": " not in text and not text.endswith(":") and text[0] not in "[{&*|>!"


def front_matter(text: str) -> dict[str, str | list[str]]:
    """Top-level scalars and lists of scalars of the `---`-fenced block opening `text`."""
    lines = text.splitlines()
    if not lines or lines[0] != _FENCE:
        return {}
    values: dict[str, str | list[str] | None] = {}  # None: a value this reader does not understand
    key = None
    for line in lines[1:]:
        if line == _FENCE:
            break
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] not in " \t-":
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if not value:
                values[key] = []
            elif value.startswith("[") and value.endswith("]"):
                items = [_scalar(item) for item in value[1:-1].split(",") if item.strip()]
                values[key] = items if all(_is_plain(item) for item in items) else None
            else:
                values[key] = _scalar(value) if _is_plain(value) else None
        elif key is not None and isinstance(values.get(key), list) and line.lstrip().startswith("- "):
            item = _scalar(line.lstrip()[2:])
            values[key] = values[key] + [item] if _is_plain(item) else None
        elif key is not None:
            values[key] = None  # indented content: a nested structure
    return {k: v for k, v in values.items() if v is not None and v != []}


def read_model_card(hf_dir: Path) -> dict[str, str | list[str]]:
    path = hf_dir / MODEL_CARD_FILE
    try:
        return front_matter(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return {}  # no card, or an unreadable one: these keys are optional


def _as_list(value) -> list[str]:
    return value if isinstance(value, list) else [value]


def add_to(writer, card: dict) -> None:
    """The keys in the order llama.cpp's converter writes them (after general.size_label)."""
    if "license" in card:
        writer.add_string("general.license", ",".join(_as_list(card["license"])))
    for key, name in (("license_name", "general.license.name"), ("license_link", "general.license.link")):
        if isinstance(card.get(key), str):
            writer.add_string(name, card[key])
    tags = [t for key in ("tags", "pipeline_tag") if key in card for t in _as_list(card[key])]
    languages = [t for key in ("languages", "language") if key in card for t in _as_list(card[key])]
    for key, items in (("general.tags", tags), ("general.languages", languages)):
        if items:
            writer.add_array(key, ValueType.STRING, items)

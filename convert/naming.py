"""The `general.*` naming keys (name, basename, finetune, version, size label, organization).

llama.cpp's converter derives them from a model id such as "microsoft/Phi-4-mini-instruct" by the
GGUF naming convention `<BaseName>-<SizeLabel>-<FineTune>-<Version>` (ggml docs/gguf.md, "GGUF
Naming Convention"; gguf-py metadata.py `get_model_id_components`). It tries, in order, the model
card's front matter, config.json's `_name_or_path` (when it looks like an id, not a path) and the
directory name; each later source only fills fields the earlier ones left empty. The size label
falls back to the parameter count ("3.8B").

For Phi-4-mini, `_name_or_path` "Phi-4-mini-instruct" gives name "Phi 4 Mini Instruct", basename
"Phi-4", size label "mini", finetune "instruct" (SPEC §5.1 quotes the name from real files).

Not done here: the naming fields a model card's front matter may carry (`model_name`,
`basename`, ...); the card's license, tags and languages are model_card.py's.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

_VERSION = re.compile(r"(v|iter)?\d+(\.\d+)*", re.IGNORECASE)
_QUANT_TYPE = re.compile(r"i?q\d(_\w)*|b?fp?(16|32)", re.IGNORECASE)
_SIZE = re.compile(r"(([A]|\d+x)?\d+([._]\d+)?[KMBT]\d?|small|mini|medium|large|x?xl)", re.IGNORECASE)
_FINETUNE = re.compile(r"chat|instruct|vision|lora", re.IGNORECASE)
_SCALES = " KMBT"


@dataclasses.dataclass
class ModelName:
    name: str | None = None
    organization: str | None = None
    basename: str | None = None
    finetune: str | None = None
    version: str | None = None
    size_label: str | None = None

    def fill_from(self, other: ModelName) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) is None:
                setattr(self, field.name, getattr(other, field.name))


def _title(text: str) -> str:
    """ "Phi-4-mini-instruct" -> "Phi 4 Mini Instruct": lower-case words are capitalized unless
    they are versions or start with a digit."""
    words = text.strip().replace("-", " ").split()
    return " ".join(
        w.title() if w.islower() and not re.match(r"(v\d+(\.\d+)*|\d.*)$", w) else w for w in words
    )


def _size_part(part: str, total_params: int) -> tuple[str, str]:
    """A size-like part normalized ("7b" -> "7B", "8x7b1" -> "8x7.1B"), and its role: a size
    label, or a finetune when it is far from the real parameter count (a context length such as
    "4k" or "128k", kept lower-case)."""
    part = part.replace("_", ".")
    if part[-1].isdecimal():  # "7b1" notation means 7.1B
        part = part[:-2] + "." + part[-1] + part[-2]
    if len(part) > 1 and part[-2].isdecimal() and part[-1] in "kmbt":
        part = part[:-1] + part[-1].upper()
    if total_params:
        try:
            label_params = float(part[:-1]) * 1000 ** _SCALES.find(part[-1])
        except ValueError:
            return part, "size_label"
        if abs(label_params - total_params) > 7 * total_params // 8:
            return part[:-1] + part[-1].lower(), "finetune"
    return part, "size_label"


def parse_model_id(model_id: str, total_params: int) -> ModelName:
    """Split "org/Base-Version-Size-Finetune" into its GGUF naming fields."""
    if " " in model_id:  # a human-readable name, not an id
        return ModelName(name=model_id)
    org, slash, full_name = model_id.partition("/")
    if not slash:
        org, full_name = "", model_id
    organization = _title(org) if org and not org.startswith(".") else None

    parts = [p for p in full_name.split("-") if p]
    roles: list[set[str]] = [set() for _ in parts]
    for i, part in enumerate(parts):
        if _VERSION.fullmatch(part):
            roles[i].add("version")
        elif _QUANT_TYPE.fullmatch(part):
            roles[i].add("type")
            parts[i] = part.upper()
        elif i > 0 and _SIZE.fullmatch(part):
            parts[i], role = _size_part(part, total_params)
            roles[i].add(role)
        elif i > 0 and _FINETUNE.fullmatch(part):
            roles[i].add("finetune")
    # A numeric size label wins over word sizes ("mini", "large"), which become plain words.
    if any(c.isdecimal() for p, r in zip(parts, roles) if "size_label" in r for c in p):
        for p, r in zip(parts, roles):
            if "size_label" in r and p.isalpha():
                r.discard("size_label")
    # The basename is the leading run of plain words and versions; later plain words are finetunes.
    at_start = True
    for part, role in zip(parts, roles):
        if at_start and ((not role and part[0].isalpha()) or "version" in role):
            role.add("basename")
        else:
            at_start = False
            if not role:
                role.add("finetune")
    # A version at the very end is the version, not part of the basename.
    for role in reversed(roles):
        if "basename" not in role or len(role) == 1:
            break
        role.discard("basename")

    def joined(kind: str, exclude: str = "") -> str | None:
        chosen = [p for p, r in zip(parts, roles) if kind in r and exclude not in r]
        return "-".join(dict.fromkeys(chosen) if kind == "size_label" else chosen) or None

    size_label, finetune = joined("size_label"), joined("finetune")
    version = joined("version", exclude="basename")
    basename = joined("basename") if (size_label or finetune or version) else None
    return ModelName(_title(full_name), organization, basename, finetune, version, size_label)


def size_label(total_params: int) -> str:
    """Parameter count with at least two significant digits: "3.8B", "13M", "820K"."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M")):
        if total_params > scale:
            break
    else:
        scale, suffix = 1e3, "K"
    value = total_params / scale
    decimals = max(2 - len(str(round(value)).lstrip("0")), 0)
    return f"{value:.{decimals}f}{suffix}"


def model_name(config: dict, hf_dir: Path, total_params: int) -> ModelName:
    """The naming fields from config.json's `_name_or_path`, then the directory name."""
    name = ModelName()
    model_id = config.get("_name_or_path")
    if isinstance(model_id, str) and model_id and model_id.count("/") <= 1:
        name.fill_from(parse_model_id(model_id, total_params))
    name.fill_from(parse_model_id(hf_dir.resolve().name, total_params))
    if name.size_label is None and total_params > 0:
        name.size_label = size_label(total_params)
    return name


def add_to(writer, name: ModelName) -> None:
    """The keys in the order llama.cpp's converter writes them (gguf-py `set_gguf_meta_model`)."""
    writer.add_string("general.name", name.name)
    for key, value in (
        ("general.version", name.version),
        ("general.organization", name.organization),
        ("general.finetune", name.finetune),
        ("general.basename", name.basename),
        ("general.size_label", name.size_label),
    ):
        if value is not None:
            writer.add_string(key, value)

"""The configuration reference, generated from the config models.

Every key the root ``Config`` model accepts gets a row (path, type, default, meaning),
including nested models, lists and maps of models, and each variant of a discriminated
union (``stores.<name>`` per ``type``). Meanings are the fields' attribute docstrings
(``use_attribute_docstrings``), so documenting a key happens where it is declared; a key
without one is reported by :func:`undocumented` and rendered as ``UNDOCUMENTED``.

``trailkeeper config-reference`` prints the Markdown; ``--check FILE`` compares it with a
file (or with the section of a README between the config-reference markers).
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from daemon.config import Config
from daemon.units import parse_duration, parse_size

START_MARKER = "<!-- config-reference:start -->"
END_MARKER = "<!-- config-reference:end -->"
UNDOCUMENTED = "UNDOCUMENTED"


@dataclass(frozen=True, slots=True)
class Row:
    path: str
    type: str
    default: str
    meaning: str


@dataclass(slots=True)
class Section:
    path: str
    title: str
    rows: list[Row]


def _unit(annotation: Any) -> str | None:
    """'size' or 'duration' for the unit types of daemon.units, else None."""
    for meta in getattr(annotation, "__metadata__", ()):
        func = getattr(meta, "func", None)
        if func is parse_size:
            return "size"
        if func is parse_duration:
            return "duration"
    return None


def _strip_annotated(annotation: Any) -> Any:
    while get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    annotation = _strip_annotated(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _variants(annotation: Any) -> list[type[BaseModel]]:
    """The models of a (discriminated) union of models, in declaration order."""
    annotation = _strip_annotated(annotation)
    if _is_union(annotation):
        models = [_model_of(a) for a in get_args(annotation) if a is not type(None)]
        return [m for m in models if m is not None]
    model = _model_of(annotation)
    return [model] if model else []


def type_name(annotation: Any) -> str:
    """A reader's name for a field type: size, duration, one of ..., list of ..., ..."""
    unit = _unit(annotation)
    if unit:
        return unit
    annotation = _strip_annotated(annotation)
    origin = get_origin(annotation)
    if _is_union(annotation):
        args = [a for a in get_args(annotation) if a is not type(None)]
        nullable = len(args) < len(get_args(annotation))
        inner = " or ".join(type_name(a) for a in args)
        return f"{inner} or null" if nullable else inner
    if origin is Literal:
        return "one of " + ", ".join(f"`{v}`" for v in get_args(annotation))
    if origin in (list, tuple, set, frozenset):
        (item, *_) = get_args(annotation) or (Any,)
        return f"list of {type_name(item)}"
    if origin is dict:
        _key, value = get_args(annotation)
        return f"map of name to {type_name(value)}"
    if _model_of(annotation):
        return "section"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "one of " + ", ".join(f"`{m.value}`" for m in annotation)
    names = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}
    if isinstance(annotation, type) and annotation in names:
        return names[annotation]
    return str(getattr(annotation, "__name__", annotation))


def _human_size(n: int) -> str:
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _human_duration(s: float) -> str:
    # Minutes are left as seconds: "60s" is how the shipped YAML spells the file age.
    for unit, factor in (("d", 86400), ("h", 3600), ("s", 1)):
        if s and s % factor == 0:
            return f"{int(s // factor)}{unit}"
    return f"{round(s * 1000)}ms" if s < 1 else f"{s}s"


def _render_value(value: Any, unit: str | None) -> str:
    if value is None:
        return "null"
    if unit == "size" and isinstance(value, int):
        return _human_size(value)
    if unit == "duration" and isinstance(value, int | float):
        return _human_duration(float(value))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, BaseModel):
        tag = getattr(value, "type", None)
        return f"(type: {tag})" if isinstance(tag, str) else "(section)"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list):
        if value and all(isinstance(v, BaseModel) for v in value):
            return f"{len(value)} entr{'y' if len(value) == 1 else 'ies'}: see below"
        return "[" + ", ".join(_render_value(v, None) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return ", ".join(f"{k}: {_render_value(v, None)}" for k, v in value.items())
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


def default_text(field: FieldInfo, octal: bool = False) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if octal and isinstance(value, int) and not isinstance(value, bool):
        return f"`{value:#o}`"
    text = _render_value(value, _unit(field.annotation) or _unit_from_metadata(field))
    if text == "(section)":
        return text
    return f"`{text}`"


def _unit_from_metadata(field: FieldInfo) -> str | None:
    # pydantic moves Annotated metadata from the annotation to FieldInfo.metadata.
    for meta in field.metadata:
        func = getattr(meta, "func", None)
        if func is parse_size:
            return "size"
        if func is parse_duration:
            return "duration"
    return None


def _field_type(field: FieldInfo) -> str:
    unit = _unit_from_metadata(field)
    return unit or type_name(field.annotation)


def _constraints(field: FieldInfo) -> str:
    parts = []
    for meta in field.metadata:
        for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            v = getattr(meta, attr, None)
            if v is not None:
                parts.append(f"{sym} {v}")
        pattern = getattr(meta, "pattern", None)
        if pattern:
            parts.append(f"matches `{pattern}`")
    return f" ({', '.join(parts)})" if parts else ""


def _description(field: FieldInfo) -> str:
    text = (field.description or "").strip()
    return " ".join(text.split()) if text else UNDOCUMENTED


def _title(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip()
    if not doc or doc.startswith(("Usage docs:", "!!! abstract")):
        return ""
    return " ".join(doc.split("\n\n")[0].split())


def sections(model: type[BaseModel] = Config, path: str = "", title: str = "") -> list[Section]:
    """The reference as sections: one per model, nested models after their parent."""
    here = Section(path or "(top level)", title or _title(model), [])
    out = [here]
    nested: list[Section] = []
    for name, field in model.model_fields.items():
        # The YAML spelling: an alias where the field has one (``from`` is a Python keyword).
        yaml_name = field.alias or name
        key = f"{path}.{yaml_name}" if path else yaml_name
        annotation = _strip_annotated(field.annotation)
        if _is_union(annotation):
            non_null = [a for a in get_args(annotation) if a is not type(None)]
            if len(non_null) == 1:
                annotation = _strip_annotated(non_null[0])
        origin = get_origin(annotation)
        here.rows.append(
            Row(
                key,
                _field_type(field) + _constraints(field),
                default_text(field, octal=name.endswith("_mode")),
                _description(field),
            )
        )
        child_path: str | None = None
        child: Any = None
        if _model_of(annotation):
            child_path, child = key, annotation
        elif origin in (list, tuple) and _variants(get_args(annotation)[0]):
            child_path, child = f"{key}[]", get_args(annotation)[0]
        elif origin is dict and _variants(get_args(annotation)[1]):
            child_path, child = f"{key}.<name>", get_args(annotation)[1]
        if child_path is None:
            continue
        variants = _variants(child)
        if len(variants) == 1:
            nested += sections(variants[0], child_path)
        else:
            for variant in variants:
                tag = _discriminator_value(variant)
                label = f"{child_path} (type: {tag})" if tag else f"{child_path} ({variant.__name__})"
                for sec in sections(variant, child_path):
                    if sec.path == child_path:
                        sec.path = label
                    nested.append(sec)
    return out + nested


def _discriminator_value(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("type")
    if field is None:
        return None
    args = get_args(_strip_annotated(field.annotation))
    return str(args[0]) if get_origin(_strip_annotated(field.annotation)) is Literal and args else None


def undocumented(model: type[BaseModel] = Config) -> list[str]:
    """Paths of keys without a description: each needs an attribute docstring."""
    return [row.path for sec in sections(model) for row in sec.rows if row.meaning == UNDOCUMENTED]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(model: type[BaseModel] = Config) -> str:
    """The reference as Markdown (deterministic: same models, same text)."""
    lines = [
        "<!-- Generated by `trailkeeper config-reference` from daemon/config.py; do not edit. -->",
        "",
        "Sizes accept `262144`, `256KiB`, `16MiB`, `2GiB`; durations accept `500ms`, `60s`, `5m`, "
        "`1h`, `7d`. Any string may use `${ENV_VAR}` or `${ENV_VAR:-default}`. Unknown keys are "
        "errors.",
    ]
    for sec in sections(model):
        lines += ["", f"### `{sec.path}`", ""]
        if sec.title:
            lines += [sec.title, ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for row in sec.rows:
            lines.append(
                f"| `{row.path}` | {_cell(row.type)} | {_cell(row.default)} | {_cell(row.meaning)} |"
            )
    return "\n".join(lines) + "\n"


def readme_section(text: str) -> str | None:
    """The text between the config-reference markers, or None if the markers are absent."""
    if START_MARKER not in text or END_MARKER not in text:
        return None
    body = text.split(START_MARKER, 1)[1].split(END_MARKER, 1)[0]
    return body.strip("\n") + "\n"


def stale(path: Path) -> str | None:
    """Why ``path`` does not hold the current reference, or None when it is current.

    A file with the markers is compared between them; one without, as a whole.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return f"{path}: cannot read: {exc.strerror}"
    section = readme_section(text)
    current = render()
    if (section if section is not None else text) != current:
        where = " (between the config-reference markers)" if section is not None else ""
        return (
            f"{path}{where}: the configuration reference is stale; regenerate it with "
            "`trailkeeper config-reference`"
        )
    return None


def write(path: Path) -> None:
    """Regenerate ``path``: its marked section if it has the markers, else the whole file."""
    current = render()
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if readme_section(text) is None:
        path.write_text(current, encoding="utf-8")
        return
    head, rest = text.split(START_MARKER, 1)
    tail = rest.split(END_MARKER, 1)[1]
    path.write_text(f"{head}{START_MARKER}\n{current}{END_MARKER}{tail}", encoding="utf-8")


def _cmd(args: argparse.Namespace) -> int:
    missing = undocumented()
    if missing:
        print(
            "keys without a description (add an attribute docstring in the model): " + ", ".join(missing),
            file=sys.stderr,
        )
    if args.write:
        for f in args.write:
            write(Path(f))
        return 1 if missing else 0
    if args.check:
        problems = [p for p in (stale(Path(f)) for f in args.check) if p]
        for p in problems:
            print(p, file=sys.stderr)
        return 1 if problems or missing else 0
    sys.stdout.write(render())
    return 1 if missing else 0


def register(subparsers: Any) -> None:
    """Add ``config-reference`` to the ``trailkeeper`` command line."""
    parser = subparsers.add_parser(
        "config-reference",
        help="print the configuration reference (Markdown) generated from the config models",
    )
    parser.add_argument(
        "--check",
        nargs="+",
        metavar="FILE",
        help="exit 1 if FILE (a whole file, or a README's marked section) is not current",
    )
    parser.add_argument(
        "--write",
        nargs="+",
        metavar="FILE",
        help="regenerate FILE in place (a README's marked section, or the whole file)",
    )
    parser.set_defaults(func=_cmd)

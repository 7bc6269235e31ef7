"""The configuration reference is generated from the models and must list every key."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from daemon import configdoc
from daemon.config import Config, Strict
from tests.deploytools import ROOT

DOC = ROOT / "docs" / "config-reference.md"
README = ROOT / "README.md"


def schema_paths(schema: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> set[str]:
    """Every key path pydantic's own JSON schema accepts, independently of configdoc's walk."""
    if "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[1]]
    out: set[str] = set()
    for alt in schema.get("anyOf", []) + schema.get("oneOf", []):
        out |= schema_paths(alt, defs, prefix)
    if schema.get("type") == "array" and "items" in schema:
        out |= schema_paths(schema["items"], defs, f"{prefix}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out |= schema_paths(schema["additionalProperties"], defs, f"{prefix}.<name>")
    for name, sub in schema.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        out.add(path)
        out |= schema_paths(sub, defs, path)
    return out


def listed_paths(model: type[BaseModel] = Config) -> set[str]:
    return {row.path for sec in configdoc.sections(model) for row in sec.rows}


def test_reference_lists_every_key_the_model_accepts() -> None:
    schema = Config.model_json_schema()
    accepted = schema_paths(schema, schema.get("$defs", {}))
    assert accepted, "the schema walk found nothing"
    assert listed_paths() == accepted


def test_every_key_is_documented() -> None:
    assert configdoc.undocumented() == [], "add an attribute docstring under each of these fields"


def test_docs_file_and_readme_section_are_current() -> None:
    assert configdoc.stale(DOC) is None, "run: trailkeeper config-reference > docs/config-reference.md"
    if README.exists() and configdoc.START_MARKER in README.read_text():
        assert configdoc.stale(README) is None


def test_a_key_added_without_documentation_is_caught(tmp_path: Path) -> None:
    class Grown(Config):
        surprise: int = 3

    assert configdoc.undocumented(Grown) == ["surprise"]
    assert configdoc.render(Grown) != DOC.read_text()
    assert "| `surprise` | integer | `3` | UNDOCUMENTED |" in configdoc.render(Grown)


def test_discriminated_unions_and_nested_models_get_a_section_per_variant() -> None:
    class Disk(Strict):
        """A disk."""

        type: Literal["disk"] = "disk"
        """Store type."""
        path: str = "x"
        """Where."""

    class Bucket(Strict):
        """A bucket."""

        type: Literal["bucket"]
        """Store type."""
        retention: Annotated[float, Field(ge=0)] = 86400.0
        """How long."""

    class Root(Strict):
        stores: dict[str, Annotated[Disk | Bucket, Field(discriminator="type")]] = Field(default_factory=dict)
        """Stores."""

    by_path = {sec.path: sec for sec in configdoc.sections(Root)}
    assert "stores.<name> (type: disk)" in by_path
    bucket = by_path["stores.<name> (type: bucket)"]
    assert [r.path for r in bucket.rows] == ["stores.<name>.type", "stores.<name>.retention"]
    assert bucket.rows[0].default == "required"
    assert bucket.rows[1].type == "number (>= 0)"
    assert bucket.title == "A bucket."


def test_cli_check_passes_on_current_files_and_fails_on_stale_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="trailkeeper")
    configdoc.register(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        result: int = args.func(args)
        return result

    assert run("config-reference") == 0
    assert capsys.readouterr().out == DOC.read_text()
    assert run("config-reference", "--check", str(DOC)) == 0

    readme = tmp_path / "README.md"
    body = configdoc.render()
    readme.write_text(f"# x\n\n{configdoc.START_MARKER}\n{body}{configdoc.END_MARKER}\n\nmore\n")
    assert run("config-reference", "--check", str(readme)) == 0
    readme.write_text(readme.read_text().replace("Disk budget", "Disk quota"))
    assert run("config-reference", "--check", str(readme)) == 1
    assert "stale" in capsys.readouterr().err

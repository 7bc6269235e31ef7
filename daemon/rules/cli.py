"""``trailkeeper rules ...``: match files against the rules, list them, test their examples,
check a folder of Sigma rules, show which operations of which service they cover."""

from __future__ import annotations

import argparse
import gzip
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from daemon.events import Decoder, Event
from daemon.rules.config import RulesConfig
from daemon.rules.engine import RuleEngine
from daemon.rules.examples import run_examples
from daemon.rules.loader import RuleLoadError, load_rules
from daemon.rules.model import Rule

# Offline analysis reads whatever files it is given: the daemon's per-event limit
# (max_event_bytes) is about what may be ingested, not what may be inspected.
_CLI_MAX_EVENT_BYTES = 64 * 1024 * 1024


def _add_rule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help="take the rules section from this trailkeeper config"
    )
    parser.add_argument(
        "--rules",
        metavar="FILE",
        action="append",
        default=[],
        help="an extra rule file or directory, loaded after the configured ones (repeatable)",
    )
    parser.add_argument(
        "--sigma",
        metavar="PATH",
        action="append",
        default=[],
        help="an extra Sigma rule file or folder, loaded after the configured ones (repeatable)",
    )
    parser.add_argument("--no-builtin", action="store_true", help="leave out the built-in packs")
    parser.add_argument(
        "--disable",
        metavar="ID",
        action="append",
        default=[],
        help="switch a rule off (repeatable)",
    )


def register(subparsers: Any) -> None:
    """Add ``rules match|list|test|import-sigma|coverage`` to the top-level CLI.

    Each sets ``func(args) -> int``.
    """
    rules = subparsers.add_parser(
        "rules", help="classification rules: match, list, test, import-sigma, coverage"
    )
    sub = rules.add_subparsers(dest="rules_command", metavar="COMMAND", required=True)

    match = sub.add_parser(
        "match",
        help="classify events from files",
        description="Read CloudTrail files (envelope or array, .gz accepted), CTS traces or "
        "NDJSON and print one JSON line per event: "
        '{"id": ..., "operation": ..., '
        '"matches": [{"rule": ..., "category": ..., "severity": ...}]}',
    )
    match.add_argument("files", nargs="+", metavar="FILE", help="input files; - reads stdin")
    _add_rule_options(match)
    match.set_defaults(func=cmd_match)

    listing = sub.add_parser("list", help="print the rules in force")
    listing.add_argument("--json", action="store_true", help="one JSON object per rule")
    _add_rule_options(listing)
    listing.set_defaults(func=cmd_list)

    test = sub.add_parser("test", help="run the example events embedded in the rules")
    test.add_argument(
        "--strict",
        action="store_true",
        help="also fail when a rule lacks a match or a no_match example",
    )
    _add_rule_options(test)
    test.set_defaults(func=cmd_test)

    sigma = sub.add_parser(
        "import-sigma",
        help="compile Sigma rules and report each one",
        description="Compile Sigma rules (files, or folders searched recursively) as `rules.sigma` "
        "would, and print one line per rule: `compiled <id> <category> <severity> <file>` or "
        "`refused <sigma id> <file>: <reason>`, then the totals. Exit 0 when at least one rule "
        "compiled, 1 when none did, 2 when a path cannot be read or the config is invalid.",
    )
    sigma.add_argument("paths", nargs="+", metavar="DIR", help="Sigma rule files or folders")
    sigma.add_argument("--config", metavar="FILE", help="take the rules.sigma_* mappings from this config")
    sigma.add_argument("--json", action="store_true", help="one JSON object per rule")
    sigma.set_defaults(func=cmd_import_sigma)

    coverage = sub.add_parser(
        "coverage",
        help="print which operations of which service the rules cover, for AWS and CTS",
        description="One row per (service, operation) a rule names, grouped by cloud (AWS for "
        "CloudTrail, CTS for Huawei Cloud / Open Telekom Cloud traces) and service: how the "
        "operation is matched (exact, ignore-case, prefix), the rule, its category, severity and "
        "pack. `--format markdown` with the built-in packs generates docs/rules-coverage.md; "
        "`--check FILE` exits 1 when FILE is not what `--format markdown` would print.",
    )
    coverage.add_argument(
        "--format", choices=("text", "markdown", "json"), default="text", help="output form (default: text)"
    )
    coverage.add_argument(
        "--check", metavar="FILE", help="compare FILE with the markdown output instead of printing it"
    )
    _add_rule_options(coverage)
    coverage.set_defaults(func=cmd_coverage)


def _rules_config(args: argparse.Namespace) -> RulesConfig:
    if args.config:
        from daemon.config import load_config  # the CLI may run without a config at all

        base = load_config(args.config).rules
    else:
        base = RulesConfig()
    return base.model_copy(
        update={
            "builtin": base.builtin and not args.no_builtin,
            "files": [*base.files, *(Path(p) for p in args.rules)],
            "sigma": [*base.sigma, *(Path(p) for p in args.sigma)],
            "disable": [*base.disable, *args.disable],
        }
    )


def _engine(args: argparse.Namespace, err: IO[str]) -> RuleEngine | None:
    from daemon.config import ConfigError

    try:
        return RuleEngine(load_rules(_rules_config(args)), metrics=False)
    except RuleLoadError as exc:
        print(exc.render(), file=err)
    except ConfigError as exc:
        print(exc.render(), file=err)
    return None


def _read(name: str, stdin: IO[bytes]) -> bytes:
    data = stdin.read() if name == "-" else Path(name).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data


def cmd_match(
    args: argparse.Namespace,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    stdin: IO[bytes] | None = None,
) -> int:
    """Exit 0 when every input was read; 1 when a file or an item could not be (see stderr)."""
    out = out or sys.stdout
    err = err or sys.stderr
    stdin = stdin or sys.stdin.buffer
    engine = _engine(args, err)
    if engine is None:
        return 2
    decoder = Decoder(max_event_bytes=_CLI_MAX_EVENT_BYTES, source="cli")
    status = 0
    for name in args.files:
        try:
            body = _read(name, stdin)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            print(f"{name}: cannot read: {exc}", file=err)
            status = 1
            continue
        for item in decoder.decode(body):
            if not isinstance(item, Event):
                print(f"{name}: item {item.index}: refused: {item.message()}", file=err)
                status = 1
                continue
            matches = engine.match(item)
            line = {
                "id": item.canonical.get("id"),
                "operation": item.canonical.get("operation"),
                "matches": [m.brief() for m in matches],
            }
            out.write(orjson.dumps(line).decode() + "\n")
    return status


def cmd_list(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    out = out or sys.stdout
    engine = _engine(args, err or sys.stderr)
    if engine is None:
        return 2
    for rule in engine.rules:
        if args.json:
            doc = {**rule.match.to_dict(), "source": rule.source, "match": rule.pattern.source}
            out.write(orjson.dumps(doc).decode() + "\n")
        else:
            out.write(f"{rule.id}\t{rule.category}\t{rule.severity}\t{rule.source}\n")
    if not args.json:
        out.write(f"# {len(engine.rules)} rules\n")
    return 0


def cmd_test(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Exit 0 when every example behaves; 1 otherwise (and, with --strict, for untested rules)."""
    out = out or sys.stdout
    engine = _engine(args, err or sys.stderr)
    if engine is None:
        return 2
    report = run_examples(engine)
    for failure in report.failures:
        out.write(f"FAIL {failure.message()}\n")
    for rule_id in report.untested:
        out.write(
            f"{'FAIL' if args.strict else 'note'} rule {rule_id!r}: lacks a match or a no_match example\n"
        )
    failed = len(report.failures) + (len(report.untested) if args.strict else 0)
    out.write(
        f"{report.rules} rules, {report.examples} examples: "
        f"{'all passed' if not failed else f'{failed} failure(s)'}\n"
    )
    return 0 if not failed else 1


def cmd_import_sigma(
    args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None
) -> int:
    """Exit 0 when any rule compiled, 1 when none did, 2 for a missing path or a bad config."""
    from daemon.config import ConfigError, load_config
    from daemon.rules.loader import sigma_options
    from daemon.rules.sigma import compile_paths

    out = out or sys.stdout
    err = err or sys.stderr
    try:
        config = load_config(args.config).rules if args.config else RulesConfig()
    except ConfigError as exc:
        print(exc.render(), file=err)
        return 2
    paths = [Path(p) for p in args.paths]
    missing = [p for p in paths if not p.exists()]
    for path in missing:
        print(f"{path}: no such file or directory", file=err)
    if missing:
        return 2
    result = compile_paths(paths, sigma_options(config))
    for rule in result.rules:
        if args.json:
            doc = {"result": "compiled", **rule.match.to_dict(), "source": rule.source}
            out.write(orjson.dumps(doc).decode() + "\n")
        else:
            out.write(f"compiled {rule.id}\t{rule.category}\t{rule.severity}\t{rule.source}\n")
    for refusal in result.refused:
        if args.json:
            doc = {
                "result": "refused",
                "sigma_id": refusal.rule_id,
                "title": refusal.title,
                "source": refusal.source,
                "reason": refusal.reason,
            }
            out.write(orjson.dumps(doc).decode() + "\n")
        else:
            rule_id = refusal.rule_id or "-"
            out.write(f"refused {rule_id}\t{refusal.source}: {refusal.reason}\n")
    total = len(result.rules) + len(result.refused)
    summary = f"{len(result.rules)} compiled, {len(result.refused)} refused, {total} in all"
    if args.json:
        totals = {"compiled": len(result.rules), "refused": len(result.refused)}
        out.write(orjson.dumps(totals).decode() + "\n")
    else:
        out.write(f"# {summary}\n")
    return 0 if result.rules else 1


# --- coverage -----------------------------------------------------------------------------

CLOUD_AWS = "AWS"
CLOUD_CTS = "CTS"
CLOUD_OTHER = "other"
_CLOUD_TITLES = {
    CLOUD_AWS: "AWS (CloudTrail)",
    CLOUD_CTS: "CTS (Huawei Cloud and Open Telekom Cloud)",
    CLOUD_OTHER: "Other sources",
}
ANY = "(any)"
COVERAGE_DOC = "docs/rules-coverage.md"


@dataclass(frozen=True, order=True, slots=True)
class CoverageRow:
    """One operation of one service that one rule names."""

    cloud: str
    service: str
    operation: str
    how: str  # exact, ignore-case, prefix, or "other" for conditions the table cannot spell out
    rule: str
    category: str
    severity: str
    pack: str

    def to_dict(self) -> dict[str, str]:
        return {
            "cloud": self.cloud,
            "service": self.service,
            "operation": self.operation,
            "match": self.how,
            "rule": self.rule,
            "category": self.category,
            "severity": self.severity,
            "pack": self.pack,
        }


def _leaf_values(leaf: Any) -> list[tuple[str, str]]:
    """(value, how) for each alternative of a canonical leaf that names values."""
    out: list[tuple[str, str]] = []
    for alt in leaf if isinstance(leaf, list) else []:
        if isinstance(alt, str):
            out.append((alt, "exact"))
        elif isinstance(alt, dict) and len(alt) == 1:
            op, operand = next(iter(alt.items()))
            if op == "equals-ignore-case":
                names = operand if isinstance(operand, list) else [operand]
                out += [(n, "ignore-case") for n in names if isinstance(n, str)]
            elif op == "prefix" and isinstance(operand, str):
                out.append((f"{operand}*", "prefix"))
            elif op == "prefix" and isinstance(operand, dict):
                inner = operand.get("equals-ignore-case")
                if isinstance(inner, str):
                    out.append((f"{inner}*", "prefix, ignore-case"))
            elif op == "wildcard" and isinstance(operand, str):
                out.append((operand, "wildcard"))
    return out


def _pairs(pattern: Any, service: list[str], operation: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(service, operation, how) a pattern names, its ``$or`` branches included."""
    if not isinstance(pattern, dict):
        return []
    services = [v for v, _ in _leaf_values(pattern.get("service"))] or service
    operations = _leaf_values(pattern.get("operation")) or operation
    branches = [b for group in [pattern.get("$or")] if isinstance(group, list) for b in group]
    if branches:
        found = [p for b in branches for p in _pairs(b, services, operations)]
        if found:
            return found
    ops = operations or [(ANY, "other")]
    return [(s, o, how) for s in services or [ANY] for o, how in ops]


def _cloud(rule: Rule) -> str:
    source = rule.pattern.source
    formats = {v for v, _ in _leaf_values(source.get("format"))}
    if formats == {"cts"} or rule.id.startswith("cts."):
        return CLOUD_CTS
    if formats == {"cloudtrail"} or rule.id.startswith(("aws.", "cis.")):
        return CLOUD_AWS
    services = [v for v, _ in _leaf_values(source.get("service"))]
    if services and all(s.endswith(".amazonaws.com") for s in services):
        return CLOUD_AWS
    return CLOUD_OTHER


def coverage_rows(rules: Sequence[Rule]) -> list[CoverageRow]:
    """Every (service, operation) the rules name, sorted by cloud, service and operation.

    A rule without a service or an operation counts under "(any)": it reads other fields
    (an error code, a user type) that a per-operation table cannot show.
    """
    rows: set[CoverageRow] = set()
    for rule in rules:
        cloud = _cloud(rule)
        pack = rule.source.removeprefix("builtin:").split(" (", 1)[0]
        for service, operation, how in _pairs(rule.pattern.source, [], []):
            rows.add(
                CoverageRow(cloud, service, operation, how, rule.id, rule.category, rule.severity, pack)
            )
    order = {CLOUD_AWS: 0, CLOUD_CTS: 1, CLOUD_OTHER: 2}
    return sorted(rows, key=lambda r: (order[r.cloud], r.service.lower(), r.operation.lower(), r.rule))


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def render_coverage_markdown(rows: Sequence[CoverageRow]) -> str:
    out = [
        "# Rule coverage",
        "",
        "Generated by `trailkeeper rules coverage --format markdown` from the built-in packs; do not edit.",
        "The staleness test fails when a pack changes without this file being regenerated.",
        "",
        "Each row is an operation of a service that a rule names. *Match* says how the operation",
        "name is compared: `exact`, `ignore-case` (CTS operation names, whose case differs between",
        "Huawei Cloud, Open Telekom Cloud and their manuals), `prefix` or `wildcard`. `(any)` marks a",
        "rule that names no service or no operation (it reads an error code, a user type or the raw",
        "record instead).",
        "",
    ]
    clouds = [c for c in (CLOUD_AWS, CLOUD_CTS, CLOUD_OTHER) if any(r.cloud == c for r in rows)]
    out.append("| Cloud | Services | Operations | Rules |")
    out.append("| --- | ---: | ---: | ---: |")
    for cloud in clouds:
        mine = [r for r in rows if r.cloud == cloud]
        services = {r.service for r in mine}
        operations = {(r.service, r.operation.lower()) for r in mine}
        rules = {r.rule for r in mine}
        out.append(f"| {_CLOUD_TITLES[cloud]} | {len(services)} | {len(operations)} | {len(rules)} |")
    for cloud in clouds:
        out += ["", f"## {_CLOUD_TITLES[cloud]}"]
        mine = [r for r in rows if r.cloud == cloud]
        for service in sorted({r.service for r in mine}, key=str.lower):
            out += ["", f"### {_md(service)}", ""]
            out.append("| Operation | Match | Rule | Category | Severity | Pack |")
            out.append("| --- | --- | --- | --- | --- | --- |")
            for r in mine:
                if r.service == service:
                    out.append(
                        f"| {_md(r.operation)} | {r.how} | `{r.rule}` | {r.category} | {r.severity} "
                        f"| {_md(r.pack)} |"
                    )
    return "\n".join(out) + "\n"


def _render_coverage_text(rows: Sequence[CoverageRow]) -> str:
    header = ("CLOUD", "SERVICE", "OPERATION", "MATCH", "RULE", "CATEGORY", "SEVERITY", "PACK")
    table = [header] + [
        (r.cloud, r.service, r.operation, r.how, r.rule, r.category, r.severity, r.pack) for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in table
    ]
    services = {(r.cloud, r.service) for r in rows}
    lines.append(f"# {len(rows)} rows, {len(services)} services, {len({r.rule for r in rows})} rules")
    return "\n".join(lines) + "\n"


def cmd_coverage(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Exit 0 when printed (or, with --check, when the file is current); 1 when it is stale."""
    out = out or sys.stdout
    err = err or sys.stderr
    engine = _engine(args, err)
    if engine is None:
        return 2
    rows = coverage_rows(engine.rules)
    if args.check:
        path = Path(args.check)
        try:
            current = path.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"{path}: cannot read: {exc}", file=err)
            return 2
        if current != render_coverage_markdown(rows):
            print(f"{path}: stale; run: trailkeeper rules coverage --format markdown > {path}", file=err)
            return 1
        return 0
    if args.format == "markdown":
        out.write(render_coverage_markdown(rows))
    elif args.format == "json":
        for row in rows:
            out.write(orjson.dumps(row.to_dict()).decode() + "\n")
    else:
        out.write(_render_coverage_text(rows))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rules`` commands on their own (``python -m daemon.rules.cli rules ...``)."""
    parser = argparse.ArgumentParser(prog="trailkeeper")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())

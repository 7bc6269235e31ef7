"""``trailkeeper rules ...``: match files against the rules, list them, test their examples,
check a folder of Sigma rules."""

from __future__ import annotations

import argparse
import gzip
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from daemon.events import Decoder, Event
from daemon.rules.config import RulesConfig
from daemon.rules.engine import RuleEngine
from daemon.rules.examples import run_examples
from daemon.rules.loader import RuleLoadError, load_rules

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
    """Add ``rules match|list|test|import-sigma`` to the top-level CLI. Each sets ``func(args) -> int``."""
    rules = subparsers.add_parser("rules", help="classification rules: match, list, test, import-sigma")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``rules`` commands on their own (``python -m daemon.rules.cli rules ...``)."""
    parser = argparse.ArgumentParser(prog="trailkeeper")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())

"""Rule files: reading, validating, and assembling built-in packs with user files.

A rule file is YAML::

    rules:
      - id: my.iam-user-deleted          # letters, digits, . _ : -
        category: high_risk              # high_risk, cost_sensitive, service_sensitive, or your own
        severity: high                   # info, low, medium, high, critical
        description: An IAM user was deleted (internal policy SEC-12).
        tags: [iam]
        match:                           # an EventBridge-style pattern (see daemon.rules.pattern)
          service: [iam.amazonaws.com]
          operation: [DeleteUser]
        examples:                        # optional; run by `trailkeeper rules test`
          match: [{eventSource: iam.amazonaws.com, eventName: DeleteUser}]
          no_match: [{eventSource: iam.amazonaws.com, eventName: GetUser}]
    correlations: [...]                  # optional: see daemon.rules.correlation
    disable: [cis.4.3-root-usage]        # optional: rule or correlation ids to switch off

A top-level list is read as ``rules``. Built-in packs load first (sorted by file
name), then the built-in Sigma pack, then ``rules.files`` in order, then the
Sigma rules of ``rules.sigma`` (see ``daemon.rules.sigma``); a rule whose id is
already loaded replaces it in place. Every problem is reported with the file,
the rule id and the key at fault; nothing is loaded from a set of files with any
problem. A Sigma rule that cannot be compiled is left out and logged, or, with
``rules.sigma_strict``, is such a problem. The built-in Sigma pack is then
deduplicated against the other rules in force (``daemon.rules.sigma.dedupe``).
Correlations (``correlations:`` in rule files, ``correlation`` documents among the
Sigma files) merge the same way, by id, and the rules they name must be in force.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from daemon.rules.config import RulesConfig
from daemon.rules.correlation import Correlation, check_references, parse_correlation
from daemon.rules.model import SEVERITIES, Rule, header_problems
from daemon.rules.pattern import Pattern, PatternError
from daemon.rules.sigma import (
    BUILTIN_SOURCE,
    SigmaImport,
    SigmaOptions,
    compile_builtin,
    compile_paths,
    dedupe,
)
from daemon.rules.sigma_correlation import compile_correlation_paths
from daemon.rules.sigma_mapping import LEVELS
from daemon.telemetry import get_logger

log = get_logger("rules")

_RULE_KEYS: Final = ("id", "category", "severity", "description", "tags", "match", "examples")
_FILE_KEYS: Final = ("rules", "correlations", "disable", "pack", "description")
_PACKAGE: Final = "daemon.rules.packs"


class RuleLoadError(Exception):
    """Rules cannot be loaded. ``problems`` lists each one as ``file: rule 'id': key: why``."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))

    def render(self) -> str:
        lines = [f"rules: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


@dataclass(slots=True)
class RuleFile:
    """One parsed rule file."""

    source: str
    rules: list[Rule] = field(default_factory=list)
    disable: list[str] = field(default_factory=list)
    correlations: list[Correlation] = field(default_factory=list)


@dataclass(slots=True)
class Loaded:
    """Everything in force for a configuration: rules and correlations."""

    rules: list[Rule]
    correlations: list[Correlation]


def _where(source: str, rule_id: Any, index: int) -> str:
    if isinstance(rule_id, str) and rule_id:
        return f"{source}: rule {rule_id!r}"
    return f"{source}: rules[{index}]"


def _parse_rule(raw: Any, index: int, source: str, problems: list[str]) -> Rule | None:
    if not isinstance(raw, dict):
        problems.append(f"{source}: rules[{index}]: expected a mapping with id, category, ...")
        return None
    rule_id = raw.get("id")
    where = _where(source, rule_id, index)
    before = len(problems)
    problems += header_problems(raw, where, _RULE_KEYS)
    category = raw.get("category")
    severity = raw.get("severity")
    description = raw.get("description", "")
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        problems.append(f"{where}: tags: expected a list of strings")
    pattern: Pattern | None = None
    if "match" not in raw:
        problems.append(f"{where}: match: required (an event pattern)")
    else:
        try:
            pattern = Pattern(raw["match"], "match")
        except PatternError as exc:
            problems.append(f"{where}: {exc.path}: {exc.message}")
    examples = raw.get("examples", {})
    match_examples: list[dict[str, Any]] = []
    no_match_examples: list[dict[str, Any]] = []
    if not isinstance(examples, dict):
        problems.append(f"{where}: examples: expected a mapping with match and no_match")
    else:
        for key in examples:
            if key not in ("match", "no_match"):
                problems.append(f"{where}: examples.{key}: unknown key (known: match, no_match)")
        for key, bucket in (("match", match_examples), ("no_match", no_match_examples)):
            items = examples.get(key, [])
            if not isinstance(items, list):
                problems.append(f"{where}: examples.{key}: expected a list of events")
                continue
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    problems.append(f"{where}: examples.{key}[{i}]: expected an event (a mapping)")
                else:
                    bucket.append(item)
    if len(problems) > before or pattern is None:
        return None
    assert isinstance(rule_id, str) and isinstance(category, str) and isinstance(severity, str)
    return Rule(
        id=rule_id,
        category=category,
        severity=severity,
        description=description,
        pattern=pattern,
        tags=tuple(tags),
        source=source,
        examples_match=tuple(match_examples),
        examples_no_match=tuple(no_match_examples),
    )


def parse_rule_text(text: str, source: str) -> RuleFile:
    """Parse one rule file's text. Raises RuleLoadError listing every problem."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RuleLoadError([f"{source}: not valid YAML: {exc}"]) from exc
    if doc is None:
        return RuleFile(source)
    if isinstance(doc, list):
        doc = {"rules": doc}
    if not isinstance(doc, dict):
        raise RuleLoadError([f"{source}: expected a mapping with rules: [...] or a list of rules"])
    problems: list[str] = []
    for key in doc:
        if key not in _FILE_KEYS:
            problems.append(f"{source}: {key}: unknown key (known: {', '.join(_FILE_KEYS)})")
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list):
        problems.append(f"{source}: rules: expected a list of rules")
        raw_rules = []
    disable = doc.get("disable", [])
    if not isinstance(disable, list) or not all(isinstance(d, str) for d in disable):
        problems.append(f"{source}: disable: expected a list of rule ids")
        disable = []
    result = RuleFile(source, disable=list(disable))
    seen: set[str] = set()
    for i, raw in enumerate(raw_rules):
        rule = _parse_rule(raw, i, source, problems)
        if rule is None:
            continue
        if rule.id in seen:
            problems.append(f"{source}: rule {rule.id!r}: id: defined twice in this file")
            continue
        seen.add(rule.id)
        result.rules.append(rule)
    raw_correlations = doc.get("correlations", [])
    if not isinstance(raw_correlations, list):
        problems.append(f"{source}: correlations: expected a list of correlations")
        raw_correlations = []
    for i, raw in enumerate(raw_correlations):
        correlation = parse_correlation(raw, i, source, problems)
        if correlation is None:
            continue
        if correlation.id in seen:
            problems.append(
                f"{source}: correlation {correlation.id!r}: id: also a rule or correlation in this file"
            )
            continue
        seen.add(correlation.id)
        result.correlations.append(correlation)
    if problems:
        raise RuleLoadError(problems)
    return result


def load_rule_file(path: Path) -> RuleFile:
    """Read and parse one rule file. Raises RuleLoadError (unreadable file included)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RuleLoadError([f"{path}: cannot read the rule file: {reason}"]) from exc
    return parse_rule_text(text, str(path))


def builtin_pack_names() -> list[str]:
    """File names of the packs shipped with the package, in load order."""
    root = resources.files(_PACKAGE)
    return sorted(p.name for p in root.iterdir() if p.name.endswith((".yaml", ".yml")))


def load_builtin_packs() -> list[RuleFile]:
    root = resources.files(_PACKAGE)
    files = []
    for name in builtin_pack_names():
        text = root.joinpath(name).read_text(encoding="utf-8")
        files.append(parse_rule_text(text, f"builtin:{name}"))
    return files


def _expand(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
        else:
            out.append(path)
    return out


def assemble(
    files: Iterable[RuleFile], disable: Iterable[str] = (), *, disable_source: str = "rules.disable"
) -> list[Rule]:
    """Merge parsed files in order: later ids replace earlier ones, then disables apply.

    Raises RuleLoadError when two built-in packs share an id or a disable names no rule.
    """
    return assemble_all(files, disable, disable_source=disable_source).rules


def assemble_all(
    files: Iterable[RuleFile], disable: Iterable[str] = (), *, disable_source: str = "rules.disable"
) -> Loaded:
    """``assemble`` for rules and correlations alike; a correlation's rules must stay in force."""
    by_id: dict[str, Rule] = {}
    correlations: dict[str, Correlation] = {}
    problems: list[str] = []
    disables: list[tuple[str, str]] = []
    for rule_file in files:
        builtin = rule_file.source.startswith("builtin:")
        for rule in rule_file.rules:
            previous = by_id.get(rule.id)
            if previous is not None and builtin and previous.source.startswith("builtin:"):
                problems.append(
                    f"{rule_file.source}: rule {rule.id!r}: id: also defined in {previous.source}"
                )
                continue
            # dict assignment keeps the original position: an override stays where it was.
            by_id[rule.id] = rule
        for correlation in rule_file.correlations:
            earlier = correlations.get(correlation.id)
            if earlier is not None and builtin and earlier.source.startswith("builtin:"):
                problems.append(
                    f"{rule_file.source}: correlation {correlation.id!r}: id: "
                    f"also defined in {earlier.source}"
                )
                continue
            correlations[correlation.id] = correlation
        disables += [(rule_file.source, d) for d in rule_file.disable]
    disables += [(disable_source, d) for d in disable]
    for source, rule_id in disables:
        if rule_id not in by_id and rule_id not in correlations:
            problems.append(
                f"{source}: disable: no rule with id {rule_id!r} "
                "(see `trailkeeper rules list` for the ids in force)"
            )
    for cid in correlations.keys() & by_id.keys():
        problems.append(
            f"{correlations[cid].source}: correlation {cid!r}: id: also a rule ({by_id[cid].source})"
        )
    off = {d for _, d in disables}
    rules = [r for r in by_id.values() if r.id not in off]
    kept = [c for c in correlations.values() if c.id not in off]
    problems += check_references(kept, (r.id for r in rules))
    if problems:
        raise RuleLoadError(problems)
    return Loaded(rules, kept)


def sigma_options(config: RulesConfig) -> SigmaOptions:
    """How Sigma levels and tags map to severities and categories under ``config``."""
    return SigmaOptions(
        tag_categories=dict(config.sigma_categories),
        level_categories=dict(config.sigma_level_categories),
        default_category=config.sigma_default_category,
    )


def _user_sigma(config: RulesConfig, problems: list[str]) -> tuple[SigmaImport, list[Correlation]]:
    for i, path in enumerate(config.sigma):
        if not path.exists():
            problems.append(f"rules.sigma[{i}]: {path}: no such file or directory")
    paths = [p for p in config.sigma if p.exists()]
    result = compile_paths(paths, sigma_options(config))
    correlated = compile_correlation_paths(paths, sigma_options(config), (r.id for r in result.rules))
    # Correlation documents are compiled by daemon.rules.sigma_correlation, not refused.
    handled = {(r.source, r.rule_id) for r in correlated.handled}
    for refusal in [
        *correlated.refused,
        *(r for r in result.refused if (r.source, r.rule_id) not in handled),
    ]:
        if config.sigma_strict:
            problems.append(f"{refusal.message()} (rules.sigma_strict is on)")
        else:
            log.warning(
                "rules.sigma_refused",
                file=refusal.source,
                sigma_id=refusal.rule_id,
                title=refusal.title,
                reason=refusal.reason,
                action="the rule is left out; `trailkeeper rules import-sigma` reports every rule",
            )
    return result, correlated.correlations


def builtin_sigma_rules(config: RulesConfig, packs: list[RuleFile]) -> list[Rule]:
    """The built-in Sigma pack as loaded beside ``packs`` (the other built-in packs).

    Rules below ``builtin_sigma_min_level`` are left out, and the rest deduplicated
    against the built-in packs as shipped (``daemon.rules.sigma.dedupe``): what a
    user overrides or disables in those packs does not bring a Sigma twin back.
    """
    floor = SEVERITIES.index(LEVELS[config.builtin_sigma_min_level])
    rules = [r for r in compile_builtin(sigma_options(config)).rules if SEVERITIES.index(r.severity) >= floor]
    kept, _ = dedupe(rules, [r for f in packs for r in f.rules])
    return kept


def load_rules(config: RulesConfig) -> list[Rule]:
    """Every rule in force for a configuration. Blocking (reads files).

    Raises RuleLoadError listing every problem in every file; then nothing is loaded.
    """
    return load_all(config).rules


def load_all(config: RulesConfig) -> Loaded:
    """``load_rules`` with the correlations in force. Blocking; raises RuleLoadError."""
    problems: list[str] = []
    files: list[RuleFile] = []
    if config.builtin:
        try:
            packs = load_builtin_packs()
        except RuleLoadError as exc:
            problems += exc.problems
            packs = []
        files += packs
        if config.builtin_sigma and packs:
            # The vendored rules are fixed: the ones that cannot compile are listed in
            # the pack's NOTICE, not reported on every load.
            files.append(RuleFile(BUILTIN_SOURCE, builtin_sigma_rules(config, packs)))
    for path in _expand(config.files):
        try:
            files.append(load_rule_file(path))
        except RuleLoadError as exc:
            problems += exc.problems
    if config.sigma:
        imported, sigma_correlations = _user_sigma(config, problems)
        files.append(RuleFile("rules.sigma", imported.rules, correlations=sigma_correlations))
    if problems:
        raise RuleLoadError(problems)
    return assemble_all(files, config.disable)

"""Running the example events that rules carry (``trailkeeper rules test``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from daemon.events import Decoder, Event
from daemon.rules.engine import RuleEngine


@dataclass(frozen=True, slots=True)
class ExampleFailure:
    rule: str
    kind: str  # "match" (should have matched) or "no_match" (should not have)
    index: int
    detail: str

    def message(self) -> str:
        want = "should match but did not" if self.kind == "match" else "should not match but did"
        return f"rule {self.rule!r}: examples.{self.kind}[{self.index}] {want}: {self.detail}"


@dataclass(slots=True)
class ExampleReport:
    rules: int = 0
    examples: int = 0
    untested: list[str] = field(default_factory=list)  # rules lacking a match or a no_match example
    failures: list[ExampleFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _decode(example: dict[str, Any]) -> Event | str:
    items = Decoder(max_event_bytes=16 * 1024 * 1024, source="example").decode(orjson.dumps(example))
    if len(items) != 1:
        return f"the example decodes to {len(items)} events, expected one"
    item = items[0]
    if not isinstance(item, Event):
        return f"the example is not a valid event ({item.message()})"
    return item


def run_examples(engine: RuleEngine) -> ExampleReport:
    """Check every rule's examples through the whole engine (index included).

    An example must decode to exactly one event; a ``match`` example must be
    matched by its rule, a ``no_match`` example must not be.
    """
    report = ExampleReport(rules=len(engine.rules))
    for rule in engine.rules:
        if not rule.examples_match or not rule.examples_no_match:
            report.untested.append(rule.id)
        cases = (("match", rule.examples_match), ("no_match", rule.examples_no_match))
        for kind, examples in cases:
            for i, example in enumerate(examples):
                report.examples += 1
                event = _decode(example)
                if isinstance(event, str):
                    report.failures.append(ExampleFailure(rule.id, kind, i, event))
                    continue
                matched = {m.rule for m in engine.match_fields(event.canonical, event.parsed)}
                if (rule.id in matched) != (kind == "match"):
                    others = ", ".join(sorted(matched - {rule.id})) or "none"
                    report.failures.append(
                        ExampleFailure(
                            rule.id,
                            kind,
                            i,
                            f"operation {event.canonical.get('operation')!r}, "
                            f"service {event.canonical.get('service')!r}; "
                            f"other rules matched: {others}",
                        )
                    )
    return report

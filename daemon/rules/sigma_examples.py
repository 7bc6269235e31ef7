"""Example events for a compiled Sigma rule, derived from its detection.

For each way the condition can hold (one per selection or value of an ``or``,
with the ``not`` parts pushed down to their leaves), a positive event carries
values that satisfy it; negative events flip one requirement at a time (another
value, or the field left out). Every candidate is labelled by the compiled
pattern itself, so the examples a rule carries are right by construction; what
they prove is that the rule is reachable and not trivially true, and they are the
test events on which an independent Sigma evaluator must agree with the engine.
"""

from __future__ import annotations

import copy
import ipaddress
import itertools
import re
from collections.abc import Iterator
from typing import Any, Final

from daemon.events import FORMAT_CTS

ABSENT: Final = object()
_LIMIT: Final = 24  # combinations kept per node: conditions are small, lists can be long
_OTHER: Final = "tk-other-value"

Constraint = dict[tuple[str, ...], Any]  # record path -> value (or ABSENT)

_BASE_CLOUDTRAIL: Final[dict[str, Any]] = {
    "eventVersion": "1.08",
    "eventTime": "2024-05-01T12:00:00Z",
    "eventSource": "example.amazonaws.com",
    "eventName": "ExampleCall",
    "awsRegion": "eu-west-1",
    "sourceIPAddress": "198.51.100.7",
    "userAgent": "aws-cli/2.15.0",
    "userIdentity": {
        "type": "IAMUser",
        "arn": "arn:aws:iam::123456789012:user/alice",
        "accountId": "123456789012",
        "userName": "alice",
    },
    "eventType": "AwsApiCall",
    "recipientAccountId": "123456789012",
}
_BASE_CTS: Final[dict[str, Any]] = {
    "trace_id": "b7c3b8f0-0000-4000-8000-000000000001",
    "trace_name": "exampleCall",
    "trace_rating": "normal",
    "trace_type": "ConsoleAction",
    "service_type": "EXAMPLE",
    "time": 1714564800000,
    "user": {"name": "alice", "type": "User", "domain": {"name": "d", "id": "d0"}},
    "source_ip": "198.51.100.7",
    "code": "200",
}


def _regex_witness(pattern: str) -> str | None:
    """A string the regular expression finds, for the simple forms rules use."""
    body = re.sub(r"^\(\?[imsx]+\)", "", pattern)
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch in "^$":
            i += 1
            continue
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            out.append({"d": "7", "w": "a", "s": " "}.get(nxt, nxt))
            i += 2
        elif ch == ".":
            out.append("a")
            i += 1
        elif ch in "+":
            i += 1
        elif ch in "*?":
            if out:
                out.pop()
            i += 1
        elif ch == "[":
            end = body.find("]", i)
            if end < 0:
                return None
            inner = body[i + 1 : end].lstrip("^")
            out.append(inner[0] if inner and inner[0] not in "\\-" else "a")
            i = end + 1
        elif ch in "(|){}":
            return None
        else:
            out.append(ch)
            i += 1
    text = "".join(out)
    try:
        return text if re.search(pattern, text) else None
    except re.error:
        return None


def _witness(alt: Any) -> Any:
    """A value that satisfies one leaf alternative (None when none can be built)."""
    if isinstance(alt, str):
        return alt
    if not isinstance(alt, dict) or len(alt) != 1:
        return None
    op, operand = next(iter(alt.items()))
    text = operand["equals-ignore-case"] if isinstance(operand, dict) else operand
    if op == "equals-ignore-case":
        return operand
    if op == "prefix":
        return f"{text}-tk"
    if op == "suffix":
        return f"tk-{text}"
    if op == "contains":
        return f"tk-{text}-tk"
    if op == "exists":
        return "present" if operand else ABSENT
    if op == "cidr":
        network = ipaddress.ip_network(operand, strict=False)
        return str(next(iter(network.hosts()), network.network_address))
    if op == "regex":
        return _regex_witness(operand)
    return None


def _leaf_paths(node: Any, fmt: str) -> tuple[str, ...]:
    if node.canonical is None or node.path:
        return tuple(node.path)
    names = {"service": "eventSource", "operation": "eventName"}
    if fmt == FORMAT_CTS:
        names = {"service": "service_type", "operation": "trace_name"}
    return (names[node.canonical],)


def _product(options: list[list[Constraint]]) -> list[Constraint]:
    out: list[Constraint] = []
    for combo in itertools.product(*options):
        merged: Constraint = {}
        for part in combo:
            for path, value in part.items():
                known = merged.get(path)
                # Two requirements on one field (|all): one text that holds both.
                if isinstance(known, str) and isinstance(value, str) and known != value:
                    value = f"{known} {value}"
                merged[path] = value
        out.append(merged)
        if len(out) >= _LIMIT:
            break
    return out


def _ways(node: Any, fmt: str, want: bool) -> list[Constraint]:
    """Constraint sets under which ``node`` evaluates to ``want``."""
    from daemon.rules.sigma import _Bool, _Leaf

    if isinstance(node, _Leaf):
        path = _leaf_paths(node, fmt)
        if want:
            values = [_witness(a) for a in node.alts]
            return [{path: v} for v in values if v is not None][:_LIMIT]
        # Flipped: another value, and the field left out.
        return [{path: _OTHER}, {path: ABSENT}]
    assert isinstance(node, _Bool)
    if node.op == "not":
        return _ways(node.args[0], fmt, not want)
    children = [_ways(a, fmt, want) for a in node.args]
    if (node.op == "and") == want:
        return _product(children)
    return [c for child in children for c in child][:_LIMIT]


def _apply(base: dict[str, Any], constraint: Constraint) -> dict[str, Any]:
    event = copy.deepcopy(base)
    for path, value in constraint.items():
        target = event
        for key in path[:-1]:
            nxt = target.get(key)
            if not isinstance(nxt, dict):
                if value is ABSENT:
                    target = {}
                    break
                nxt = {}
                target[key] = nxt
            target = nxt
        if value is ABSENT:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = value
    return event


def candidate_events(tree: Any, fmt: str) -> Iterator[dict[str, Any]]:
    """Records that should match, then records that should not (unlabelled; deduplicated)."""
    base = _BASE_CTS if fmt == FORMAT_CTS else _BASE_CLOUDTRAIL
    identity = ("service_type", "trace_name") if fmt == FORMAT_CTS else ("eventSource", "eventName")
    for event in _candidates(base, tree, fmt):
        # Without these a record is refused at ingest: never an event a rule sees.
        if all(isinstance(event.get(k), str) and event[k] for k in identity):
            yield event


def _candidates(base: dict[str, Any], tree: Any, fmt: str) -> Iterator[dict[str, Any]]:
    seen: set[str] = set()
    positives = _ways(tree, fmt, True)
    for constraint in positives:
        for event in _events_for(base, constraint):
            key = repr(sorted(event.items(), key=lambda kv: kv[0]))
            if key not in seen:
                seen.add(key)
                yield event
    for constraint in _ways(tree, fmt, False):
        event = _apply(base, constraint)
        key = repr(sorted(event.items(), key=lambda kv: kv[0]))
        if key not in seen:
            seen.add(key)
            yield event


def _events_for(base: dict[str, Any], constraint: Constraint) -> Iterator[dict[str, Any]]:
    yield _apply(base, constraint)
    # Sigma compares strings without regard to case: the same values, case swapped.
    swapped = {p: v.swapcase() if isinstance(v, str) else v for p, v in constraint.items()}
    if swapped != constraint:
        yield _apply(base, swapped)
    # The same event with one requirement flipped: a near miss.
    for path in constraint:
        flipped = dict(constraint)
        flipped[path] = ABSENT if constraint[path] is not ABSENT else _OTHER
        yield _apply(base, flipped)

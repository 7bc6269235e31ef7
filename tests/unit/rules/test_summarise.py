"""One category and severity per index row, from every rule an event matched."""

from __future__ import annotations

from daemon.rules.model import Match, summarise


def _m(category: str, severity: str) -> Match:
    return Match(f"r.{category}.{severity}", category, severity, "")


def test_a_risk_match_keeps_the_event_in_the_risk_category_even_when_a_cost_rule_is_more_severe() -> None:
    # A refused RunInstances of a large instance: cis.4.1 (high_risk, medium) and a cost rule (high).
    matches = [_m("high_risk", "medium"), _m("cost_sensitive", "medium"), _m("cost_sensitive", "high")]
    assert summarise(matches) == ("high_risk", "high")


def test_key_categories_rank_risk_then_cost_then_service() -> None:
    assert summarise([_m("service_sensitive", "critical"), _m("cost_sensitive", "low")]) == (
        "cost_sensitive",
        "critical",
    )


def test_site_categories_follow_the_most_severe_match() -> None:
    assert summarise([_m("site_a", "low"), _m("site_b", "high")]) == ("site_b", "high")
    assert summarise([_m("site_a", "low"), _m("high_risk", "info")]) == ("high_risk", "low")

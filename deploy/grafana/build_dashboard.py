#!/usr/bin/env python3
# ruff: noqa: E501  (PromQL expressions read better unbroken)
"""Write deploy/grafana/dashboards/trailkeeper.json (the dashboard is data; this keeps its
panels readable and reviewable). ``--check`` exits 1 when the committed JSON is stale."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

TARGET = Path(__file__).resolve().parent / "dashboards" / "trailkeeper.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'

# (title, unit, [(legend, expr)]) per row.
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    ("Ingest", [
        ("Events accepted / s", "ops", [
            ("{{source}}", f"sum by (source) (rate(trailkeeper_events_accepted_total{{{SEL}}}[$__rate_interval]))"),
        ]),
        ("Events rejected / s", "ops", [
            ("{{source}} {{reason}}",
             f"sum by (source, reason) (rate(trailkeeper_events_rejected_total{{{SEL}}}[$__rate_interval]))"),
        ]),
        ("Pushback (journal full) / s", "ops", [
            ("{{source}}", f"sum by (source) (rate(trailkeeper_ingest_pushback_total{{{SEL}}}[$__rate_interval]))"),
        ]),
        ("HTTP requests / s", "reqps", [
            ("{{route}} {{code}}",
             f"sum by (route, code) (rate(trailkeeper_http_requests_total{{{SEL}}}[$__rate_interval]))"),
        ]),
    ]),
    ("Journal", [
        ("Journal use of budget", "percentunit", [
            ("{{instance}}", f"trailkeeper_journal_bytes{{{SEL}}} / trailkeeper_journal_budget_bytes{{{SEL}}}"),
        ]),
        ("Consumer lag (entries)", "short", [
            ("{{cursor}}", f"max by (cursor) (trailkeeper_journal_lag_entries{{{SEL}}})"),
        ]),
        ("fsync latency p99", "s", [
            ("p99", "histogram_quantile(0.99, sum by (le) "
                    f"(rate(trailkeeper_journal_fsync_seconds_bucket{{{SEL}}}[$__rate_interval])))"),
        ]),
        ("Events per group commit (avg)", "short", [
            ("avg", f"sum(rate(trailkeeper_journal_group_entries_sum{{{SEL}}}[$__rate_interval])) / "
                    f"sum(rate(trailkeeper_journal_group_entries_count{{{SEL}}}[$__rate_interval]))"),
        ]),
    ]),
    ("Archive", [
        ("Files stored / s", "ops", [
            ("{{tracker}}", f"sum by (tracker) (rate(trailkeeper_archive_files_total{{{SEL}}}[$__rate_interval]))"),
        ]),
        ("Archived bytes / s", "Bps", [
            ("{{tracker}}", f"sum by (tracker) (rate(trailkeeper_archive_bytes_total{{{SEL}}}[$__rate_interval]))"),
        ]),
        ("Store failures / s", "ops", [
            ("{{tracker}} {{reason}}",
             f"sum by (tracker, reason) (rate(trailkeeper_archive_failures_total{{{SEL}}}[$__rate_interval]))"),
        ]),
        ("Ingest to archive latency", "s", [
            ("p50 {{tracker}}", "histogram_quantile(0.5, sum by (tracker, le) "
                                f"(rate(trailkeeper_ingest_to_archive_seconds_bucket{{{SEL}}}[$__rate_interval])))"),
            ("p99 {{tracker}}", "histogram_quantile(0.99, sum by (tracker, le) "
                                f"(rate(trailkeeper_ingest_to_archive_seconds_bucket{{{SEL}}}[$__rate_interval])))"),
        ]),
        ("Since last stored file", "s", [
            ("{{tracker}}", f"time() - max by (tracker) (trailkeeper_archive_last_success_timestamp_seconds{{{SEL}}})"),
        ]),
        ("Events in open files", "short", [
            ("{{tracker}}", f"sum by (tracker) (trailkeeper_archive_open_events{{{SEL}}})"),
        ]),
    ]),
    ("Notifications", [
        ("Delivered / s", "ops", [
            ("{{topic}}/{{subscription}} {{protocol}}",
             "sum by (topic, subscription, protocol) "
             f"(rate(trailkeeper_notify_sent_total{{{SEL}}}[$__rate_interval]))"),
        ]),
        ("Failed attempts / s", "ops", [
            ("{{topic}}/{{subscription}} {{reason}}",
             "sum by (topic, subscription, reason) "
             f"(rate(trailkeeper_notify_failed_total{{{SEL}}}[$__rate_interval]))"),
        ]),
        ("Outbox depth", "short", [
            ("{{topic}}/{{subscription}}",
             f"max by (topic, subscription) (trailkeeper_notify_queue_depth{{{SEL}}})"),
        ]),
        ("In the dead-letter store", "short", [
            ("{{topic}}/{{subscription}}",
             f"max by (topic, subscription) (trailkeeper_notify_dead_letters{{{SEL}}})"),
        ]),
        ("Dead-lettered (interval)", "short", [
            ("{{topic}}/{{subscription}}",
             "sum by (topic, subscription) "
             f"(increase(trailkeeper_notify_dead_lettered_total{{{SEL}}}[$__range]))"),
        ]),
    ]),
    ("Integrity", [
        ("Since last digest", "s", [
            ("{{tracker}}",
             f"time() - max by (tracker) (trailkeeper_digest_last_success_timestamp_seconds{{{SEL}}})"),
        ]),
        ("Validation findings (interval)", "short", [
            ("{{tracker}} {{finding}}",
             f"sum by (tracker, finding) (increase(trailkeeper_validate_findings_total{{{SEL}}}[$__range]))"),
        ]),
        ("Quarantined items / s", "ops", [
            ("stored", f"sum(rate(trailkeeper_quarantine_items_stored_total{{{SEL}}}[$__rate_interval]))"),
        ]),
    ]),
]


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid = 1
    y = 0
    for row_title, graphs in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        width = 24 // len(graphs) if len(graphs) <= 4 else 8
        for i, (title, unit, targets) in enumerate(graphs):
            panels.append({
                "id": pid,
                "type": "timeseries",
                "title": title,
                "datasource": DS,
                "gridPos": {"h": 8, "w": width, "x": (i * width) % 24, "y": y + 8 * ((i * width) // 24)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                            "tooltip": {"mode": "multi"}},
                "targets": [{"refId": chr(ord("A") + j), "datasource": DS, "expr": expr,
                             "legendFormat": legend} for j, (legend, expr) in enumerate(targets)],
            })
            pid += 1
        y += 8 * (((len(graphs) - 1) * width) // 24 + 1)
    return {
        "uid": "trailkeeper",
        "title": "trailkeeper",
        "tags": ["trailkeeper", "audit"],
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "utc",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
            {"name": "instance", "type": "query", "datasource": DS, "label": "Instance",
             "query": {"query": "label_values(trailkeeper_journal_end_offset, instance)", "refId": "I"},
             "definition": "label_values(trailkeeper_journal_end_offset, instance)",
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2},
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is stale: run python deploy/grafana/build_dashboard.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

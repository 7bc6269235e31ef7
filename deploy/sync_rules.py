#!/usr/bin/env python3
"""Write deploy/k8s/prometheusrule.yaml from deploy/prometheus/alerts.yaml.

The Prometheus rule file is the one source of truth for alerts; the Kubernetes
PrometheusRule carries exactly the same groups. Run this after editing the rules;
``--check`` exits 1 (and writes nothing) when the committed manifest is stale.

The ``groups:`` block is copied as text, indented under ``spec:``, so comments and
formatting survive; indenting every line by the same amount keeps YAML semantics
(block scalars detect their indentation), and the result is checked by parsing both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "prometheus" / "alerts.yaml"
TARGET = HERE / "k8s" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/alerts.yaml by deploy/sync_rules.py: do not edit here.
# Picked up by the Prometheus Operator; the release label matches kube-prometheus-stack's
# default ruleSelector: adjust it to yours.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: trailkeeper
  namespace: trailkeeper
  labels:
    app.kubernetes.io/name: trailkeeper
    app.kubernetes.io/component: alerts
    release: prometheus
spec:
"""


def render(source_text: str) -> str:
    """The manifest for ``source_text``; raises ValueError if it has no top-level groups."""
    lines = source_text.splitlines()
    try:
        start = lines.index("groups:")
    except ValueError:
        raise ValueError("alerts.yaml has no top-level 'groups:' line") from None
    body = "\n".join(("  " + line) if line.strip() else "" for line in lines[start:])
    out = HEADER + body + "\n"
    if yaml.safe_load(out)["spec"]["groups"] != yaml.safe_load(source_text)["groups"]:
        raise ValueError("indenting the rule groups changed their meaning")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the manifest is stale")
    args = parser.parse_args(argv)
    wanted = render(SOURCE.read_text(encoding="utf-8"))
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
    if args.check:
        if current != wanted:
            print(f"{TARGET} is stale: run python deploy/sync_rules.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Metric names, declared once, and logging setup.

Telemetry contract: every component counts what it received, sent and failed
(failures by a fixed set of reasons), and reports lag and latency. Labels carry
component names (tracker, store, source, cursor, reason), never user, resource
or event values, so cardinality stays bounded.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

# --- ingest ---------------------------------------------------------------------------------
EVENTS_RECEIVED = Counter(
    "trailkeeper_events_received_total",
    "Input items received (events and rejected items), by source.",
    ["source"],
    registry=REGISTRY,
)
EVENTS_ACCEPTED = Counter(
    "trailkeeper_events_accepted_total",
    "Events made durable in the journal, by source.",
    ["source"],
    registry=REGISTRY,
)
EVENTS_REJECTED = Counter(
    "trailkeeper_events_rejected_total",
    "Input items refused and quarantined, by source and reason.",
    ["source", "reason"],
    registry=REGISTRY,
)
INGEST_PUSHBACK = Counter(
    "trailkeeper_ingest_pushback_total",
    "Requests or pulls refused because the journal is at its disk budget.",
    ["source"],
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "trailkeeper_http_requests_total",
    "HTTP API requests by route and status code.",
    ["route", "code"],
    registry=REGISTRY,
)

# --- journal --------------------------------------------------------------------------------
JOURNAL_BYTES = Gauge(
    "trailkeeper_journal_bytes", "Bytes held by journal segments on disk.", registry=REGISTRY
)
JOURNAL_BUDGET_BYTES = Gauge(
    "trailkeeper_journal_budget_bytes", "The journal's disk budget (journal.max_bytes).", registry=REGISTRY
)
JOURNAL_END_OFFSET = Gauge(
    "trailkeeper_journal_end_offset", "Offset after the last durable journal entry.", registry=REGISTRY
)
JOURNAL_LAG = Gauge(
    "trailkeeper_journal_lag_entries",
    "Entries between a consumer's committed cursor and the journal's end.",
    ["cursor"],
    registry=REGISTRY,
)
JOURNAL_FSYNC_SECONDS = Histogram(
    "trailkeeper_journal_fsync_seconds",
    "Time to write and fsync one group commit.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)
JOURNAL_GROUP_ENTRIES = Histogram(
    "trailkeeper_journal_group_entries",
    "Entries made durable by one fsync.",
    buckets=(1, 10, 100, 1000, 10000, 100000),
    registry=REGISTRY,
)

# --- archive --------------------------------------------------------------------------------
ARCHIVE_FILES = Counter(
    "trailkeeper_archive_files_total", "Files stored, by tracker.", ["tracker"], registry=REGISTRY
)
ARCHIVE_EVENTS = Counter(
    "trailkeeper_archive_events_total", "Events stored in files, by tracker.", ["tracker"], registry=REGISTRY
)
ARCHIVE_BYTES = Counter(
    "trailkeeper_archive_bytes_total",
    "Compressed bytes stored, by tracker.",
    ["tracker"],
    registry=REGISTRY,
)
ARCHIVE_FAILURES = Counter(
    "trailkeeper_archive_failures_total",
    "Failed store writes, by tracker and reason (unavailable, permanent, conflict).",
    ["tracker", "reason"],
    registry=REGISTRY,
)
ARCHIVE_LATENCY = Histogram(
    "trailkeeper_ingest_to_archive_seconds",
    "Time from ingest to the file holding the event being stored.",
    ["tracker"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
ARCHIVE_OPEN_EVENTS = Gauge(
    "trailkeeper_archive_open_events",
    "Events batched in files not yet closed, by tracker.",
    ["tracker"],
    registry=REGISTRY,
)
ARCHIVE_LAST_SUCCESS = Gauge(
    "trailkeeper_archive_last_success_timestamp_seconds",
    "When a tracker last stored a file (Unix time).",
    ["tracker"],
    registry=REGISTRY,
)

# --- quarantine -----------------------------------------------------------------------------
QUARANTINE_STORED = Counter(
    "trailkeeper_quarantine_items_stored_total",
    "Rejected items written to the quarantine store.",
    registry=REGISTRY,
)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """structlog to stderr: JSON lines in production, one event name per line."""
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(component: str) -> Any:
    return structlog.get_logger(component=component)

# --- queue sources --------------------------------------------------------------------------
SOURCE_MESSAGES_RECEIVED = Counter(
    "trailkeeper_source_messages_received_total",
    "Broker messages received by a queue source (redeliveries included).",
    ["source"],
    registry=REGISTRY,
)
SOURCE_MESSAGES_ACKED = Counter(
    "trailkeeper_source_messages_acked_total",
    "Broker messages acknowledged after their content was durable in the journal.",
    ["source"],
    registry=REGISTRY,
)
SOURCE_MESSAGES_QUARANTINED = Counter(
    "trailkeeper_source_messages_quarantined_total",
    "Broker messages with content quarantined (whole or in part), by the first item's reason.",
    ["source", "reason"],
    registry=REGISTRY,
)
SOURCE_MESSAGES_REDELIVERED = Counter(
    "trailkeeper_source_messages_redelivered_total",
    "Broker messages the broker marked as delivered before.",
    ["source"],
    registry=REGISTRY,
)
SOURCE_DUPLICATES_DROPPED = Counter(
    "trailkeeper_source_duplicates_dropped_total",
    "Items of redelivered messages already durable in the journal, not appended again.",
    ["source"],
    registry=REGISTRY,
)
SOURCE_ACK_FAILURES = Counter(
    "trailkeeper_source_ack_failures_total",
    "Acknowledgements the broker refused or that could not be sent (the message will be redelivered).",
    ["source"],
    registry=REGISTRY,
)
SOURCE_RECONNECTS = Counter(
    "trailkeeper_source_reconnects_total",
    "Times a queue source lost or could not get its broker connection.",
    ["source"],
    registry=REGISTRY,
)
SOURCE_CONNECTED = Gauge(
    "trailkeeper_source_connected",
    "1 while a queue source is connected to its broker.",
    ["source"],
    registry=REGISTRY,
)
SOURCE_PAUSED = Gauge(
    "trailkeeper_source_paused",
    "1 while a queue source holds messages and pulls nothing because the journal is full.",
    ["source"],
    registry=REGISTRY,
)
SOURCE_CONSUMER_LAG = Gauge(
    "trailkeeper_source_consumer_lag_messages",
    "Messages waiting in the broker for this consumer, as the broker reports it.",
    ["source"],
    registry=REGISTRY,
)

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

# --- stores ---------------------------------------------------------------------------------
STORE_OPERATIONS = Counter(
    "trailkeeper_store_operations_total",
    "Store calls by store, operation (put, get, head, list, delete, check) and result "
    "(ok, unavailable, permanent, conflict, missing).",
    ["store", "operation", "result"],
    registry=REGISTRY,
)
STORE_SECONDS = Histogram(
    "trailkeeper_store_operation_seconds",
    "Time for one store call, retries included.",
    ["store", "operation"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)

# --- downstream health (what GET /healthz/downstream reports) -------------------------------
DOWNSTREAM_HEALTHY = Gauge(
    "trailkeeper_downstream_healthy",
    "1 while a component behind the journal works, 0 while it fails, by component (store, "
    "archive, index, source) and name; refreshed every few seconds.",
    ["component", "name"],
    registry=REGISTRY,
)

# --- retention ------------------------------------------------------------------------------
RETENTION_DELETED = Counter(
    "trailkeeper_retention_deleted_total",
    "Expired archive files deleted by the retention sweeper, by tracker.",
    ["tracker"],
    registry=REGISTRY,
)
RETENTION_FAILURES = Counter(
    "trailkeeper_retention_failures_total",
    "Retention rounds or deletions that failed, by tracker and reason (unavailable, permanent).",
    ["tracker", "reason"],
    registry=REGISTRY,
)
RETENTION_LAST_RUN = Gauge(
    "trailkeeper_retention_last_run_timestamp_seconds",
    "When a tracker's retention last completed a round (Unix time).",
    ["tracker"],
    registry=REGISTRY,
)

# --- backup ---------------------------------------------------------------------------------
BACKUP_PENDING_OBJECTS = Gauge(
    "trailkeeper_backup_pending_objects",
    "Objects in the source not yet copied and verified in the destination, by job.",
    ["job"],
    registry=REGISTRY,
)
BACKUP_PENDING_BYTES = Gauge(
    "trailkeeper_backup_pending_bytes",
    "Bytes in the source not yet copied and verified in the destination, by job.",
    ["job"],
    registry=REGISTRY,
)
BACKUP_COPIED_OBJECTS = Counter(
    "trailkeeper_backup_copied_objects_total",
    "Objects copied and verified by hash, by job.",
    ["job"],
    registry=REGISTRY,
)
BACKUP_COPIED_BYTES = Counter(
    "trailkeeper_backup_copied_bytes_total",
    "Bytes copied and verified by hash, by job.",
    ["job"],
    registry=REGISTRY,
)
BACKUP_REPAIRED = Counter(
    "trailkeeper_backup_repaired_total",
    "Copies found deleted or altered in the destination and written again, by job.",
    ["job"],
    registry=REGISTRY,
)
BACKUP_FAILURES = Counter(
    "trailkeeper_backup_failures_total",
    "Backup failures by job and reason (unavailable, permanent, verify, conflict, source_changed).",
    ["job", "reason"],
    registry=REGISTRY,
)
BACKUP_LAST_SUCCESS = Gauge(
    "trailkeeper_backup_last_success_timestamp_seconds",
    "When a backup job last finished a round with nothing pending (Unix time).",
    ["job"],
    registry=REGISTRY,
)

# --- integrity ------------------------------------------------------------------------------
DIGEST_LAST_SUCCESS = Gauge(
    "trailkeeper_digest_last_success_timestamp_seconds",
    "When a tracker's digest chain last advanced: a signed digest was stored (Unix time).",
    ["tracker"],
    registry=REGISTRY,
)
CHECKPOINT_PUBLISHED = Counter(
    "trailkeeper_checkpoint_published_total",
    "Checkpoints written to a store's _checkpoint/<writer> object, by tracker, store and result "
    "(ok, failed).",
    ["tracker", "store", "result"],
    registry=REGISTRY,
)
WITNESS_REQUESTS = Counter(
    "trailkeeper_witness_requests_total",
    "add-checkpoint requests to witnesses, by tracker, witness name and result "
    "(cosigned, conflict, refused, unavailable).",
    ["tracker", "witness", "result"],
    registry=REGISTRY,
)
WITNESS_LAST_COSIGNED = Gauge(
    "trailkeeper_witness_last_cosigned_timestamp_seconds",
    "When a witness last cosigned a tracker's checkpoint (Unix time).",
    ["tracker", "witness"],
    registry=REGISTRY,
)
WITNESS_MISSED_INTERVALS = Gauge(
    "trailkeeper_witness_missed_intervals",
    "Digest intervals in a row for which a witness gave no cosignature (0 when current).",
    ["tracker", "witness"],
    registry=REGISTRY,
)
VALIDATE_FINDINGS = Counter(
    "trailkeeper_validate_findings_total",
    "Problems found by validation runs, by tracker and finding "
    "(modified, missing, unlisted, moved, bad_signature, stale_tail).",
    ["tracker", "finding"],
    registry=REGISTRY,
)

# --- quarantine -----------------------------------------------------------------------------
QUARANTINE_STORED = Counter(
    "trailkeeper_quarantine_items_stored_total",
    "Rejected items written to the quarantine store.",
    registry=REGISTRY,
)


# --- rules ----------------------------------------------------------------------------------
# Rule ids and categories come from rule files, not from events, so they stay bounded.
RULE_MATCHES = Counter(
    "trailkeeper_rule_matches_total",
    "Events matched by a classification rule, by rule id and category.",
    ["rule", "category"],
    registry=REGISTRY,
)
RULE_MATCH_SECONDS = Histogram(
    "trailkeeper_rule_match_seconds",
    "Time to classify one event against every loaded rule.",
    buckets=(1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 1e-3, 1e-2),
    registry=REGISTRY,
)
RULES_LOADED = Gauge(
    "trailkeeper_rules_loaded",
    "Classification rules in force, after overrides and disables.",
    registry=REGISTRY,
)
RULES_RELOADS = Counter(
    "trailkeeper_rules_reloads_total",
    "Rule reloads by result (ok, failed); a failed reload keeps the rules in force.",
    ["result"],
    registry=REGISTRY,
)
CORRELATION_GROUPS_EVICTED = Counter(
    "trailkeeper_correlation_groups_evicted_total",
    "Correlation groups dropped, least recently used first, because a correlation reached "
    "its group limit (rules.correlation_max_groups), by correlation id.",
    ["rule"],
    registry=REGISTRY,
)
CORRELATION_STATE_GAPS = Counter(
    "trailkeeper_correlation_state_gaps_total",
    "Starts where a consumer's correlation state could not be rebuilt completely (events "
    "no longer in the journal), by consumer.",
    ["consumer"],
    registry=REGISTRY,
)


# --- notifications --------------------------------------------------------------------------
# Labels: topic, subscription and protocol are config names (bounded by the config); never
# subscriber or event values. By subscription, so a dead endpoint beside a healthy one in the
# same topic shows as what it is.
_SUB = ["topic", "subscription", "protocol"]
NOTIFY_SENT = Counter(
    "trailkeeper_notify_sent_total",
    "Notifications delivered, by topic, subscription and protocol.",
    _SUB,
    registry=REGISTRY,
)
NOTIFY_FAILED = Counter(
    "trailkeeper_notify_failed_total",
    "Failed delivery attempts, by topic, subscription, protocol and reason (connect, timeout, "
    "tls, http_4xx, http_5xx, throttled, rejected, smtp, sns).",
    [*_SUB, "reason"],
    registry=REGISTRY,
)
NOTIFY_RETRIED = Counter(
    "trailkeeper_notify_retried_total",
    "Delivery attempts that were retries, by topic, subscription and protocol.",
    _SUB,
    registry=REGISTRY,
)
NOTIFY_DEAD_LETTERED = Counter(
    "trailkeeper_notify_dead_lettered_total",
    "Notifications parked in the dead-letter store, by topic, subscription and protocol.",
    _SUB,
    registry=REGISTRY,
)
NOTIFY_DEAD_LETTERS = Gauge(
    "trailkeeper_notify_dead_letters",
    "Notifications in the dead-letter store now, by topic, subscription and protocol: read from "
    "the outbox at start and every second, so a restart, a replay or a purge shows at once.",
    _SUB,
    registry=REGISTRY,
)
NOTIFY_QUEUE_DEPTH = Gauge(
    "trailkeeper_notify_queue_depth",
    "Notifications waiting in the outbox (pending), by topic, subscription and protocol.",
    _SUB,
    registry=REGISTRY,
)
NOTIFY_LATENCY = Histogram(
    "trailkeeper_ingest_to_notify_seconds",
    "Time from ingest of the (first) event to delivery of its notification, by topic, "
    "subscription and protocol.",
    _SUB,
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)


# --- index and query API --------------------------------------------------------------------
INDEX_EVENTS = Counter(
    "trailkeeper_index_events_total",
    "Events newly written to the query index (repeats of indexed events are not counted).",
    registry=REGISTRY,
)
INDEX_FAILURES = Counter(
    "trailkeeper_index_failures_total",
    "Failed index operations, by operation (write, locations, prune).",
    ["operation"],
    registry=REGISTRY,
)
INDEX_PARKED = Counter(
    "trailkeeper_index_events_parked_total",
    "Events the query index could not store, parked in the quarantine with the reason so the index "
    "moves on (they stay in the journal and the archive), by reason (refused: the database refused "
    "the row; error: an unexpected failure writing it).",
    ["reason"],
    registry=REGISTRY,
)
INDEX_PRUNED = Counter(
    "trailkeeper_index_pruned_total",
    "Events removed from the query index by its retention.",
    registry=REGISTRY,
)
QUERY_SECONDS = Histogram(
    "trailkeeper_query_seconds",
    "Time to answer a query API request, by route.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
AUTH_DENIED = Counter(
    "trailkeeper_auth_denied_total",
    "Requests refused by access control, by reason (no_token, bad_token, role, tenant, rate_limited).",
    ["reason"],
    registry=REGISTRY,
)
AUDIT_EVENTS = Counter(
    "trailkeeper_audit_events_total",
    "Events trailkeeper recorded about its own API use, by outcome (recorded, failed).",
    ["outcome"],
    registry=REGISTRY,
)
AUTH_FAILURE_BUCKETS = Gauge(
    "trailkeeper_auth_failure_buckets",
    "Token buckets held for failed authentication (source addresses and unknown tokens).",
    registry=REGISTRY,
)
AUTH_FAILURE_BUCKETS_EVICTED = Counter(
    "trailkeeper_auth_failure_buckets_evicted_total",
    "Failed-authentication buckets dropped, least recently used first, at auth.failures.max_tracked.",
    registry=REGISTRY,
)
AUDIT_REFUSALS_SUMMARISED = Counter(
    "trailkeeper_audit_refusals_summarised_total",
    "Refused requests (401, 429) counted in a summary audit event instead of one event each, by kind.",
    ["kind"],
    registry=REGISTRY,
)
AUDIT_REFUSAL_WINDOWS = Gauge(
    "trailkeeper_audit_refusal_windows",
    "Open windows of refused requests waiting to be summarised in the audit trail.",
    registry=REGISTRY,
)


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # Resolve sys.stderr at each use, not once at configure time: a redirected or
    # replaced stderr (a supervisor, a test harness) must not leave a closed file behind.
    return structlog.PrintLogger(file=sys.stderr)


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
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )


# Libraries that log each retry, connection and signature at DEBUG/INFO through stdlib logging.
_CLI_QUIET_LOGGERS = ("botocore", "aiobotocore", "boto3", "s3transfer", "urllib3", "aiohttp", "asyncio")


def configure_cli_logging() -> None:
    """Logging for the one-shot commands (validate, send, query, ...): warnings and errors
    only, on stderr. Their output is the report on stdout and one error line on stderr;
    a retry inside a store call is no news to the operator running them."""
    configure_logging("warning", "console")
    logging.getLogger().setLevel(logging.WARNING)
    for name in _CLI_QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


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

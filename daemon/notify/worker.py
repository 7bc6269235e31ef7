"""The delivery worker of one subscription: drains its outbox, at least once.

Each subscription has its own worker and outbox, so a slow or dead endpoint
only ever delays itself. A message is retried with exponential backoff and full
jitter (tenacity), honouring Retry-After, until it is delivered, refused
permanently (4xx other than 408/429, bad credentials) or older than
``max_age``; then it is parked in the dead-letter store. Messages are marked
sent only after the endpoint accepted them: after a crash the unmarked ones are
sent again, with the same id.

Recovery is bounded: while a message waits for its retry, the endpoint is
probed every min(``max_backoff``, ``recovery_probe``) (a TCP connection when it
could not be reached, the attempt itself when it answered with an error), and a
successful probe ends the wait, so a long outage does not leave delivery
asleep for ``max_backoff`` after the endpoint is back.

The queue depth and dead-letter gauges are read from the outbox every
``IDLE_POLL`` seconds, whatever the worker is doing, so they stay true while it
waits out a retry and after another process replays or purges the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import Any, Protocol

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_random_exponential

from daemon import telemetry
from daemon.notify.base import REASON_CONNECT, REASON_MAX_AGE, DeliveryError, Sender
from daemon.notify.config import DeliveryConfig
from daemon.notify.outbox import Outbox, OutMessage
from daemon.telemetry import get_logger

log = get_logger("notify")

IDLE_POLL = 1.0  # how often an idle worker looks for messages replayed from the CLI; gauges too
PROBE_TIMEOUT = 5.0  # a TCP probe longer than this counts as failed
PRUNE_EVERY = 300.0
CONFIRM_RESEND = 3600.0


class _Stopping(Exception):
    """The worker was asked to stop while waiting."""


class Confirmable(Protocol):
    async def send_confirmation(self, token: str, confirm_url: str) -> None: ...


class TokenBucket:
    """Rate limit: ``rate`` messages per second on average, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def delay(self) -> float:
        """Take a token; return how long to wait before using it."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class _WaitRetryAfter:
    """Exponential backoff with full jitter, but never sooner than the endpoint's Retry-After."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.backoff = wait_random_exponential(multiplier=initial, max=maximum)
        self.initial = initial

    def __call__(self, state: RetryCallState) -> float:
        base = max(self.initial / 2, float(self.backoff(state)))
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, DeliveryError) and exc.retry_after is not None:
            return max(base, exc.retry_after)
        return base


class SubscriptionWorker:
    """Delivers one subscription's outbox. ``run`` until ``stop``."""

    def __init__(
        self,
        topic: str,
        name: str,
        protocol: str,
        outbox: Outbox,
        sender: Sender,
        delivery: DeliveryConfig,
        *,
        require_confirmation: bool = False,
        confirm_url: str | None = None,
        dedupe_window: float = 86400.0,
        probe_address: tuple[str, int] | None = None,
    ) -> None:
        """``probe_address`` (host, port) is where a TCP probe checks that an unreachable
        endpoint is back; None: every probe is the next attempt itself."""
        self.topic = topic
        self.name = name
        self.protocol = protocol
        self.outbox = outbox
        self.sender = sender
        self.delivery = delivery
        self.require_confirmation = require_confirmation
        self.confirm_url = confirm_url
        self.dedupe_window = dedupe_window
        self.probe_address = probe_address
        self.probe_every = min(delivery.max_backoff, delivery.recovery_probe)
        self.confirmed = not require_confirmation
        self._confirmed_evt = asyncio.Event()
        self._token: str | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._bucket = TokenBucket(delivery.rate_limit, delivery.burst) if delivery.rate_limit else None
        labels = {"topic": topic, "subscription": name, "protocol": protocol}
        self._labels = labels
        self._m_sent = telemetry.NOTIFY_SENT.labels(**labels)
        self._m_retried = telemetry.NOTIFY_RETRIED.labels(**labels)
        self._m_dead = telemetry.NOTIFY_DEAD_LETTERED.labels(**labels)
        self._m_depth = telemetry.NOTIFY_QUEUE_DEPTH.labels(**labels)
        self._m_latency = telemetry.NOTIFY_LATENCY.labels(**labels)
        self._m_dead_now = telemetry.NOTIFY_DEAD_LETTERS.labels(**labels)
        self.last_error: str | None = None
        self._last_exc: DeliveryError | None = None

    # --- control ----------------------------------------------------------------------------

    def wake(self) -> None:
        """New messages are durable in the outbox."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, unless asked to stop (then raise _Stopping: the message stays pending)."""
        if self._stopping.is_set():
            raise _Stopping()
        try:
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        except TimeoutError:
            return
        raise _Stopping()

    # --- confirmation -----------------------------------------------------------------------

    async def confirm(self, token: str) -> bool:
        """Confirm the subscription if ``token`` is the one sent. Idempotent."""
        expected = self._token or await self.outbox.get_meta("confirm_token")
        if not expected or not secrets.compare_digest(expected.encode(), token.encode()):
            return False
        if not self.confirmed:
            await self.outbox.set_meta("confirmed", str(time.time()))
            self.confirmed = True
            self._confirmed_evt.set()
            log.info("notify.subscription_confirmed", topic=self.topic, subscription=self.name)
        return True

    async def _await_confirmation(self) -> None:
        if await self.outbox.get_meta("confirmed"):
            self.confirmed = True
            return
        token = await self.outbox.get_meta("confirm_token")
        if token is None:
            token = secrets.token_urlsafe(32)
            await self.outbox.set_meta("confirm_token", token)
        self._token = token
        url = f"{self.confirm_url}?token={token}"
        sender: Any = self.sender
        delay = self.delivery.initial_backoff
        while not self.confirmed:
            try:
                await sender.send_confirmation(token, url)
                log.info("notify.confirmation_sent", topic=self.topic, subscription=self.name)
                wait = CONFIRM_RESEND
                delay = self.delivery.initial_backoff
            except DeliveryError as exc:
                self._failed(exc)
                wait = min(delay, self.probe_every)  # recovery is bounded here too
                delay = min(delay * 2, self.delivery.max_backoff)
            await self._update_depth()
            waiter = asyncio.create_task(self._confirmed_evt.wait())
            stopper = asyncio.create_task(self._stopping.wait())
            try:
                await asyncio.wait({waiter, stopper}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                stopper.cancel()
            if self._stopping.is_set():
                raise _Stopping()

    # --- delivery ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the outbox and set the gauges from it, so they are right from the start
        (a restart does not show an empty dead-letter store). ``run`` calls it too."""
        await self.outbox.open()
        await self._refresh_gauges()

    async def run(self) -> None:
        await self.open()
        gauges = asyncio.create_task(self._gauges_loop(), name=f"notify-gauges-{self.topic}-{self.name}")
        try:
            if self.require_confirmation:
                await self._await_confirmation()
            await self._loop()
        except _Stopping:
            pass
        finally:
            gauges.cancel()
            await asyncio.gather(gauges, return_exceptions=True)
            await self.sender.close()
            # A subscription removed by a reload must not linger at its last value (a
            # subscription kept is set again by its new worker within IDLE_POLL).
            for gauge in (telemetry.NOTIFY_QUEUE_DEPTH, telemetry.NOTIFY_DEAD_LETTERS):
                with contextlib.suppress(KeyError):
                    gauge.remove(*self._labels.values())

    async def _refresh_gauges(self) -> None:
        pending, dead = await self.outbox.backlog()
        self._m_depth.set(pending)
        self._m_dead_now.set(dead)

    async def _gauges_loop(self) -> None:
        while True:
            await asyncio.sleep(IDLE_POLL)
            try:
                await self._refresh_gauges()
            except Exception as exc:  # a gauge read must never stop delivery
                log.warning(
                    "notify.gauge_refresh_failed", topic=self.topic, subscription=self.name, error=str(exc)
                )

    # --- recovery ---------------------------------------------------------------------------

    async def _retry_sleep(self, seconds: float) -> None:
        """Wait ``seconds`` before a retry, probing the endpoint every ``probe_every``: a probe
        that succeeds ends the wait early (not before a Retry-After the endpoint asked for).
        Raises _Stopping when asked to stop."""
        now = time.monotonic()
        deadline = now + seconds
        exc = self._last_exc
        not_before = now + (exc.retry_after or 0.0) if exc is not None else now
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await self._sleep(min(remaining, self.probe_every))
            now = time.monotonic()
            if now >= deadline:
                return
            if now >= not_before and await self._probe():
                return

    async def _probe(self) -> bool:
        """Is the endpoint worth an attempt now? An endpoint that refused or dropped the
        connection gets a TCP connection (cheap, no request reaches the application); one that
        answered with an error can only be told by an attempt, so that probe is the attempt."""
        exc = self._last_exc
        if exc is None or exc.reason != REASON_CONNECT or self.probe_address is None:
            return True
        host, port = self.probe_address
        try:
            async with asyncio.timeout(min(PROBE_TIMEOUT, self.delivery.timeout)):
                _reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        log.info("notify.endpoint_reachable", topic=self.topic, subscription=self.name)
        return True

    async def _loop(self) -> None:
        last_prune = 0.0
        while not self._stopping.is_set():
            self._wake.clear()
            batch = await self.outbox.pending(0, 200)
            self._m_depth.set(len(batch) if len(batch) < 200 else (await self._depth()))
            for msg in batch:
                if self._stopping.is_set():
                    return
                if self._bucket is not None:
                    wait = self._bucket.delay()
                    if wait > 0:
                        await self._sleep(wait)
                await self._deliver(msg)
            if batch:
                await self._update_depth()
                continue
            if time.monotonic() - last_prune > PRUNE_EVERY:
                last_prune = time.monotonic()
                await self.outbox.prune(time.time() - self.dedupe_window)
            try:
                async with asyncio.timeout(IDLE_POLL):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _depth(self) -> int:
        return (await self.outbox.counts()).get("pending", 0)

    async def _update_depth(self) -> None:
        self._m_depth.set(await self._depth())

    def _failed(self, exc: DeliveryError) -> None:
        telemetry.NOTIFY_FAILED.labels(**self._labels, reason=exc.reason).inc()
        self._last_exc = exc
        if self.last_error is None:
            log.warning(
                "notify.delivery_failing",
                topic=self.topic,
                subscription=self.name,
                reason=exc.reason,
                error=exc.detail,
                retryable=exc.retryable,
            )
        self.last_error = exc.detail

    async def _deliver(self, msg: OutMessage) -> None:
        """Deliver one message or park it. Raises _Stopping (message stays pending)."""
        d = self.delivery
        attempts = msg.attempts

        def too_old(_state: RetryCallState) -> bool:
            return time.time() - msg.created >= d.max_age

        async def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            if isinstance(exc, DeliveryError):
                await self.outbox.mark_attempt(msg.seq, attempts, f"{exc.reason}: {exc.detail}")

        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, DeliveryError) and e.retryable),
            wait=_WaitRetryAfter(d.initial_backoff, d.max_backoff),
            stop=too_old,
            sleep=self._retry_sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if attempts > 0:
                        self._m_retried.inc()
                    attempts += 1
                    try:
                        async with asyncio.timeout(d.timeout + 5):
                            await self.sender.send(msg)
                    except TimeoutError as exc:
                        timed_out = DeliveryError("timeout", "the attempt timed out", retryable=True)
                        self._failed(timed_out)
                        raise timed_out from exc
                    except DeliveryError as exc:
                        self._failed(exc)
                        raise
        except DeliveryError as exc:
            reason = REASON_MAX_AGE if exc.retryable else exc.reason
            error = f"{reason}: {exc.detail}"
            await self.outbox.park(msg.seq, attempts, error)
            self._m_dead.inc()
            self._m_dead_now.inc()
            log.error(
                "notify.dead_lettered",
                topic=self.topic,
                subscription=self.name,
                id=msg.id,
                attempts=attempts,
                error=error,
                action="fix the endpoint, then run: trailkeeper notify dlq replay "
                f"--subscription {self.topic}/{self.name}",
            )
            return
        await self.outbox.mark_sent(msg.seq)
        self._m_sent.inc()
        self._m_latency.observe(max(0.0, time.time() - msg.ingest_ms / 1000))
        if self.last_error is not None:
            log.info("notify.delivery_recovered", topic=self.topic, subscription=self.name)
            self.last_error = None
            self._last_exc = None

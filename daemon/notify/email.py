"""Email over SMTP with aiosmtplib: implicit TLS, STARTTLS or plain, with optional AUTH.

The Message-ID is derived from the notification id, so a retried message is
recognisably the same message to mail clients and archives. The message is
plain text (no HTML part, so no HTML to escape); the subject and every header
taken from the event are one line without control characters, and bounded.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formatdate

import aiosmtplib

from daemon.notify.base import (
    REASON_CONNECT,
    REASON_SMTP,
    REASON_TIMEOUT,
    DeliveryError,
    ssl_context,
    text_of,
)
from daemon.notify.config import EmailSubscription
from daemon.notify.escape import sanitize
from daemon.notify.limits import EMAIL_BODY_BYTES, EMAIL_SUBJECT_CHARS, clip, utf8_len
from daemon.notify.outbox import OutMessage


def build_email(msg: OutMessage, cfg: EmailSubscription, topic: str) -> EmailMessage:
    title, text, doc = text_of(msg)
    mail = EmailMessage()
    mail["From"] = cfg.sender
    mail["To"] = ", ".join(cfg.to)
    # Header injection guard: a subject is one line (text_of), of a bounded length.
    mail["Subject"] = clip(title, EMAIL_SUBJECT_CHARS)
    mail["Date"] = formatdate(localtime=False)
    domain = cfg.sender.rpartition("@")[2] or "trailkeeper"
    mail["Message-ID"] = f"<{msg.id}@{domain}>"
    mail["X-Trailkeeper-Topic"] = topic
    event = doc.get("event") or {}
    if event.get("id"):
        # The id comes from the event: one line, no controls, bounded.
        mail["X-Trailkeeper-Event-Id"] = clip(sanitize(str(event["id"])), 200)
    mail.set_content(clip(text, EMAIL_BODY_BYTES, utf8_len) + "\n")
    return mail


class EmailSender:
    def __init__(self, topic: str, cfg: EmailSubscription, timeout: float) -> None:
        self.topic = topic
        self.cfg = cfg
        self.timeout = timeout
        self.ctx = ssl_context(cfg.verify_tls, cfg.ca_file) if cfg.security != "none" else None

    async def send(self, msg: OutMessage) -> None:
        cfg = self.cfg
        mail = build_email(msg, cfg, self.topic)
        try:
            await aiosmtplib.send(
                mail,
                hostname=cfg.host,
                port=cfg.port,
                username=cfg.username,
                password=cfg.password,
                use_tls=cfg.security == "tls",
                start_tls=cfg.security == "starttls",
                tls_context=self.ctx,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            retry = all(400 <= c < 500 for c in codes)
            raise DeliveryError(
                REASON_SMTP, f"SMTP {cfg.host}: recipients refused: {exc}", retryable=retry
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # 4xx is "try again later"; 5xx (auth failed, relay denied) needs an operator.
            raise DeliveryError(
                REASON_SMTP,
                f"SMTP {cfg.host}:{cfg.port} answered {exc.code} {exc.message}",
                retryable=400 <= exc.code < 500,
            ) from exc
        except aiosmtplib.SMTPTimeoutError as exc:
            raise DeliveryError(
                REASON_TIMEOUT, f"SMTP {cfg.host}:{cfg.port} timed out", retryable=True
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(
                REASON_CONNECT, f"SMTP {cfg.host}:{cfg.port} failed: {exc}", retryable=True
            ) from exc

    async def close(self) -> None:
        return None

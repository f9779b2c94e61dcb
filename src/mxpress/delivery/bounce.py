"""Delivery status notifications (RFC 3464) for recipients that failed for good, and
delay warnings (Action: delayed) for those still being tried.

A bounce goes to the original envelope sender from the null sender `<>`, so it can never
bounce back; it is never made for a message from `<>` nor for a bounce (RFC 5321 §6.1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import SMTP
from email.utils import format_datetime, formatdate, make_msgid


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    recipient: str
    status: str  # enhanced status code, e.g. "5.1.1" ("4.4.7" for an expired delay)
    diagnostic: str = ""  # the server's reply, "550 5.1.1 no such user", or our reason
    remote_mta: str = ""  # the server that answered, when one did
    action: str = "failed"  # or "delayed" for a warning
    last_attempt: float | None = None  # epoch seconds
    will_retry_until: float | None = None  # epoch seconds; for "delayed"


def should_bounce(sender: str, is_bounce: bool) -> bool:
    """Never bounce to the null sender, never bounce a bounce."""
    return bool(sender) and not is_bounce


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    original_data: bytes,
    failed: Sequence[FailedRecipient],
    arrival: float,
    envid: str | None = None,
) -> bytes:
    """The DSN message (wire bytes): a readable explanation, the machine-readable
    delivery-status part, and the original message's header section (RET=HDRS)."""
    action = "delayed" if all(f.action == "delayed" for f in failed) else "failed"
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"
    report["To"] = original_sender
    report["Subject"] = (
        "Delivery delayed: message not yet delivered"
        if action == "delayed"
        else "Undelivered Mail Returned to Sender"
    )
    report["Date"] = formatdate(localtime=True)
    report["Message-ID"] = make_msgid(domain=reporting_mta)
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834: no auto-reply loops

    lines = [
        f"This is the mail system at host {reporting_mta}.",
        "",
        "Your message could not be delivered to one or more recipients."
        if action == "failed"
        else "Your message has not been delivered yet; the system will keep trying.",
        "",
    ]
    for f in failed:
        lines.append(f"<{f.recipient}>: {f.diagnostic or f.status}")
    report.attach(_text("\n".join(lines) + "\n", "plain"))

    status = MIMEBase("message", "delivery-status")
    blocks: list[Message] = []
    per_message = Message()
    if envid:
        per_message["Original-Envelope-Id"] = envid
    per_message["Reporting-MTA"] = f"dns; {reporting_mta}"
    per_message["Arrival-Date"] = _date(arrival)
    blocks.append(per_message)
    for f in failed:
        block = Message()
        block["Final-Recipient"] = f"rfc822; {f.recipient}"
        block["Action"] = f.action
        block["Status"] = f.status
        if f.remote_mta:
            block["Remote-MTA"] = f"dns; {f.remote_mta}"
        if f.diagnostic:
            block["Diagnostic-Code"] = f"smtp; {_one_line(f.diagnostic)}"
        if f.last_attempt is not None:
            block["Last-Attempt-Date"] = _date(f.last_attempt)
        if f.will_retry_until is not None:
            block["Will-Retry-Until"] = _date(f.will_retry_until)
        blocks.append(block)
    status.set_payload(blocks)  # type: ignore[arg-type]
    report.attach(status)

    report.attach(_text(_header_section(original_data), "rfc822-headers"))
    return report.as_bytes(policy=SMTP)


def status_for(reply_code: int | None, enhanced: str | None, *, expired: bool) -> str:
    """The DSN Status: the server's enhanced code when it gave one, else from the class."""
    if enhanced:
        return enhanced
    if expired:
        return "4.4.7"  # delivery time expired (RFC 3463)
    if reply_code is not None and reply_code >= 500:
        return "5.0.0"
    return "4.0.0"


def _text(text: str, subtype: str) -> MIMEText:
    # 7bit when it can be (readable on the wire); UTF-8 only when the text needs it.
    return MIMEText(text, subtype, "us-ascii" if text.isascii() else "utf-8")


def _date(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, UTC))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _header_section(data: bytes) -> str:
    end = data.find(b"\r\n\r\n")
    head = data if end < 0 else data[: end + 2]
    return head.decode("utf-8", "replace")

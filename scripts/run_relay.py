"""`make run`: the mxpress relay with examples/dev.toml, plus a local sink to deliver to.

The sink (aiosmtpd on 127.0.0.1:2526) prints one line per message it receives, so a
message submitted over SMTP (port 2525) or HTTP (port 8025) can be seen arriving.
Ctrl-C (or SIGTERM) stops the relay gracefully.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from mxpress import app
from mxpress.config import load_settings
from mxpress.errors import MxpressError
from mxpress.relay import build_relay


class PrintingSink:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        subject = next(
            (
                line[9:].decode(errors="replace")
                for line in data.split(b"\r\n")
                if line.lower().startswith(b"subject: ")
            ),
            "",
        )
        print(
            f"sink: delivered from <{envelope.mail_from}> to {envelope.rcpt_tos}: "
            f"{subject!r} ({len(data)} bytes)",
            flush=True,
        )
        return "250 2.0.0 Ok: delivered to the dev sink"


def main() -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel("WARNING")  # the dev sink's per-command chatter
    config = Path(__file__).resolve().parent.parent / "examples" / "dev.toml"
    sink = Controller(PrintingSink(), hostname="127.0.0.1", port=2526)
    sink.start()
    try:
        settings = load_settings(config)
        relay = build_relay(settings)
        print(
            "mxpress relay: SMTP 127.0.0.1:2525, HTTP 127.0.0.1:8025 (API key: dev-key); "
            "delivering to the sink on 127.0.0.1:2526. Ctrl-C stops.",
            flush=True,
        )
        app.run(relay.serve())
    except (MxpressError, OSError) as exc:
        print(f"mxpress: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        sink.stop()


if __name__ == "__main__":
    main()

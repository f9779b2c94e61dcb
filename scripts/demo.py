"""`make run` until the relay exists: a real send to a local SMTP server.

Starts an aiosmtpd server on 127.0.0.1 that records what it receives, sends one message
with a Unicode subject through mxpress, then a pipelined stream of 200, and prints what
the server got and what each phase cost.
"""

from __future__ import annotations

import asyncio
import socket
import time
from email import message_from_bytes
from email.header import decode_header, make_header

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session

import mxpress


class Recorder:
    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: object, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 2.0.0 Ok: queued"


async def demo(port: int, recorder: Recorder) -> None:
    msg = mxpress.build_message(
        "demo@mxpress.test",
        ["alice@example.test", "bob@example.test"],
        subject="你好, mxpress — pipelined SMTP",
        text="Hello from mxpress.\n.\nA line with only a dot survived dot-stuffing.\n",
    )
    async with await mxpress.connect("127.0.0.1", port, tls="none", timeout=10) as session:
        result = await session.send(
            "demo@mxpress.test", ["alice@example.test", "bob@example.test"], mxpress.to_bytes(msg)
        )
        print(
            f"server capabilities: pipelining={session.capabilities.pipelining} "
            f"chunking={session.capabilities.chunking} smtputf8={session.capabilities.smtputf8}"
        )
        for rcpt in ("alice@example.test", "bob@example.test"):
            print(f"  {rcpt}: {result.reply_for(rcpt)}")
        phases = {**session.timings, **result.timings}
        print("  phases: " + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in phases.items()))

        body = b"Subject: stream\r\n\r\n" + (b"x" * 98 + b"\r\n") * 10
        stream = [("demo@mxpress.test", [f"user{i}@example.test"], body) for i in range(200)]
        start = time.perf_counter()
        results = await session.send_many(stream)
        elapsed = time.perf_counter() - start
        ok = sum(r.ok for r in results)
        mode = (
            "pipelined" if session.capabilities.pipelining else "lock-step (no PIPELINING offered)"
        )
        print(
            f"stream, {mode}: {ok}/{len(stream)} accepted in {elapsed * 1e3:.1f} ms "
            f"({len(stream) / elapsed:.0f} msg/s on one session)"
        )

    received = message_from_bytes(recorder.envelopes[0].original_content or b"")
    subject = str(make_header(decode_header(received["Subject"])))
    print(f"server received {len(recorder.envelopes)} messages; first subject: {subject}")
    assert len(recorder.envelopes) == 201, "the server did not receive every message"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> None:
    recorder = Recorder()
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        print(f"local SMTP server (aiosmtpd) on 127.0.0.1:{port}")
        asyncio.run(demo(port, recorder))
    finally:
        controller.stop()


if __name__ == "__main__":
    main()

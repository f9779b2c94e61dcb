"""`mxpress queue ...`: look at and manage the durable queue, like mailq and postsuper.

Works against every worker's queue file in DATA_DIR (queue.sqlite3, queue.1.sqlite3, ...;
see queue/sharded.py) while the server runs: this process opens the same files (WAL;
writes wait for the owning worker's write lock up to the busy timeout). `ls` merges them
in arrival order; the other commands find a message in whichever file holds it. Exit
codes: 0 done, 1 failed (no queue file, unknown id, wrong state), 2 usage.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from mxpress.errors import QueueError
from mxpress.queue import (
    MessageState,
    QueuedMessage,
    QueueFilter,
    RecipientState,
    RecipientStatus,
)
from mxpress.queue.sharded import ShardedQueue

T = TypeVar("T")

_STATES = ["queued", "active", "held", "done", "all"]

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("var"),
    show_default=True,
    envvar="MXPRESS_DATA_DIR",
    help="The server's data directory (holds queue.sqlite3, queue.N.sqlite3). "
    "Env: MXPRESS_DATA_DIR.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _fail(reason: object) -> NoReturn:
    click.echo(f"mxpress queue: {reason}", err=True)
    sys.exit(1)


def _run(data_dir: Path, action: Callable[[ShardedQueue], Awaitable[T]]) -> T:
    async def main() -> T:
        async with ShardedQueue(data_dir) as store:  # every shard; never creates one
            return await action(store)

    try:
        return asyncio.run(main())
    except QueueError as exc:
        _fail(exc)


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%a %b %d %H:%M:%S", time.localtime(ts))


def message_json(message: QueuedMessage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": message.id,
        "state": str(message.state),
        "sender": message.sender,
        "created_at": message.created_at,
        "size": message.size,
        "is_bounce": message.is_bounce,
        "origin": message.origin,
        "envid": message.envid,
        "recipients": [
            {
                "recipient": r.recipient,
                "state": str(r.state),
                "attempts": r.attempts,
                "next_attempt": r.next_attempt,
                "last_reply": r.last_reply,
                "last_host": r.last_host,
                "updated_at": r.updated_at,
            }
            for r in message.recipients
        ],
    }
    if message.data is not None:
        out["data_base64"] = base64.b64encode(message.data).decode("ascii")
    return out


def _recipient_line(r: RecipientStatus) -> str:
    line = f"    {r.state:<10} {r.recipient}"
    details = []
    if r.attempts:
        details.append(f"{r.attempts} attempt{'s' if r.attempts != 1 else ''}")
    if r.state is RecipientState.DEFERRED:
        details.append(f"next {_when(r.next_attempt)}")
    if r.last_host:
        details.append(r.last_host)
    if details:
        line += f"  [{', '.join(details)}]"
    if r.last_reply:
        line += f"  ({r.last_reply})"
    return line


def _print_message(message: QueuedMessage) -> None:
    # mailq's layout: id (! = on hold), size, arrival, sender; then the recipients.
    flag = {MessageState.HELD: "!", MessageState.DONE: "-"}.get(message.state, " ")
    sender = message.sender or "<>"
    click.echo(f"{message.id}{flag} {message.size:>9} {_when(message.created_at):<20}  {sender}")
    for r in message.recipients:
        click.echo(_recipient_line(r))


@click.group(name="queue")
def queue_group() -> None:
    """Inspect and manage the durable queue (like mailq / postsuper)."""


@queue_group.command("ls")
@data_dir_option
@click.option(
    "--state",
    type=click.Choice(_STATES),
    default="queued",
    show_default=True,
    help="queued = active and held; all includes done messages.",
)
@click.option(
    "--recipient-state",
    type=click.Choice([str(s) for s in RecipientState]),
    help="Only messages with a recipient in this state.",
)
@click.option("--sender", help="Only messages from this sender.")
@click.option("--domain", help="Only messages with a recipient at this domain.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--after", "after_id", metavar="ID", help="Page: messages after this id.")
@json_option
def ls_command(
    data_dir: Path,
    state: str,
    recipient_state: str | None,
    sender: str | None,
    domain: str | None,
    limit: int,
    after_id: str | None,
    as_json: bool,
) -> None:
    """List queued messages, oldest first, with each recipient's state and last reply.

    Flags after the id: ! on hold, - done."""
    states: list[MessageState | None]
    if state == "queued":
        states = [MessageState.ACTIVE, MessageState.HELD]
    else:
        states = [None if state == "all" else MessageState(state)]

    async def action(store: ShardedQueue) -> list[QueuedMessage]:
        found: list[QueuedMessage] = []
        for one in states:
            found += await store.list(
                QueueFilter(
                    state=one,
                    recipient_state=None
                    if recipient_state is None
                    else RecipientState(recipient_state),
                    sender=sender,
                    recipient_domain=domain,
                    limit=limit + 1,  # one more: tells whether there is a next page
                    after_id=after_id,
                )
            )
        return sorted(found, key=lambda m: m.id)

    found = _run(data_dir, action)
    messages, more = found[:limit], len(found) > limit
    if as_json:
        click.echo(json.dumps([message_json(m) for m in messages], indent=2))
        return
    if not messages:
        click.echo("Mail queue is empty" if after_id is None else "No more messages")
        return
    click.echo(
        f"{'-Queue ID-':<21} {'--Size--':>9} {'----Arrival Time----':<20}  -Sender/Recipient-"
    )
    for message in messages:
        _print_message(message)
        click.echo("")
    kbytes = (sum(m.size for m in messages) + 1023) // 1024
    click.echo(f"-- {kbytes} Kbytes in {len(messages)} Request{'s' if len(messages) != 1 else ''}.")
    if more:
        click.echo(f"-- more: mxpress queue ls --after {messages[-1].id}")


@queue_group.command("show")
@data_dir_option
@click.argument("message_id", metavar="ID")
@click.option("--data", "with_data", is_flag=True, help="Also print the message itself.")
@json_option
def show_command(data_dir: Path, message_id: str, with_data: bool, as_json: bool) -> None:
    """Show one message: envelope, every recipient's state, and (--data) the message."""

    async def action(store: ShardedQueue) -> QueuedMessage | None:
        return await store.get(message_id, with_data=with_data)

    message = _run(data_dir, action)
    if message is None:
        _fail(f"no message {message_id} in the queue")
    if as_json:
        click.echo(json.dumps(message_json(message), indent=2))
        return
    fields = [
        ("id", message.id),
        ("state", str(message.state)),
        ("sender", message.sender or "<>"),
        ("arrival", f"{_when(message.created_at)} ({message.created_at:.3f})"),
        ("size", f"{message.size} bytes"),
        ("origin", message.origin or "-"),
        ("envid", message.envid or "-"),
        ("bounce", "yes (a DSN we generated)" if message.is_bounce else "no"),
    ]
    for name, value in fields:
        click.echo(f"{name + ':':<9} {value}")
    click.echo("recipients:")
    for r in message.recipients:
        click.echo(_recipient_line(r))
    if with_data:
        click.echo("")
        if message.data is None:
            click.echo("(no body: a done message's body is discarded)")
        else:
            click.echo(message.data, nl=False)


@queue_group.command("flush")
@data_dir_option
def flush_command(data_dir: Path) -> None:
    """Make every deferred recipient due now (the server tries them on its next scan)."""
    count = _run(data_dir, lambda store: store.retry_now())
    click.echo(f"{count} deferred recipient{'s' if count != 1 else ''} made due now")


def _each(
    data_dir: Path,
    ids: tuple[str, ...],
    verb: str,
    op: Callable[[ShardedQueue, str], Awaitable[bool]],
) -> None:
    """Apply hold / release_hold / delete to each id; report each; exit 1 if any failed."""

    async def action(store: ShardedQueue) -> list[tuple[str, bool, QueuedMessage | None]]:
        results = []
        for message_id in ids:
            before = await store.get(message_id)
            ok = before is not None and await op(store, message_id)
            results.append((message_id, ok, before))
        return results

    failed = False
    for message_id, ok, before in _run(data_dir, action):
        if ok:
            click.echo(f"{message_id}: {verb}")
            continue
        failed = True
        if before is None:
            reason = "no such message in the queue"
        else:
            reason = f"cannot be {verb} (it is {before.state})"
        click.echo(f"mxpress queue: {message_id}: {reason}", err=True)
    if failed:
        sys.exit(1)


@queue_group.command("hold")
@data_dir_option
@click.argument("ids", metavar="ID...", nargs=-1, required=True)
def hold_command(data_dir: Path, ids: tuple[str, ...]) -> None:
    """Put messages on hold: never tried until released (postsuper -h)."""
    _each(data_dir, ids, "held", ShardedQueue.hold)


@queue_group.command("release")
@data_dir_option
@click.argument("ids", metavar="ID...", nargs=-1, required=True)
def release_command(data_dir: Path, ids: tuple[str, ...]) -> None:
    """Release held messages back into the active queue (postsuper -H)."""
    _each(data_dir, ids, "released", ShardedQueue.release_hold)


@queue_group.command("delete")
@data_dir_option
@click.argument("ids", metavar="ID...", nargs=-1, required=True)
def delete_command(data_dir: Path, ids: tuple[str, ...]) -> None:
    """Delete messages from the queue, without a bounce (postsuper -d)."""
    _each(data_dir, ids, "deleted", ShardedQueue.delete)

"""Reading `mxpress send --bulk` files: CSV (from,to,subject,body) or JSON lines."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mxpress.errors import ConfigError, MxpressError
from mxpress.message import build_message, to_bytes


def load_bulk(path: Path) -> list[bytes]:
    """One message per row/line. `to` may hold several addresses separated by ';' or ','
    (CSV) or be a list (JSON). Errors name the line."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(path)
    elif suffix in (".jsonl", ".ndjson", ".json"):
        rows = _json_rows(path)
    else:
        raise ConfigError(f"--bulk file must end in .csv or .jsonl, got {path.name!r}")
    messages: list[bytes] = []
    for line, row in rows:
        try:
            sender = str(row.get("from") or "")
            to = row.get("to") or []
            recipients = (
                [str(a) for a in to]
                if isinstance(to, list)
                else [a.strip() for a in str(to).replace(";", ",").split(",") if a.strip()]
            )
            if not sender or not recipients:
                raise ConfigError("needs 'from' and 'to'")
            cc = row.get("cc") or []
            msg = build_message(
                sender,
                recipients,
                cc=[str(a) for a in cc] if isinstance(cc, list) else [],
                subject=str(row.get("subject") or ""),
                text=str(row.get("body") or row.get("text") or ""),
                html=str(row["html"]) if row.get("html") else None,
            )
        except MxpressError as exc:
            raise ConfigError(f"{path.name} line {line}: {exc.message}") from None
        messages.append(to_bytes(msg))
    if not messages:
        raise ConfigError(f"{path.name} holds no messages")
    return messages


def _csv_rows(path: Path) -> list[tuple[int, dict[str, object]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"from", "to"} - set(reader.fieldnames or ())
        if missing:
            raise ConfigError(f"{path.name}: missing CSV column(s) {', '.join(sorted(missing))}")
        return [(n + 2, dict(row)) for n, row in enumerate(reader)]


def _json_rows(path: Path) -> list[tuple[int, dict[str, object]]]:
    rows = []
    for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path.name} line {n}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{path.name} line {n}: expected an object")
        rows.append((n, row))
    return rows

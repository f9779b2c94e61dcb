from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mxpress.protocol.data import (
    check_line_lengths,
    chunks,
    dot_stuff,
    encode_data,
    needs_8bit,
    normalize_crlf,
)


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        (b"", b""),
        (b"a", b"a\r\n"),
        (b"a\r\n", b"a\r\n"),
        (b"a\nb\n", b"a\r\nb\r\n"),
        (b"a\rb\r", b"a\r\nb\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb\r\n"),
        (b"a\n\rb", b"a\r\n\r\nb\r\n"),
        (b"\n", b"\r\n"),
        (b"\r", b"\r\n"),
        (b"a\r\nb\nc\rd\r\n", b"a\r\nb\r\nc\r\nd\r\n"),
    ],
)
def test_normalize_crlf(raw: bytes, normalized: bytes) -> None:
    assert normalize_crlf(raw) == normalized


def test_normalize_fast_path_returns_input() -> None:
    clean = b"Subject: hi\r\n\r\nbody\r\n"
    assert normalize_crlf(clean) is clean


@pytest.mark.parametrize(
    ("raw", "stuffed"),
    [
        (b".\r\n", b"..\r\n"),
        (b".hidden\r\n", b"..hidden\r\n"),
        (b"a\r\n.b\r\n", b"a\r\n..b\r\n"),
        (b"a\r\n..\r\n", b"a\r\n...\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n"),
        (b"a.b\r\n.\r\n.\r\n", b"a.b\r\n..\r\n..\r\n"),
        (b"no dots\r\n", b"no dots\r\n"),
    ],
)
def test_dot_stuff(raw: bytes, stuffed: bytes) -> None:
    assert dot_stuff(raw) == stuffed


def test_dot_stuff_fast_path_returns_input() -> None:
    clean = b"a.b\r\nc. d\r\n"
    assert dot_stuff(clean) is clean


def test_encode_data() -> None:
    assert encode_data(b"") == b".\r\n"
    assert encode_data(b"Subject: x\n\n.\n") == b"Subject: x\r\n\r\n..\r\n.\r\n"
    assert encode_data(b"a") == b"a\r\n.\r\n"
    assert encode_data(b".") == b"..\r\n.\r\n"


def test_needs_8bit() -> None:
    assert not needs_8bit(b"plain ascii\r\n")
    assert needs_8bit("caf\u00e9".encode())
    assert needs_8bit(b"\x80")
    assert not needs_8bit(b"")


def test_chunks() -> None:
    data = b"0123456789"
    assert [bytes(c) for c in chunks(data, 3)] == [b"012", b"345", b"678", b"9"]
    assert [bytes(c) for c in chunks(data, 5)] == [b"01234", b"56789"]
    assert chunks(data, 10) == [data]
    assert chunks(data, 100)[0] is data
    assert chunks(b"", 10) == [b""]
    with pytest.raises(ValueError):
        chunks(data, 0)


@given(st.binary(max_size=500), st.integers(1, 64))
def test_chunks_reassemble(data: bytes, size: int) -> None:
    pieces = chunks(data, size)
    assert b"".join(pieces) == data
    assert all(0 < len(p) <= size for p in pieces) or data == b""


@pytest.mark.parametrize(
    ("data", "limit", "expected"),
    [
        (b"", 998, None),
        (b"short\r\n", 998, None),
        (b"x" * 998 + b"\r\n", 998, None),
        (b"x" * 998, 998, None),
        (b"x" * 998 + b"\n", 998, None),
        (b"x" * 999 + b"\r\n", 998, 1),
        (b"x" * 999, 998, 1),
        (b"a\r\nb\r\n" + b"x" * 999 + b"\r\nc\r\n", 998, 3),
        (b"abc\r\ndefg\r\nhi\r\n", 3, 2),
        (b"abc\r\nabc\r\nabc", 3, None),
        (b"abc\r\nabc\r\nabcd", 3, 3),
        (b"\r\n\r\n", 0, None),
        (b"\r\n\r\nx", 0, 3),
        (b"abc\r\r\n", 3, 1),  # a bare CR is content
    ],
)
def test_check_line_lengths(data: bytes, limit: int, expected: int | None) -> None:
    assert check_line_lengths(data, limit) == expected


def _first_long_line(data: bytes, limit: int) -> int | None:
    for number, line in enumerate(data.split(b"\n"), 1):
        if len(line.removesuffix(b"\r")) > limit:
            return number
    return None


@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n"]), max_size=80), st.integers(0, 6))
def test_check_line_lengths_matches_naive(parts: list[bytes], limit: int) -> None:
    data = b"".join(parts)
    assert check_line_lengths(data, limit) == _first_long_line(data, limit)


def test_check_line_lengths_rejects_negative_limit() -> None:
    with pytest.raises(ValueError):
        check_line_lengths(b"x", -1)


_body = st.lists(st.sampled_from([b".", b"..", b"a", b"\r", b"\n", b"\r\n", b" ", b"\xff"])).map(
    b"".join
)


def _unstuff(encoded: bytes) -> bytes:
    assert encoded.endswith(b".\r\n")
    body = encoded[:-3]
    if not body:
        return body
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@given(_body)
def test_encode_data_round_trip(data: bytes) -> None:
    encoded = encode_data(data)
    assert _unstuff(encoded) == normalize_crlf(data)
    lines = encoded.split(b"\r\n")
    assert lines[-2:] == [b".", b""]
    assert b"." not in lines[:-2]
    # Only CRLF line ends survive, and the terminator is the only lone dot.
    assert encoded.count(b"\r") == encoded.count(b"\n") == encoded.count(b"\r\n")
    assert encoded.find(b"\r\n.\r\n") in (-1, len(encoded) - 5)
    assert not encoded.startswith(b".\r\n") or encoded == b".\r\n"

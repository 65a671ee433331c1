"""The response framer (proto/responses.py): whole, byte by byte, at random splits; bad input."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardgear.proto.errors import BadCommand, BadMagic, PacketTooLarge, ProtocolError
from shardgear.proto.packets import PacketType, request, response
from shardgear.proto.responses import ResponseParser

T = PacketType
STREAM = [
    (int(T.JOB_CREATED), b"H:host:1"),
    (int(T.NOOP), b""),
    (int(T.WORK_DATA), b"H:host:1\0chunk\0with nul"),
    (int(T.WORK_COMPLETE), b"H:host:1\0" + bytes(range(256)) * 40),
    (int(T.ERROR), b"QUEUE_ERROR\0Job queue is full"),
]
WIRE = b"".join(response(t, body) for t, body in STREAM)


def feed_in(parser: ResponseParser, data: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        out += parser.feed(data[start:cut])
        start = cut
    return out


def test_whole_stream_at_once() -> None:
    assert ResponseParser().feed(WIRE) == STREAM


def test_byte_by_byte() -> None:
    parser = ResponseParser()
    assert feed_in(parser, WIRE, list(range(1, len(WIRE)))) == STREAM
    assert parser.buffered == 0


@pytest.mark.parametrize("seed", range(20))
def test_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    cuts = rng.sample(range(1, len(WIRE)), rng.randint(1, 30))
    assert feed_in(ResponseParser(), WIRE, cuts) == STREAM


def test_partial_packet_is_held_until_complete() -> None:
    parser = ResponseParser()
    wire = response(T.ECHO_RES, b"x" * 100)
    assert parser.feed(wire[:50]) == []
    assert parser.buffered == 50
    assert parser.feed(wire[50:]) == [(int(T.ECHO_RES), b"x" * 100)]
    assert parser.buffered == 0


def test_large_body_in_small_pieces() -> None:
    body = bytes(random.Random(1).randbytes(3 * 1024 * 1024))
    wire = response(T.WORK_COMPLETE, b"H:1", body)
    parser = ResponseParser()
    out = []
    for i in range(0, len(wire), 65536):
        out += parser.feed(memoryview(wire)[i : i + 65536])
    assert out == [(int(T.WORK_COMPLETE), b"H:1\0" + body)]


def test_request_magic_is_refused_at_once() -> None:
    with pytest.raises(BadMagic):
        ResponseParser().feed(request(T.ECHO_REQ, b"x")[:4])


def test_text_is_refused() -> None:
    with pytest.raises(BadMagic):
        ResponseParser().feed(b"OK 1.1.20\n")


@pytest.mark.parametrize("ptype", [0, 43, 1000])
def test_bad_type(ptype: int) -> None:
    with pytest.raises(BadCommand):
        ResponseParser().feed(struct.pack("!4sII", b"\0RES", ptype, 0))


def test_oversized_packet_refused_before_its_body() -> None:
    parser = ResponseParser(max_packet_size=1024)
    with pytest.raises(PacketTooLarge):
        parser.feed(struct.pack("!4sII", b"\0RES", int(T.WORK_DATA), 1025))
    assert ResponseParser(max_packet_size=1024).feed(response(T.WORK_DATA, b"x" * 1024))


def test_error_is_sticky() -> None:
    parser = ResponseParser()
    with pytest.raises(BadMagic):
        parser.feed(b"\0REQ" + bytes(8))
    with pytest.raises(BadMagic):
        parser.feed(response(T.NOOP))
    assert parser.buffered == 0


@given(st.binary(max_size=200), st.lists(st.integers(1, 199), max_size=5))
def test_only_protocol_errors_escape(data: bytes, cuts: list[int]) -> None:
    parser = ResponseParser(max_packet_size=64)
    try:
        feed_in(parser, data, [c for c in cuts if c < len(data)])
    except ProtocolError:
        pass

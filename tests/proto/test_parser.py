"""The incremental framer: vectors replayed whole, byte by byte and at random split points."""

from __future__ import annotations

import random
import struct
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardgear.proto.errors import (
    BadCommand,
    BadMagic,
    LineTooLong,
    PacketTooLarge,
    ProtocolError,
    TooManyTokens,
)
from shardgear.proto.packets import ARGC, HEADER, REQUEST_TYPES, PacketType, request, split_args
from shardgear.proto.parser import (
    LARGE_BODY,
    LARGE_PACKET_TYPE,
    NEED_DATA,
    RESPONSE_MAGIC_TYPE,
    AdminLine,
    Event,
    Packet,
    Parser,
)

Outcome = tuple[list[Event], type[ProtocolError] | None]


def run(chunks: list[bytes], parser: Parser | None = None, *, one_by_one: bool = False) -> Outcome:
    """Feed chunks, draining after each; return the events and the error class, if any."""
    parser = parser or Parser()
    out: list[Event] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            if one_by_one:
                while (event := parser.next_event()) is not NEED_DATA:
                    assert isinstance(event, Packet | AdminLine)
                    out.append(event)
            else:
                out.extend(parser.events())
    except ProtocolError as exc:
        out.extend(exc.events)  # type: ignore[arg-type]
        return out, type(exc)
    return out, None


def splits(wire: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(wire)), min(len(wire) - 1, rng.randint(1, 8))))
    return [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]


def all_chunkings(wire: bytes) -> list[list[bytes]]:
    ways = [[wire], [wire[i : i + 1] for i in range(len(wire))]]
    ways += [splits(wire, seed) for seed in range(10)] if len(wire) > 1 else []
    return ways


def assert_same_everywhere(wire: bytes, expected: Outcome, **kwargs: int) -> None:
    for chunks in all_chunkings(wire):
        for one_by_one in (False, True):
            got = run(chunks, Parser(**kwargs), one_by_one=one_by_one)
            assert got == expected, (chunks, one_by_one)


def sample_args(ptype: int) -> list[bytes]:
    argc = ARGC[ptype]
    args = [b"arg%d" % i for i in range(max(argc - 1, 0))]
    if argc:
        args.append(b"last\0with\0nuls")
    return args


# -- vectors --------------------------------------------------------------------------------


@pytest.mark.parametrize("ptype", sorted(REQUEST_TYPES), ids=lambda t: PacketType(t).name)
def test_every_request_type(ptype: int) -> None:
    args = sample_args(ptype)
    wire = request(ptype, *args)
    expected_body = wire[12:]
    assert_same_everywhere(wire, ([Packet(ptype, expected_body)], None))
    assert split_args(ptype, expected_body) == args


def test_every_type_in_one_stream() -> None:
    wire = b"".join(request(t, *sample_args(t)) for t in range(1, 43))
    expected: list[Event] = [Packet(t, request(t, *sample_args(t))[12:]) for t in range(1, 43)]
    assert_same_everywhere(wire, (expected, None))


def test_spec_submit_job_example() -> None:
    wire = bytes.fromhex("00524551 00000007 0000000d") + b"reverse\0\0test"
    assert wire == request(PacketType.SUBMIT_JOB, b"reverse", b"", b"test")
    assert_same_everywhere(wire, ([Packet(7, b"reverse\0\0test")], None))


def test_empty_bodies() -> None:
    wire = request(PacketType.GRAB_JOB) + request(PacketType.PRE_SLEEP) + request(9)
    assert_same_everywhere(wire, ([Packet(9, b""), Packet(4, b""), Packet(9, b"")], None))


def test_mixed_text_and_binary() -> None:
    wire = (
        b"status\r\n"
        + request(PacketType.ECHO_REQ, b"hi")
        + b"show unique jobs\n"
        + request(PacketType.SUBMIT_JOB, b"f", b"", b"x\ny\n")
        + b"\n"
        + b"workers\r\n"
    )
    expected: list[Event] = [
        AdminLine([b"status"]),
        Packet(16, b"hi"),
        AdminLine([b"show", b"unique", b"jobs"]),
        Packet(7, b"f\0\0x\ny\n"),
        AdminLine([]),
        AdminLine([b"workers"]),
    ]
    assert_same_everywhere(wire, (expected, None))


@pytest.mark.parametrize(
    ("line", "tokens"),
    [
        (b"status\r\n", [b"status"]),
        (b"status\n", [b"status"]),
        (b"\r\n", []),
        (b"\n", []),
        (b"show  unique   jobs\r\n", [b"show", b"unique", b"jobs"]),
        # gearmand splits at each run of spaces: leading/trailing spaces give empty tokens
        (b"  status\r\n", [b"", b"status"]),
        (b"status \r\n", [b"status", b""]),
        (b" \r\n", [b"", b""]),
        (b"cancel job H:x:1 \r\n", [b"cancel", b"job", b"H:x:1", b""]),
        (b"show\tjobs\r\n", [b"show\tjobs"]),  # tabs are not separators
        (b"\r\r\n", [b"\r"]),  # one \r stripped
        (b"status\rx\r\n", [b"status\rx"]),
        (b"a b c d e\r\n", [b"a", b"b", b"c", b"d", b"e"]),
        (b"x\0y\n", [b"x\0y"]),
    ],
)
def test_admin_line_tokens(line: bytes, tokens: list[bytes]) -> None:
    assert_same_everywhere(line, ([AdminLine(tokens)], None))


def test_incomplete_events_are_held() -> None:
    parser = Parser()
    parser.feed(b"stat")
    assert parser.next_event() is NEED_DATA
    assert parser.events() == []
    parser.feed(b"us")
    assert parser.buffered == 6
    parser.feed(b"\r\n\0RE")
    assert parser.next_event() == AdminLine([b"status"])
    assert parser.next_event() is NEED_DATA
    assert parser.buffered == 3
    parser.feed(b"Q\0\0\0\x10\0\0\0\x02h")
    assert parser.events() == []
    parser.feed(b"i")
    assert parser.next_event() == Packet(16, b"hi")
    assert parser.buffered == 0
    assert parser.next_event() is NEED_DATA


def test_feed_empty_and_other_buffers() -> None:
    parser = Parser()
    parser.feed(b"")
    assert parser.events() == []
    wire = request(PacketType.ECHO_REQ, b"abc")
    parser.feed(bytearray(wire[:5]))
    parser.feed(b"")
    parser.feed(memoryview(wire)[5:])
    assert parser.events() == [Packet(16, b"abc")]
    assert type(Packet(16, b"abc").body) is bytes


def test_several_feeds_before_draining() -> None:
    parser = Parser()
    for _ in range(3):
        parser.feed(request(PacketType.GRAB_JOB) + b"version\n")
    assert parser.buffered == 3 * 20
    assert parser.events() == [Packet(9, b""), AdminLine([b"version"])] * 3


def test_next_event_returns_one_at_a_time() -> None:
    parser = Parser()
    parser.feed(request(9) * 3)
    assert parser.next_event() == Packet(9, b"")
    assert parser.buffered == 24
    assert parser.events() == [Packet(9, b"")] * 2


def test_need_data_sentinel() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"
    assert NEED_DATA is not None


def test_events_are_tuples() -> None:
    packet = Packet(7, b"x")
    assert packet.ptype == 7
    assert packet.body == b"x"
    assert tuple(packet) == (7, b"x")
    assert AdminLine([b"a"]).tokens == [b"a"]


# -- response magic -------------------------------------------------------------------------


def test_response_magic_yields_a_marker_packet_and_goes_on() -> None:
    wire = HEADER.pack(b"\0RES", 16, 3) + b"abc" + request(16, b"hi") + b"status\n"
    expected: list[Event] = [
        Packet(RESPONSE_MAGIC_TYPE, b"abc"),
        Packet(16, b"hi"),
        AdminLine([b"status"]),
    ]
    assert RESPONSE_MAGIC_TYPE == -1
    assert_same_everywhere(wire, (expected, None))


def test_response_magic_still_checks_type_and_size() -> None:
    assert run([HEADER.pack(b"\0RES", 0, 0)]) == ([], BadCommand)
    assert run([HEADER.pack(b"\0RES", 43, 0)]) == ([], BadCommand)
    assert run([HEADER.pack(b"\0RES", 7, 11)], Parser(max_packet_size=10)) == ([], PacketTooLarge)


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        b"\0XYZ\0\0\0\x10\0\0\0\0",
        b"\0req\0\0\0\x10\0\0\0\0",
        b"\0\0\0\0\0\0\0\0\0\0\0\0",
        b"\0RE\0" * 5,
    ],
)
def test_bad_magic(wire: bytes) -> None:
    assert_same_everywhere(wire, ([], BadMagic))


def test_bad_magic_is_seen_before_the_header_is_complete() -> None:
    assert run([b"\0XYZ"]) == ([], BadMagic)
    assert run([b"\0RE"]) == ([], None)
    # also when the 4 bytes arrive in pieces after a partial event (found by hypothesis)
    assert run([b"\0", b"\0\0\0"]) == ([], BadMagic)
    assert run([b"x\n\0R", b"E", b"X"]) == ([AdminLine([b"x"])], BadMagic)


@pytest.mark.parametrize("ptype", [0, 43, 44, 1000, 0xFFFFFFFF])
def test_bad_type(ptype: int) -> None:
    wire = HEADER.pack(b"\0REQ", ptype, 0)
    assert_same_everywhere(wire, ([], BadCommand))
    assert_same_everywhere(request(9) + wire + b"status\n", ([Packet(9, b"")], BadCommand))


def test_oversized_header_raises_before_the_body_arrives() -> None:
    parser = Parser(max_packet_size=1000)
    parser.feed(HEADER.pack(b"\0REQ", 7, 1001))
    with pytest.raises(PacketTooLarge) as info:
        parser.events()
    assert isinstance(info.value, ValueError)
    assert "1001" in info.value.message
    parser = Parser(max_packet_size=1000)
    parser.feed(HEADER.pack(b"\0REQ", 7, 1000) + b"x" * 1000)
    assert parser.events() == [Packet(7, b"x" * 1000)]


def test_default_limit_refuses_a_4_gib_announcement() -> None:
    parser = Parser()
    parser.feed(HEADER.pack(b"\0REQ", 16, 0xFFFFFFFF))
    with pytest.raises(PacketTooLarge):
        parser.next_event()


def test_too_many_tokens() -> None:
    assert_same_everywhere(b"a b c d e f\r\n", ([], TooManyTokens))
    assert_same_everywhere(b" a b c d e\r\n", ([], TooManyTokens))  # leading space counts
    assert_same_everywhere(b"a b c d e \r\n", ([], TooManyTokens))  # so does a trailing one
    assert_same_everywhere(b"maxqueue f 1 2 3 4\n", ([], TooManyTokens))


def test_long_line() -> None:
    ok = b"x" * 16 + b"\n"
    assert_same_everywhere(ok, ([AdminLine([b"x" * 16])], None), max_line=16)
    assert_same_everywhere(b"x" * 17 + b"\n", ([], LineTooLong), max_line=16)
    assert_same_everywhere(b"x" * 17, ([], LineTooLong), max_line=16)  # no newline yet
    assert_same_everywhere(b"x" * 16, ([], None), max_line=16)


def test_long_line_is_refused_without_buffering_it_all() -> None:
    parser = Parser(max_line=8192)
    parser.feed(b"x" * 8192)
    assert parser.events() == []
    parser.feed(b"x")
    with pytest.raises(LineTooLong):
        parser.events()
    assert parser.buffered == 0


def test_error_is_sticky() -> None:
    parser = Parser()
    parser.feed(request(9) + b"\0BAD" + b"\0" * 8)
    with pytest.raises(BadMagic) as first:
        parser.events()
    assert first.value.events == [Packet(9, b"")]  # what came before the error
    parser.feed(request(9))
    for call in (parser.events, parser.next_event, parser.events):
        with pytest.raises(BadMagic) as again:
            call()
        assert again.value is first.value
        assert again.value.events == ()
    assert parser.buffered == 0


def test_next_event_error_is_sticky() -> None:
    parser = Parser()
    parser.feed(b"a b c d e f\n")
    with pytest.raises(TooManyTokens):
        parser.next_event()
    with pytest.raises(TooManyTokens):
        parser.next_event()


# -- large packets --------------------------------------------------------------------------


def test_64_mib_in_64_kib_chunks_is_fast() -> None:
    size = 64 << 20
    wire = request(PacketType.SUBMIT_JOB_BG, b"f", b"u", b"x" * (size - 4)) + request(9)
    parser = Parser()
    start = time.perf_counter()
    got: list[Event] = []
    for i in range(0, len(wire), 65536):
        parser.feed(wire[i : i + 65536])
        got += parser.events()
    elapsed = time.perf_counter() - start
    assert [event.ptype for event in got] == [18, 9]  # type: ignore[union-attr]
    assert got[0] == Packet(18, wire[12 : 12 + size])
    assert parser.buffered == 0
    assert elapsed < 1.0, elapsed  # about 0.07 s on an idle machine


@pytest.mark.parametrize("one_by_one", [False, True])
def test_large_body_then_more_in_the_same_chunk(one_by_one: bool) -> None:
    body = bytes(range(256)) * 8192  # 2 MiB
    wire = (
        request(PacketType.ECHO_REQ, body)
        + b"\0RES"
        + HEADER.pack(b"\0RES", 17, len(body))[4:]
        + body
        + b"status\n"
        + request(9)
    )
    expected = [
        Packet(16, body),
        Packet(RESPONSE_MAGIC_TYPE, body),
        AdminLine([b"status"]),
        Packet(9, b""),
    ]
    for chunks in (
        [wire[:100], wire[100:]],
        [wire[:100], wire[100 : 3 << 20], wire[3 << 20 :]],
        [wire[i : i + 99_991] for i in range(0, len(wire), 99_991)],
        [wire[:12], wire[12:50], wire[50 : (2 << 20) + 12], wire[(2 << 20) + 12 :]],
    ):
        assert run(chunks, one_by_one=one_by_one) == (expected, None)


def test_byte_by_byte_large_packet_is_linear() -> None:
    wire = request(PacketType.ECHO_REQ, b"y" * 200_000)
    parser = Parser()
    start = time.perf_counter()
    for i in range(len(wire)):
        parser.feed(wire[i : i + 1])
        assert parser.events() == [] or i == len(wire) - 1
    assert time.perf_counter() - start < 2.0


def test_byte_by_byte_long_line_is_linear() -> None:
    line = b"x" * 100_000 + b"\n"
    parser = Parser(max_line=200_000)
    start = time.perf_counter()
    out: list[Event] = []
    for i in range(len(line)):
        parser.feed(line[i : i + 1])
        out += parser.events()
    assert out == [AdminLine([b"x" * 100_000])]
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    "wire", [request(PacketType.ECHO_REQ, b"y" * 65_536), b"z" * 65_536 + b"\n"]
)
def test_a_trickled_request_is_held_in_about_its_own_size(wire: bytes) -> None:
    """A peer that sends one byte per segment must not make the parser hold ~40 bytes per byte:
    --max-total-input counts `buffered`, so what is held must stay close to it."""
    parser = Parser(max_line=100_000)
    tracemalloc.start()
    try:
        for i in range(len(wire) - 1):
            parser.feed(wire[i : i + 1])
            assert parser.events() == []
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert parser.buffered == len(wire) - 1
    assert held < 2 * len(wire)  # one bytes object per byte: ~50 x
    parser.feed(wire[-1:])
    assert len(parser.events()) == 1


# -- properties -----------------------------------------------------------------------------

valid_packet = st.builds(
    lambda t, args: request(t, *args),
    st.integers(1, 42),
    st.lists(st.binary(max_size=12), max_size=4),
)
admin_line = st.builds(
    lambda words, end: b" ".join(words) + end,
    st.lists(st.sampled_from([b"status", b"", b"show", b"jobs", b"x" * 20]), max_size=7),
    st.sampled_from([b"\n", b"\r\n"]),
)
junk = st.binary(max_size=24)
stream = st.lists(st.one_of(valid_packet, admin_line, junk), max_size=12).map(b"".join)


def cut(wire: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({p % (len(wire) + 1) for p in points})
    return [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]


@settings(max_examples=400, deadline=None)
@given(wire=stream, points=st.lists(st.integers(0, 10_000), max_size=20))
def test_any_bytes_in_any_chunks(wire: bytes, points: list[int]) -> None:
    max_packet_size, max_line = 30, 40
    whole = run([wire], Parser(max_packet_size, max_line))
    parser = Parser(max_packet_size, max_line)
    events: list[Event] = []
    error: type[ProtocolError] | None = None
    try:
        for chunk in cut(wire, points):
            parser.feed(chunk)
            events += parser.events()
            # at most one partial event is held between calls
            assert parser.buffered < max(12 + max_packet_size, max_line + 1)
    except ProtocolError as exc:  # nothing else may escape
        events += exc.events  # type: ignore[arg-type]
        error = type(exc)
    assert (events, error) == whole
    assert run(cut(wire, points), Parser(max_packet_size, max_line), one_by_one=True) == whole


packet_spec = st.sampled_from(sorted(ARGC)).flatmap(
    lambda t: st.tuples(
        st.just(t),
        st.lists(
            st.binary(max_size=16).map(lambda b: b.replace(b"\0", b"")),
            min_size=max(ARGC[t] - 1, 0),
            max_size=max(ARGC[t] - 1, 0),
        ),
        st.binary(max_size=64) if ARGC[t] else st.just(None),
    )
)


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(packet_spec, min_size=1, max_size=10),
    points=st.lists(st.integers(0, 10_000), max_size=10),
)
def test_round_trip(specs: list[tuple[int, list[bytes], bytes | None]], points: list[int]) -> None:
    expected_args = [(t, [*args, last] if last is not None else args) for t, args, last in specs]
    wire = b"".join(request(t, *args) for t, args in expected_args)
    events, error = run(cut(wire, points))
    assert error is None
    assert [(e.ptype, split_args(e.ptype, e.body)) for e in events] == expected_args  # type: ignore[union-attr]


def test_large_pieces_gives_a_large_body_as_the_chunks_it_came_in() -> None:
    body = bytes(range(256)) * (LARGE_BODY // 256) + b"odd"
    wire = struct.pack(">4sII", b"\0REQ", 7, len(body)) + body
    after = struct.pack(">4sII", b"\0REQ", 16, 2) + b"hi"
    parser = Parser(max_packet_size=2 * LARGE_BODY, large_pieces=True)
    frames = []
    step = 65536 + 5
    data = wire + after
    for off in range(0, len(data), step):
        frames += parser.feed_frames(data[off : off + step])
    assert [f[0] for f in frames] == [LARGE_PACKET_TYPE, 16]
    ptype, pieces = frames[0][1]
    assert ptype == 7 and len(pieces) > 1
    assert b"".join(pieces) == body
    assert frames[1][1] == b"hi"
    # without large_pieces (and through events()) the same body comes whole
    whole = Parser(max_packet_size=2 * LARGE_BODY)
    for off in range(0, len(data), step):
        whole.feed(data[off : off + step])
    assert [tuple(e) for e in whole.events()] == [(7, body), (16, b"hi")]

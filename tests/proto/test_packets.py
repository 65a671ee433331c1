"""Packet types, argument counts, encoding and argument splitting (spec section 1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardgear.proto import errors, packets
from shardgear.proto.errors import BadCommand, MissingArguments, ProtocolError
from shardgear.proto.packets import (
    ARGC,
    NO_JOB_PACKET,
    NOOP_PACKET,
    REJECTED_TYPES,
    REQUEST_TYPES,
    PacketType,
    error_packet,
    request,
    response,
    split_args,
)

GEARMAND_NAMES = [
    "CAN_DO",
    "CANT_DO",
    "RESET_ABILITIES",
    "PRE_SLEEP",
    "UNUSED",
    "NOOP",
    "SUBMIT_JOB",
    "JOB_CREATED",
    "GRAB_JOB",
    "NO_JOB",
    "JOB_ASSIGN",
    "WORK_STATUS",
    "WORK_COMPLETE",
    "WORK_FAIL",
    "GET_STATUS",
    "ECHO_REQ",
    "ECHO_RES",
    "SUBMIT_JOB_BG",
    "ERROR",
    "STATUS_RES",
    "SUBMIT_JOB_HIGH",
    "SET_CLIENT_ID",
    "CAN_DO_TIMEOUT",
    "ALL_YOURS",
    "WORK_EXCEPTION",
    "OPTION_REQ",
    "OPTION_RES",
    "WORK_DATA",
    "WORK_WARNING",
    "GRAB_JOB_UNIQ",
    "JOB_ASSIGN_UNIQ",
    "SUBMIT_JOB_HIGH_BG",
    "SUBMIT_JOB_LOW",
    "SUBMIT_JOB_LOW_BG",
    "SUBMIT_JOB_SCHED",
    "SUBMIT_JOB_EPOCH",
    "SUBMIT_REDUCE_JOB",
    "SUBMIT_REDUCE_JOB_BACKGROUND",
    "GRAB_JOB_ALL",
    "JOB_ASSIGN_ALL",
    "GET_STATUS_UNIQUE",
    "STATUS_RES_UNIQUE",
]

ALL_TYPES = list(range(1, 43))


def test_packet_type_names_are_gearmands_in_order() -> None:
    assert [t.name for t in PacketType] == GEARMAND_NAMES
    assert [t.value for t in PacketType] == ALL_TYPES
    assert packets.MAX_PACKET_TYPE == 42


def test_request_and_rejected_types_partition_all_types() -> None:
    assert sorted(REQUEST_TYPES) == [
        1, 2, 3, 4, 7, 9, 12, 13, 14, 15, 16, 18, 21, 22, 23, 25, 26, 28, 29, 30, 32, 33, 34, 36,
        37, 38, 39, 41,
    ]  # fmt: skip
    assert sorted(REJECTED_TYPES) == [5, 6, 8, 10, 11, 17, 19, 20, 24, 27, 31, 35, 40, 42]
    assert not REQUEST_TYPES & REJECTED_TYPES
    assert sorted(REQUEST_TYPES | REJECTED_TYPES) == ALL_TYPES
    assert all(type(t) is int for t in REQUEST_TYPES | REJECTED_TYPES)  # plain ints: fast lookups


@pytest.mark.parametrize(
    ("ptype", "argc"),
    [
        (PacketType.CAN_DO, 1),
        (PacketType.RESET_ABILITIES, 0),
        (PacketType.PRE_SLEEP, 0),
        (PacketType.UNUSED, 0),
        (PacketType.NOOP, 0),
        (PacketType.SUBMIT_JOB, 3),
        (PacketType.GRAB_JOB, 0),
        (PacketType.JOB_ASSIGN, 3),
        (PacketType.WORK_STATUS, 3),
        (PacketType.WORK_COMPLETE, 2),
        (PacketType.WORK_FAIL, 1),
        (PacketType.ECHO_REQ, 1),
        (PacketType.ERROR, 2),
        (PacketType.STATUS_RES, 5),
        (PacketType.CAN_DO_TIMEOUT, 2),
        (PacketType.WORK_EXCEPTION, 2),
        (PacketType.JOB_ASSIGN_UNIQ, 4),
        (PacketType.SUBMIT_JOB_SCHED, 8),
        (PacketType.SUBMIT_JOB_EPOCH, 4),
        (PacketType.SUBMIT_REDUCE_JOB, 5),
        (PacketType.SUBMIT_REDUCE_JOB_BACKGROUND, 5),
        (PacketType.JOB_ASSIGN_ALL, 5),
        (PacketType.GET_STATUS_UNIQUE, 1),
        (PacketType.STATUS_RES_UNIQUE, 6),
    ],
)
def test_argc(ptype: PacketType, argc: int) -> None:
    assert ARGC[ptype] == argc


def test_argc_covers_every_type() -> None:
    assert sorted(ARGC) == ALL_TYPES
    assert all(type(t) is int for t in ARGC)
    for ptype in (7, 18, 21, 32, 33, 34):  # every SUBMIT_JOB flavour
        assert ARGC[ptype] == 3


def test_submit_job_example_from_spec_is_byte_exact() -> None:
    wire = bytes.fromhex("00524551 00000007 0000000d") + b"reverse\0\0test"
    assert request(PacketType.SUBMIT_JOB, b"reverse", b"", b"test") == wire
    assert split_args(7, wire[12:]) == [b"reverse", b"", b"test"]


def test_job_created_example_from_spec_is_byte_exact() -> None:
    wire = bytes.fromhex("00524553 00000008 00000007") + b"H:lap:1"
    assert response(PacketType.JOB_CREATED, b"H:lap:1") == wire


def test_prebuilt_packets() -> None:
    assert NOOP_PACKET == b"\0RES\0\0\0\x06\0\0\0\0"
    assert NO_JOB_PACKET == b"\0RES\0\0\0\x0a\0\0\0\0"
    assert response(PacketType.NOOP) == NOOP_PACKET
    assert request(PacketType.GRAB_JOB) == b"\0REQ\0\0\0\x09\0\0\0\0"


# ERROR packets as captured from gearmand 1.1.20 on the wire.
GEARMAND_ERRORS = [
    (errors.ERR_MAGIC_REQ_EXPECTED, b"\0RES\0\0\0\x13\0\0\0$INVALID_MAGIC\0Request magic expected"),
    (
        errors.ERR_COMMAND_NOT_EXPECTED,
        b"\0RES\0\0\0\x13\0\0\0$INVALID_COMMAND\0Command not expected",
    ),
    (
        errors.ERR_UNKNOWN_OPTION,
        b"\0RES\0\0\0\x13\0\0\x005UNKNOWN_OPTION\0Server does not recognize given option",
    ),
    (
        errors.ERR_WORK_DATA_NOT_FOUND,
        b"\0RES\0\0\0\x13\0\0\0*JOB_NOT_FOUND\0Job does not exist on server",
    ),
    (
        errors.ERR_WORK_RESULT_NOT_FOUND,
        b"\0RES\0\0\0\x13\0\0\x000JOB_NOT_FOUND\0Job given in work result not found",
    ),
    (
        errors.ERR_EXCEPTION_NOT_FOUND,
        b"\0RES\0\0\0\x13\0\0\0EJOB_NOT_FOUND\0"
        b"An exception was received for a job that does not exist",
    ),
    (
        errors.ERR_HANDLE_TOO_LARGE,
        b"\0RES\0\0\0\x13\0\0\0_ARGUMENT_TOO_LARGE\0"
        b"Error occurred due to GEARMAND_JOB_HANDLE_SIZE being too small from snprintf",
    ),
]


@pytest.mark.parametrize(("pair", "wire"), GEARMAND_ERRORS)
def test_error_packets_match_gearmand(pair: tuple[bytes, bytes], wire: bytes) -> None:
    assert error_packet(*pair) == wire


def test_other_error_texts() -> None:
    assert errors.ERR_QUEUE_FULL == (b"QUEUE_ERROR", b"Job queue is full")
    assert errors.ERR_UNIQUE_TOO_LARGE == (b"ARGUMENT_TOO_LARGE", b"Unique value too large")
    assert errors.ERR_INVALID_COMMAND == (b"INVALID_COMMAND", b"Invalid command expected")


@pytest.mark.parametrize(
    ("ptype", "expected"),
    [
        (PacketType.WORK_DATA, errors.ERR_WORK_DATA_NOT_FOUND),
        (PacketType.WORK_WARNING, errors.ERR_WORK_DATA_NOT_FOUND),
        (PacketType.WORK_STATUS, errors.ERR_WORK_RESULT_NOT_FOUND),
        (PacketType.WORK_COMPLETE, errors.ERR_WORK_RESULT_NOT_FOUND),
        (PacketType.WORK_FAIL, errors.ERR_WORK_RESULT_NOT_FOUND),
        (PacketType.WORK_EXCEPTION, errors.ERR_EXCEPTION_NOT_FOUND),
    ],
)
def test_not_found_error(ptype: int, expected: tuple[bytes, bytes]) -> None:
    assert errors.not_found_error(ptype) == expected


def test_not_found_error_rejects_other_types() -> None:
    with pytest.raises(ValueError, match="JOB_NOT_FOUND"):
        errors.not_found_error(PacketType.SUBMIT_JOB)


def test_exception_hierarchy() -> None:
    for cls in (
        errors.BadMagic,
        errors.PacketTooLarge,
        errors.BadCommand,
        errors.MissingArguments,
        errors.TooManyTokens,
        errors.LineTooLong,
    ):
        assert issubclass(cls, ProtocolError)
    assert issubclass(errors.PacketTooLarge, ValueError)
    exc = errors.BadMagic("bad magic")
    assert exc.message == "bad magic"
    assert str(exc) == "bad magic"
    assert exc.events == ()


# -- split_args -----------------------------------------------------------------------------


def test_last_argument_keeps_nuls() -> None:
    assert split_args(PacketType.CAN_DO, b"foo\0") == [b"foo\0"]
    assert split_args(PacketType.SUBMIT_JOB, b"f\0u\0da\0ta\0") == [b"f", b"u", b"da\0ta\0"]
    assert split_args(PacketType.ECHO_REQ, b"a\0b\0") == [b"a\0b\0"]
    assert split_args(PacketType.WORK_STATUS, b"H:x:1\x001\x002\x003") == [
        b"H:x:1",
        b"1",
        b"2\x003",
    ]


def test_reduce_has_four_nul_terminated_fields() -> None:
    body = b"func\0uniq\0reducer\0\0da\0ta"
    assert split_args(PacketType.SUBMIT_REDUCE_JOB, body) == [
        b"func",
        b"uniq",
        b"reducer",
        b"",
        b"da\0ta",
    ]
    with pytest.raises(MissingArguments):  # PROTOCOL's three fields are not enough
        split_args(PacketType.SUBMIT_REDUCE_JOB_BACKGROUND, b"func\0uniq\0reducer\0data")


def test_epoch_has_three_nul_terminated_fields() -> None:
    body = b"f\0u\x001700000000\0data"
    assert split_args(PacketType.SUBMIT_JOB_EPOCH, body) == [b"f", b"u", b"1700000000", b"data"]


@pytest.mark.parametrize(
    ("ptype", "body"),
    [
        (PacketType.SUBMIT_JOB, b"abc"),
        (PacketType.SUBMIT_JOB, b"abc\0"),
        (PacketType.WORK_COMPLETE, b"H:x:1"),
        (PacketType.STATUS_RES_UNIQUE, b"u\x001\x000\x000\x000"),
        (PacketType.CAN_DO_TIMEOUT, b""),
    ],
)
def test_missing_arguments(ptype: int, body: bytes) -> None:
    with pytest.raises(MissingArguments):
        split_args(ptype, body)


def test_no_argument_types_ignore_the_body() -> None:
    assert split_args(PacketType.GRAB_JOB, b"zz") == []  # gearmand answers NO_JOB all the same
    assert split_args(PacketType.PRE_SLEEP, b"") == []


def test_one_argument_types_take_the_whole_body() -> None:
    assert split_args(PacketType.GET_STATUS, b"") == [b""]
    assert split_args(PacketType.SET_CLIENT_ID, b"a b\0c") == [b"a b\0c"]


@pytest.mark.parametrize("ptype", [0, 43, -1, 1000])
def test_split_args_rejects_unknown_types(ptype: int) -> None:
    with pytest.raises(BadCommand):
        split_args(ptype, b"x")


nul_free = st.binary(max_size=20).map(lambda b: b.replace(b"\0", b""))


@given(data=st.data(), ptype=st.sampled_from(ALL_TYPES))
def test_split_args_inverts_the_encoding(data: st.DataObject, ptype: int) -> None:
    argc = ARGC[ptype]
    args = [data.draw(nul_free) for _ in range(max(argc - 1, 0))]
    if argc:
        args.append(data.draw(st.binary(max_size=40)))
    wire = request(ptype, *args)
    assert wire[:4] == b"\0REQ"
    assert int.from_bytes(wire[4:8], "big") == ptype
    assert int.from_bytes(wire[8:12], "big") == len(wire) - 12
    assert split_args(ptype, wire[12:]) == args
    assert response(ptype, *args)[4:] == wire[4:]

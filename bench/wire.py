"""The Gearman wire format as the load generator uses it, and the generator's shared counters.

Packets are a 12-byte header (``magic``, ``type``, ``size``; big-endian) and NUL-separated
arguments. Every payload the generator submits starts with ``PREFIX``.
"""

from __future__ import annotations

import struct

from bench.config import PAYLOAD_PREFIX, Load

HDR = struct.Struct("!4sII")
PREFIX = struct.Struct("<QIB")
assert PREFIX.size == PAYLOAD_PREFIX
REQ = b"\0REQ"
RES = b"\0RES"

# packet types
CAN_DO, PRE_SLEEP, NOOP = 1, 4, 6
JOB_CREATED, NO_JOB, JOB_ASSIGN = 8, 10, 11
WORK_STATUS, WORK_COMPLETE, WORK_FAIL = 12, 13, 14
ECHO_REQ, ECHO_RES, ERROR = 16, 17, 19
SET_CLIENT_ID = 22
WORK_EXCEPTION, WORK_DATA, WORK_WARNING = 25, 28, 29
JOB_ASSIGN_UNIQ, JOB_ASSIGN_ALL = 31, 40
# (background, priority index high/normal/low) -> SUBMIT_JOB* type
SUBMIT_TYPES = {
    (False, 0): 21, (False, 1): 7, (False, 2): 33,
    (True, 0): 32, (True, 1): 18, (True, 2): 34,
}  # fmt: skip
ASSIGN_FIELDS = {JOB_ASSIGN: 2, JOB_ASSIGN_UNIQ: 3, JOB_ASSIGN_ALL: 4}

# shared counter layout: per process slot
F_SUBMITTED, F_ACKED, F_FG_DONE, F_BG_ACKED = 0, 1, 2, 3
F_BG_DISTINCT, F_BG_EXEC, F_EXEC_ALL, F_ERRORS = 4, 5, 6, 7
F_COALESCED, F_READY, F_IDLE, F_FAILED = 8, 9, 10, 11
NFIELDS = 16
# control area, after the slots
C_GO, C_STOP_SUBMIT, C_EXIT, C_GO_NS = 0, 1, 2, 3
NCTRL = 8


def packet(ptype: int, *args: bytes) -> bytes:
    body = b"\0".join(args)
    return HDR.pack(REQ, ptype, len(body)) + body


def func_names(load: Load) -> list[bytes]:
    return [f"{load.func_prefix}_f{i}".encode() for i in range(load.functions)]

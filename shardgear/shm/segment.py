"""Named POSIX shared-memory segments: the only module that touches posix_ipc and mmap.

Ownership: only the supervisor creates (``O_CREX``) and unlinks segments; children attach with
flags 0 and size 0 (a non-zero size would truncate the segment), mmap it and close the descriptor
at once. posix_ipc closes nothing on garbage collection, so every handle here is closed
explicitly or through ``with``.

Names are ``/shardgear.<port>.<supervisor pid>.<what>``. ``list_segments`` and ``sweep_stale`` read
``/dev/shm``, where Linux (glibc) keeps POSIX shared memory; on other systems they find nothing.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable
from types import TracebackType
from typing import Final

import posix_ipc

from shardgear.shm.errors import ShmError

SHM_DIR: Final = "/dev/shm"


class Segment:
    """A named POSIX shared-memory segment mapped into this process."""

    __slots__ = ("_mmap", "buf", "name", "size")

    name: str
    """The segment's name, with its leading ``/``."""
    size: int
    """Bytes mapped (the segment's size)."""
    buf: memoryview
    """A writable view of the whole mapping (released by ``close``)."""

    def __init__(self, name: str, mapping: mmap.mmap) -> None:
        """Wrap an existing mapping; use ``create`` or ``attach`` instead."""
        self.name = name
        self.size = len(mapping)
        self._mmap: mmap.mmap | None = mapping
        self.buf = memoryview(mapping)

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        """Create segment `name` of `size` bytes (zero-filled); ShmError if it already exists."""
        if size <= 0:
            raise ValueError(f"segment size must be positive: {size}")
        try:
            memory = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        except posix_ipc.ExistentialError as exc:
            raise ShmError("segment already exists", name) from exc
        except (posix_ipc.Error, OSError, ValueError) as exc:
            raise ShmError(f"cannot create segment: {exc}", name) from exc
        try:
            mapping = mmap.mmap(memory.fd, size)
        except OSError as exc:
            unlink_quietly(name)
            raise ShmError(f"cannot map segment: {exc}", name) from exc
        finally:
            memory.close_fd()
        return cls(name, mapping)

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Map the existing segment `name` (never resizing it); ShmError if it does not exist."""
        try:
            memory = posix_ipc.SharedMemory(name, 0)
        except posix_ipc.ExistentialError as exc:
            raise ShmError("no such segment", name) from exc
        except (posix_ipc.Error, OSError, ValueError) as exc:
            raise ShmError(f"cannot open segment: {exc}", name) from exc
        try:
            if memory.size <= 0:
                raise ShmError("segment is empty", name)
            mapping = mmap.mmap(memory.fd, memory.size)
        except OSError as exc:
            raise ShmError(f"cannot map segment: {exc}", name) from exc
        finally:
            memory.close_fd()
        return cls(name, mapping)

    @property
    def closed(self) -> bool:
        """True once ``close`` has been called."""
        return self._mmap is None

    def close(self) -> None:
        """Release ``buf`` and unmap the segment (idempotent; does not remove the name).

        Views derived from ``buf`` elsewhere (a ``Ring``, a board) should be released first. If
        some still exist, the unmapping is left to the garbage collector, when the last of them
        goes away, instead of raising.
        """
        mapping = self._mmap
        if mapping is None:
            return
        self._mmap = None
        try:
            self.buf.release()
        except BufferError:
            pass
        try:
            mapping.close()
        except BufferError:
            pass  # exported views remain; the mapping is unmapped when the last one is freed

    def unlink(self) -> None:
        """Remove the segment's name (the mapping stays valid until closed)."""
        unlink_quietly(self.name)

    def __enter__(self) -> Segment:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._mmap is None else f"{self.size} bytes"
        return f"<Segment {self.name} {state}>"


def unlink_quietly(name: str) -> None:
    """Remove segment `name`; do nothing if it does not exist."""
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass


def list_segments(prefix: str) -> list[str]:
    """Return the sorted names (with a leading ``/``) in /dev/shm that start with `prefix`.

    Linux only: elsewhere, or if /dev/shm cannot be read, return an empty list.
    """
    bare = prefix.lstrip("/")
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted("/" + entry for entry in entries if entry.startswith(bare))


def sweep_stale(prefix: str, alive: Callable[[int], bool]) -> list[str]:
    """Unlink the segments of dead owners; return the names removed.

    `prefix` is ``/shardgear.<port>.``; the segments looked at are named ``<prefix><pid>.<what>``,
    and each one whose ``<pid>`` is not ``alive(pid)`` is removed. Names that do not have that
    shape are left alone. Linux only (see ``list_segments``).
    """
    if not prefix.startswith("/"):
        prefix = "/" + prefix
    removed: list[str] = []
    dead: dict[int, bool] = {}
    for name in list_segments(prefix):
        pid_text, dot, _ = name[len(prefix) :].partition(".")
        if not dot or not pid_text.isdigit() or not pid_text.isascii():
            continue
        pid = int(pid_text)
        if pid not in dead:
            dead[pid] = not alive(pid)
        if dead[pid]:
            unlink_quietly(name)
            removed.append(name)
    return removed


def pid_alive(pid: int) -> bool:
    """Return True if process `pid` exists (``kill(pid, 0)``; EPERM counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


__all__ = [
    "SHM_DIR",
    "Segment",
    "ShmError",
    "list_segments",
    "pid_alive",
    "sweep_stale",
    "unlink_quietly",
]

"""The one exception of the shared-memory layer."""

from __future__ import annotations


class ShmError(Exception):
    """A shared-memory object is missing, already exists, or does not hold what it should.

    ``name`` is the segment name (``""`` for a ring or board over a private buffer).
    """

    def __init__(self, message: str, name: str = "") -> None:
        super().__init__(f"{name}: {message}" if name else message)
        self.name = name

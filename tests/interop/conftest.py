from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.interop.tools import Procs


@pytest.fixture
def procs() -> Iterator[Procs]:
    p = Procs()
    yield p
    p.stop_all()

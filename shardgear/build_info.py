"""Which build of shardgear is running: mypyc-compiled hot path, or pure Python (see setup.py)."""

from __future__ import annotations


def compiled() -> bool:
    """True if the hot-path modules run as compiled extensions (mypyc), False if pure Python."""
    from shardgear import scheduler

    return not (scheduler.__file__ or "").endswith(".py")


def describe() -> str:
    """One word for logs and ``--version``: ``compiled`` or ``pure-python``."""
    return "compiled" if compiled() else "pure-python"

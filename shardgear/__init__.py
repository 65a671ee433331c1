"""shardgear: a Gearman job server of SO_REUSEPORT front processes and shared-memory shards."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]

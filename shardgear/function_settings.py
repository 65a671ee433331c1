"""Per-function settings of the config file, applied to a shard's functions.

A shard owns its functions, so the shard applies the config's ``[functions."PATTERN"]`` tables
(``config.FunctionRule``) itself: to a function when the scheduler creates it (the scheduler's
``on_new_function`` hook calls `FunctionSettingsApplier.apply`), and to every existing function when
a reload brings new tables (`FunctionSettingsApplier.reload`).

What a reload changes: a function whose resolved setting differs between the old and the new
tables gets the new one (unset = gearmand's default: maxqueue 0 = unlimited, no retry policy). A
function whose resolved setting did not change keeps what it has, so a limit set with the admin
``maxqueue`` command survives a reload that does not touch that function's tables.
"""

from __future__ import annotations

from collections.abc import Iterable

from shardgear.config import Config, FunctionSettings
from shardgear.jobs import Function

UNLIMITED = (0, 0, 0)


class FunctionSettingsApplier:
    """Applies `config`'s per-function settings to scheduler `Function` records."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def apply(self, f: Function) -> None:
        """Give a new function its configured settings (the scheduler's on_new_function hook)."""
        if self.config.functions:
            _set(f, self.config.function_settings(f.name), None)

    def reload(self, config: Config, functions: Iterable[Function]) -> int:
        """Switch to `config`'s tables; re-apply every setting whose resolution changed for an
        existing function. Return how many functions changed."""
        old, self.config = self.config, config
        if old.functions == config.functions:
            return 0
        changed = 0
        for f in functions:
            before = old.function_settings(f.name)
            after = config.function_settings(f.name)
            if before != after:
                _set(f, after, before)
                changed += 1
        return changed


def _set(f: Function, settings: FunctionSettings, before: FunctionSettings | None) -> None:
    if settings.maxqueue is not None:
        f.maxq = list(settings.maxqueue)
    elif before is not None and before.maxqueue is not None:
        f.maxq = list(UNLIMITED)
    # No admin command sets a retry policy: the tables' is the function's. A job waiting for
    # its next attempt when its policy goes keeps waiting, then runs under gearmand's rules.
    f.retry = settings.retry

"""Build: the hot-path modules compiled with mypyc where a C toolchain exists, else pure Python.

Everything else about the package is in pyproject.toml; this file only decides the extension
modules, because that decision needs code:

* ``SHARDGEAR_PURE=1`` in the environment: no compilation (the pure-Python build).
* Otherwise the modules in COMPILED are compiled with mypyc (from the same typed Python source,
  which stays importable as plain Python) when mypyc, a C compiler and Python's headers are
  present. If any of them is missing, or compiling fails, the build says so in one line and
  installs the pure-Python modules instead: an install never fails for want of a compiler.

At run time ``shardgear.build_info.COMPILED`` says which build is running (``shardgear --version``
prints it, and the supervisor logs it at start).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The data path: the codec, the rings, the messages and routing, the front's and the shard's
# loops and the job core. Modules off the hot path (supervisor, CLI, config, client library,
# TLS, HTTP) stay plain Python; `child.py` and `__main__.py` must, since `python -m` runs them.
COMPILED = [
    "shardgear/proto/errors.py",
    "shardgear/proto/numbers.py",
    "shardgear/proto/packets.py",
    "shardgear/proto/parser.py",
    "shardgear/shm/layout.py",
    "shardgear/shm/ring.py",
    "shardgear/shm/doorbell.py",
    "shardgear/shm/channel.py",
    "shardgear/messages.py",
    "shardgear/routing.py",
    "shardgear/connection.py",
    "shardgear/replies.py",  # the base class of Front: a native class needs a native base
    "shardgear/grab.py",
    "shardgear/front_lease.py",
    "shardgear/front_workers.py",
    "shardgear/gather.py",
    "shardgear/front_recovery.py",
    "shardgear/front_large.py",
    "shardgear/front.py",
    "shardgear/jobs.py",
    "shardgear/scheduler.py",
    "shardgear/joblog.py",
    "shardgear/recovery.py",
    "shardgear/attempts.py",
    "shardgear/abilities.py",
    "shardgear/lease.py",
    "shardgear/timers.py",
    "shardgear/shard_admin.py",
    "shardgear/shard.py",
    "shardgear/stats.py",
]


def _say(message: str) -> None:
    print(f"shardgear build: {message}", file=sys.stderr)


def _can_compile() -> str | None:
    """Return why the modules cannot be compiled here, or None if they can."""
    if os.environ.get("SHARDGEAR_PURE") == "1":
        return "SHARDGEAR_PURE=1"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc})"
    include = sysconfig.get_paths().get("include", "")
    if not os.path.exists(os.path.join(include, "Python.h")):
        return f"no Python headers ({include}/Python.h; Debian: apt-get install python3-dev)"
    return None


class OptionalBuildExt(build_ext):
    """build_ext that falls back to the pure-Python modules if compiling fails.

    mypyc builds one shared library plus a small shim per module; a half-built set would not
    import, so on any failure every extension built so far is removed.
    """

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # CompileError, LinkError, DistutilsError...
            _say(f"compiling failed ({exc}); installing the pure-Python modules")
            for path in self.get_outputs():
                if os.path.exists(path):
                    os.remove(path)
            self.extensions = []


def _ext_modules() -> list[Any]:
    why = _can_compile()
    if why is not None:
        _say(f"pure-Python build: {why}")
        return []
    from mypyc.build import mypycify

    _say(f"compiling {len(COMPILED)} modules with mypyc")
    try:
        return mypycify(COMPILED, opt_level="3", debug_level="0")
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error it cannot compile
        _say(f"mypyc failed ({exc!r}); installing the pure-Python modules")
        return []


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": OptionalBuildExt})

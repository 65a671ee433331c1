"""The ``shardgear`` command's first lines (``python -m shardgear`` too): the stop and reload
signals are held from here until the supervisor's handlers are in place.

Importing the server takes about 0.1 s. Before this, a SIGHUP in that time (``systemctl reload``,
``kill -HUP`` from a log rotation right after a restart) killed the process, which is SIGHUP's
default action, and a Ctrl-C printed a KeyboardInterrupt traceback. Now such a signal stays
pending, and `shardgear.supervisor.Supervisor.run` unblocks it once its handlers are installed:
a SIGHUP then reloads and a SIGTERM or SIGINT stops gracefully, as at any later moment. Only the
interpreter's own start, before this module runs, is still exposed.
"""

from __future__ import annotations

import signal

HELD = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGHUP})
"""The supervisor's signals (its SIGCHLD aside: that one has no deadly default)."""


def main() -> int:
    """Entry point of the ``shardgear`` command: hold `HELD`, then `shardgear.cli.main`."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    from shardgear.cli import main as cli_main

    return cli_main()

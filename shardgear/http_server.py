"""The HTTP process (``--http ADDR:PORT``): serves `shardgear.http_api` with waitress.

The supervisor starts it after the fronts, as it starts them (``python -m shardgear.child http``),
and restarts it if it dies. It binds the HTTP listener, reports READY in its control block, and
serves until SIGTERM; SIGUSR1 (a graceful stop of the server) changes nothing here: the fronts
stop accepting, so new submissions fail with 503 while requests in flight get their results.

waitress (the Pylons project's pure-Python WSGI server) runs the application: a foreground HTTP
request blocks one of its threads (``--http-threads``) until its job ends, just as gearmand's
plugin holds the connection, and a separate process keeps those threads away from the fronts'
event loops. Its ``client_disconnected`` hook lets a request whose client left give up its job.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any, NoReturn

import waitress

from shardgear.config import Config
from shardgear.gearlink import target_address
from shardgear.http_api import SERVER_HEADER, HttpApi, Sampler
from shardgear.shm import layout

log = logging.getLogger("shardgear.http")


def _stop(signum: int, frame: object) -> NoReturn:
    raise SystemExit(0)


def build(config: Config, beat: Any = None) -> tuple[HttpApi, Sampler]:
    """The application and its throughput sampler for `config` (not started)."""
    address = target_address(config.listen, config.port)
    sampler = Sampler(address, beat)
    return HttpApi(address, sampler), sampler


def run(config: Config, control: memoryview | None = None, early: list[int] | None = None) -> None:
    """Bind ``config.http`` and serve until SIGTERM. Raises OSError if the address cannot be
    bound (the child then exits with EXIT_BOOT_ERROR)."""
    ticks = [0]

    def beat() -> None:
        if control is not None:
            ticks[0] += 1
            control[layout.CTRL_HEARTBEAT] = ticks[0]

    app, sampler = build(config, beat)
    server = waitress.create_server(
        app,
        listen=config.http,
        threads=config.http_threads,
        ident=SERVER_HEADER,
        max_request_body_size=config.max_packet_size,
        channel_request_lookahead=1,  # lets a waiting request notice that its client left
        clear_untrusted_proxy_headers=True,
    )
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if early and signal.SIGTERM in early:
        return
    sampler.start()
    if control is not None:
        control[layout.CTRL_PID] = os.getpid()
        control[layout.CTRL_STATE] = layout.CHILD_READY
    log.info("HTTP API and dashboard on http://%s/_shardgear/", config.http)
    try:
        server.run()
    except SystemExit:
        pass
    finally:
        sampler.stop()
        server.close()

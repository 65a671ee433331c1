"""The HTTP process (``--http ADDR:PORT``): serves `shardgear.http_api` with waitress.

The supervisor starts it with the fronts and shards (``python -m shardgear.child http``) and
restarts it if it dies. It binds the HTTP listener, reports READY in its control block, and
serves until SIGTERM; SIGUSR1 (a graceful stop of the server) changes nothing here: the fronts
stop accepting, so new submissions fail with 503 while requests in flight get their results.

waitress (the Pylons project's pure-Python WSGI server) runs the application: a foreground HTTP
request blocks one of its threads (``--http-threads``) until its job ends, just as gearmand's
plugin holds the connection, and a separate process keeps those threads away from the fronts'
event loops. Its ``client_disconnected`` hook lets a request whose client left give up its job.

Besides the listener, the process reads two shared-memory segments, from the sampler's thread
(`http_api.Sampler`), once a second: the stats segment, whose per-function counters of the
shards (the same as the metrics') give the dashboard its throughput (`result_totals`), and the
settings segment, to apply a reload (the log level, the access rules) and acknowledge it like
every child. The access rules (``[access]``) are applied here to HTTP clients by their address
(`http_json.JsonApi.check_access`): the fronts see only this process's loopback connections.

With ``--metrics`` at the same ADDR:PORT as ``--http`` the two share this listener: the
supervisor then serves its metrics on loopback only and names that address in
`httpd.METRICS_UPSTREAM_ENV`, and ``/metrics`` here forwards to it (`http_api.MetricsProxy`).
"""

from __future__ import annotations

import logging
import os
import signal
from contextlib import ExitStack
from typing import NoReturn

import waitress

from shardgear import logs, stats
from shardgear.access import AccessPolicy
from shardgear.config import Config
from shardgear.gearlink import target_address
from shardgear.http_api import SERVER_HEADER, HttpApi, MetricsProxy, Sampler
from shardgear.httpd import METRICS_UPSTREAM_ENV
from shardgear.instance import Instance
from shardgear.live_config import SettingsReader
from shardgear.shm import layout
from shardgear.shm.segment import Segment

log = logging.getLogger("shardgear.http")

HTTP_MAX_BODY = 256 * 1024 * 1024
"""The largest HTTP request body, unless ``--max-packet-size`` is smaller: an HTTP submission is
read whole by one of ``--http-threads``, so gearmand's 4 GiB packet size would let them hold
that much each. A larger payload goes over the Gearman port."""

_RESULTS = (stats.COMPLETED, stats.FAILED, stats.EXCEPTION)


def _stop(signum: int, frame: object) -> NoReturn:
    raise SystemExit(0)


def result_totals(reader: stats.StatsReader, shards: int) -> dict[str, int]:
    """{function: jobs whose worker sent WORK_COMPLETE, WORK_FAIL or WORK_EXCEPTION} from the
    shards' function tables (``shardgear_jobs_{completed,failed,exception}_total`` of the
    metrics, since each shard started). Names as the admin protocol's, decoded as UTF-8."""
    totals: dict[str, int] = {}
    for shard in range(shards):
        for key, row in reader.table(shard).items():
            name = key.encode("latin-1").decode("utf-8", errors="replace")
            totals[name] = totals.get(name, 0) + sum(
                row[stats.R_COUNTS + p * stats.NK + k] for p in range(3) for k in _RESULTS
            )
    return totals


def run(
    config: Config,
    instance: Instance,
    control: memoryview | None = None,
    early: list[int] | None = None,
) -> None:
    """Bind ``config.http`` and serve until SIGTERM. Raises OSError if the address cannot be
    bound or a segment attached (the child then exits with EXIT_BOOT_ERROR)."""
    with ExitStack() as stack:
        stats_seg = Segment.attach(instance.stats)
        stack.callback(stats_seg.close)
        reader = stats.StatsReader(stats_seg.buf)
        stack.callback(reader.release)
        settings_seg = Segment.attach(instance.settings)
        stack.callback(settings_seg.close)
        settings = SettingsReader(settings_seg.buf)
        stack.callback(settings.release)
        ticks = 0

        def beat() -> None:
            """Once a second, from the sampler's thread: the heartbeat, and a reload."""
            nonlocal ticks
            if control is None:
                return
            ticks += 1
            control[layout.CTRL_HEARTBEAT] = ticks
            if settings.changed():
                got = settings.read()
                if got is not None:
                    generation, new = got
                    logs.set_level(new.log_level)
                    app.policy = AccessPolicy(new.access)
                    control[layout.CTRL_SETTINGS] = generation

        sampler = Sampler(lambda: result_totals(reader, config.shards), beat)
        address = target_address(config.listen, config.port)
        app = HttpApi(address, sampler, AccessPolicy(config.access))
        upstream = os.environ.get(METRICS_UPSTREAM_ENV)
        if upstream:
            app.mount("/metrics", MetricsProxy(upstream))
        server = waitress.create_server(
            app,
            listen=config.http,
            threads=config.http_threads,
            ident=SERVER_HEADER,
            max_request_body_size=min(config.max_packet_size, HTTP_MAX_BODY),
            channel_request_lookahead=1,  # lets a waiting request notice that its client left
            clear_untrusted_proxy_headers=True,
        )
        stack.callback(server.close)
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        if early and signal.SIGTERM in early:
            return
        sampler.start()
        stack.callback(sampler.stop)
        if control is not None:
            control[layout.CTRL_PID] = os.getpid()
            control[layout.CTRL_STATE] = layout.CHILD_READY
        log.info("HTTP API and dashboard on http://%s/_shardgear/", config.http)
        try:
            server.run()
        except SystemExit:
            pass

"""Command line: argv -> Config -> supervisor.run(). Nothing else lives here."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from shardgear import __version__
from shardgear.config import (
    LOG_LEVELS,
    MIB,
    Config,
    cpu_count,
    default_fronts,
    default_shards,
    default_state_dir,
)
from shardgear.retries import POLICY_KEYS, parse_policy, parse_spec


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage dump: "shardgear: error: ..." and status 2.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _size(text: str) -> int:
    """A byte count, with an optional K, M or G suffix (powers of 1024)."""
    units = {"k": 1024, "m": MIB, "g": 1024 * MIB}
    try:
        if text and text[-1].lower() in units:
            value = int(float(text[:-1]) * units[text[-1].lower()])
        else:
            value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


class _VersionAction(argparse.Action):
    """``--version``: the version and which build runs (compiled or pure Python), imported only
    when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from shardgear.build_info import describe

        print(f"shardgear {__version__} ({describe()})")
        parser.exit(0)


def _address_ok(address: str) -> bool:
    """``ADDR:PORT`` or ``[IPV6]:PORT`` with a port from 1 to 65535."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= 65535:
        return False
    return host.startswith("[") == host.endswith("]")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (also used to document the flags)."""
    cpus = cpu_count()
    p = _Parser(
        prog="shardgear",
        description="A Gearman job server: front processes accept connections on one port "
        "(SO_REUSEPORT) and hand work to shard processes through shared-memory rings.",
    )
    p.add_argument(
        "-L",
        "--listen",
        default="",
        metavar="ADDR",
        help="address to listen on (default: every interface, as gearmand)",
    )
    p.add_argument("-p", "--port", type=int, default=4730, help="TCP port (default: 4730)")
    p.add_argument(
        "--fronts",
        type=_positive,
        default=default_fronts(cpus),
        metavar="N",
        help=f"front processes that accept and parse (default: {default_fronts(cpus)}"
        f" = half of the {cpus} CPUs)",
    )
    p.add_argument(
        "--shards",
        type=_positive,
        default=default_shards(cpus),
        metavar="N",
        help=f"shard processes that own the queues (default: {default_shards(cpus)}"
        f" = half of the {cpus} CPUs)",
    )
    p.add_argument(
        "-j",
        "--job-retries",
        type=_non_negative,
        default=0,
        metavar="N",
        help="attempts before a job whose worker died or timed out is dropped and "
        "its clients get WORK_FAIL (default: 0 = unlimited)",
    )
    p.add_argument(
        "--exceptions",
        action="store_true",
        help="turn on the 'exceptions' option for every connection",
    )
    p.add_argument(
        "--job-handle-prefix",
        default=None,
        metavar="PREFIX",
        help="job handle prefix (default: H:<host name>)",
    )
    p.add_argument(
        "-w",
        "--worker-wakeup",
        type=_non_negative,
        default=0,
        metavar="N",
        help="sleeping workers woken per queued job (default: 0 = all)",
    )
    p.add_argument(
        "--max-packet-size",
        type=_size,
        default=256 * MIB,
        metavar="BYTES",
        help="largest packet accepted; a bigger one closes the connection (default: 256M)",
    )
    p.add_argument(
        "--max-output-buffer",
        type=_size,
        default=None,
        metavar="BYTES",
        help="bytes a connection may leave unread before it is closed "
        "(default: max packet size + 16M)",
    )
    p.add_argument(
        "--ring-size",
        type=_size,
        default=1 * MIB,
        metavar="BYTES",
        help="size of each front<->shard shared-memory ring (default: 1M)",
    )
    p.add_argument(
        "--journal-size",
        type=_size,
        default=None,
        metavar="BYTES",
        help="ignored (kept so that existing command lines still work): the shared-memory "
        "journal became the job log, which grows as needed",
    )
    p.add_argument("-b", "--backlog", type=_positive, default=1024, help="listen() backlog")
    p.add_argument(
        "--store",
        choices=("log", "none", "sqlite"),
        default="log",
        help="log (the default): each shard's job log lives in --state-dir, so background jobs "
        "survive a restart; none: in /dev/shm, for shard crashes only. sqlite: the former "
        "store, now the same as log (an existing sqlite store is imported at start)",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        metavar="DIR",
        help=f"directory of the job logs (default: {default_state_dir()})",
    )
    p.add_argument(
        "--store-sync",
        choices=("normal", "full"),
        default="normal",
        help="normal: a stored job survives a crash of any shardgear process; full: also a "
        "power loss, at an fdatasync per loop turn that stores jobs (default: normal)",
    )
    p.add_argument(
        "--retry",
        action="append",
        default=[],
        metavar="FUNCTION:POLICY",
        help="a retry policy for a function name or glob, e.g. 'resize_*:attempts=5,"
        "delay=10s,max-delay=1h' (keys: " + ", ".join(POLICY_KEYS) + "; repeat the flag for "
        "more functions; the exact name wins over the first matching glob)",
    )
    p.add_argument(
        "--http",
        default="",
        metavar="ADDR:PORT",
        help="serve gearmand's HTTP protocol, a JSON API and a dashboard there (default: off; "
        "[::]:PORT or *:PORT for every interface)",
    )
    p.add_argument(
        "--http-threads",
        type=_positive,
        default=64,
        metavar="N",
        help="HTTP requests served at once; each foreground submission holds one until its job "
        "ends (default: 64)",
    )
    p.add_argument(
        "--graceful-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a stop (SIGTERM, shutdown graceful) waits for running jobs (default: 30)",
    )
    p.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default="warning",
        type=str.lower,
        help="log level (default: warning)",
    )
    p.add_argument(
        "-V",
        "--version",
        action=_VersionAction,
        nargs=0,
        help="print the version and build, then exit",
    )
    return p


def parse_config(argv: list[str] | None = None) -> Config:
    """Parse `argv` (default: sys.argv[1:]) into a Config; exits with status 2 on a bad flag."""
    parser = build_parser()
    a = parser.parse_args(argv)
    if not 0 <= a.port <= 65535:
        parser.error(f"argument --port: not a port: {a.port}")
    if a.job_retries > 255:
        parser.error("argument --job-retries: at most 255")
    if a.ring_size < 64 * 1024:
        parser.error("argument --ring-size: at least 64K")
    if a.journal_size is not None:
        print("shardgear: --journal-size is ignored: the job log grows as needed", file=sys.stderr)
    if a.http and not _address_ok(a.http):
        parser.error(f"argument --http: expected ADDR:PORT, got {a.http!r}")
    rules = []
    for text in a.retry:
        pattern, sep, spec = text.partition(":")
        try:
            if not sep or not pattern:
                raise ValueError("expected FUNCTION:POLICY")
            parse_policy(parse_spec(spec))
        except ValueError as exc:
            parser.error(f"argument --retry {text!r}: {exc}")
        rules.append((pattern, spec))
    kwargs = dict(
        listen=a.listen,
        port=a.port,
        fronts=a.fronts,
        shards=a.shards,
        job_retries=a.job_retries,
        exceptions=a.exceptions,
        worker_wakeup=a.worker_wakeup,
        max_packet_size=a.max_packet_size,
        max_output_buffer=a.max_output_buffer or 0,
        ring_size=a.ring_size,
        backlog=a.backlog,
        graceful_timeout=a.graceful_timeout,
        log_level=a.log_level,
        store="none" if a.store == "none" else "log",
        store_sync=a.store_sync,
        retry=tuple(rules),
        http=a.http,
        http_threads=a.http_threads,
    )
    if a.state_dir is not None:
        kwargs["state_dir"] = a.state_dir
    if a.job_handle_prefix is not None:
        if not 0 < len(a.job_handle_prefix.encode()) <= 36:
            parser.error("argument --job-handle-prefix: 1 to 36 bytes")
        kwargs["job_handle_prefix"] = a.job_handle_prefix
    return Config(**kwargs)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``shardgear`` command."""
    config = parse_config(argv)
    from shardgear.supervisor import run

    return run(config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Command line: argv and the --config file -> Config -> supervisor.run(). Nothing else lives here.

Every flag but --config, --check-config, --help and --version is a setting of
``config_file.SETTINGS`` and parses its value with that setting's parser, so a flag and its
config-file key accept the same values. Defaults are Config's (argparse records only the flags that
were given), so a flag overrides the file only when it is on the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from shardgear import __version__
from shardgear.config import (
    LOG_FORMATS,
    LOG_LEVELS,
    Config,
    cpu_count,
    default_fronts,
    default_shards,
    default_state_dir,
)
from shardgear.config_file import BY_KEY, ConfigError, build_config

#: Flags that are not settings (they have no config-file key).
NOT_SETTINGS = frozenset({"config", "check_config", "help", "version", "journal_size"})


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage dump: "shardgear: error: ..." and status 2.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _flag_type(key: str) -> Callable[[str], Any]:
    """The argparse type of flag --KEY: the parser the config file uses for KEY."""
    parse = BY_KEY[key].parse

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = key  # argparse names the type in some messages
    return convert


class _VersionAction(argparse.Action):
    """``--version``: the version and which build runs (compiled or pure Python), imported only
    when asked for."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        from shardgear.build_info import describe

        print(f"shardgear {__version__} ({describe()})")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser (also used to document the flags)."""
    cpus = cpu_count()
    p = _Parser(
        prog="shardgear",
        description="A Gearman job server: front processes accept connections on one port "
        "(SO_REUSEPORT) and hand work to shard processes through shared-memory rings.",
        argument_default=argparse.SUPPRESS,
    )

    def setting(*names: str, help: str, **kwargs: Any) -> None:
        key = names[-1].removeprefix("--")
        if "action" not in kwargs:
            kwargs["type"] = _flag_type(key)
        p.add_argument(*names, dest=BY_KEY[key].field, help=help, **kwargs)

    p.add_argument(
        "--config",
        metavar="FILE",
        help="TOML config file: every flag has a key of the same name (flags override it), "
        'plus per-function settings in [functions."NAME"] tables and access rules in [access]; '
        "SIGHUP re-reads it",
    )
    p.add_argument(
        "--check-config",
        action="store_true",
        help="check the flags and the --config file, print the first problem, and exit "
        "(status 0 if there is none, 2 otherwise)",
    )
    setting(
        "-L",
        "--listen",
        metavar="ADDR",
        help="address to listen on (default: every interface, as gearmand)",
    )
    setting("-p", "--port", metavar="N", help="TCP port (default: 4730)")
    setting(
        "--fronts",
        metavar="N",
        help=f"front processes that accept and parse (default: {default_fronts(cpus)}"
        f" = half of the {cpus} CPUs)",
    )
    setting(
        "--shards",
        metavar="N",
        help=f"shard processes that own the queues (default: {default_shards(cpus)}"
        f" = half of the {cpus} CPUs)",
    )
    setting(
        "-j",
        "--job-retries",
        metavar="N",
        help="attempts before a job whose worker died or timed out is dropped and "
        "its clients get WORK_FAIL (default: 0 = unlimited)",
    )
    setting(
        "--exceptions",
        action=argparse.BooleanOptionalAction,
        help="turn on the 'exceptions' option for every connection (default: off)",
    )
    setting(
        "--job-handle-prefix",
        metavar="PREFIX",
        help="job handle prefix (default: H:<host name>)",
    )
    setting(
        "-w",
        "--worker-wakeup",
        metavar="N",
        help="sleeping workers woken per queued job (default: 0 = all)",
    )
    setting(
        "--grab-lease",
        action=argparse.BooleanOptionalAction,
        help="a shard may hand a worker's front the worker's next job with the current one, so "
        "that the front answers its next GRAB_JOB at once; unused, it goes back (default: on)",
    )
    setting(
        "--max-packet-size",
        metavar="BYTES",
        help="largest packet accepted, at most 4294967295; a bigger one is answered with "
        "ERROR ARGUMENT_TOO_LARGE and the connection is closed (default: 4294967295, "
        "gearmand's)",
    )
    setting(
        "--max-output-buffer",
        metavar="BYTES",
        help="bytes a connection may leave unread before it is closed, besides the one large "
        "packet it is being sent (default: 256M)",
    )
    setting(
        "--max-total-output",
        metavar="BYTES",
        help="bytes all connections of one front may leave unread before those with the most "
        "are closed (default: twice the per-connection limit)",
    )
    setting(
        "--max-total-input",
        metavar="BYTES",
        help="bytes of unfinished requests all connections of one front may hold before those "
        "holding the most are closed (default: twice the max packet size, at most 4G, at least "
        "one max packet)",
    )
    setting(
        "--ring-size",
        metavar="BYTES",
        help="size of each front<->shard shared-memory ring (default: 1M)",
    )
    p.add_argument(
        "--journal-size",
        metavar="BYTES",
        help="ignored: the job log grows as needed (kept so that old command lines still work)",
    )
    setting("-b", "--backlog", metavar="N", help="listen() backlog (default: 1024)")
    setting(
        "--store",
        metavar="log|none",
        help="log (the default): each shard's job log lives in --state-dir, so background jobs "
        "survive a restart; none: in /dev/shm, for shard crashes only. sqlite: the former "
        "store, now the same as log (an existing sqlite store is imported at start)",
    )
    setting(
        "--state-dir",
        metavar="DIR",
        help=f"directory of the job store (default: {default_state_dir()})",
    )
    setting(
        "--store-sync",
        metavar="normal|full",
        help="normal: a stored job survives a crash of any shardgear process; full: also a "
        "power loss, at a cost per batch (default: normal)",
    )
    setting(
        "--http",
        metavar="ADDR:PORT",
        help="serve gearmand's HTTP protocol, a JSON API and a dashboard on ADDR:PORT "
        "(default: off; [::]:PORT or *:PORT for every interface); the same ADDR:PORT as "
        "--metrics shares one listener",
    )
    setting(
        "--http-threads",
        metavar="N",
        help="HTTP requests served at once; each foreground submission holds one until its job "
        "ends (default: 64)",
    )
    setting(
        "--graceful-timeout",
        metavar="SECONDS",
        help="how long a stop (SIGTERM, shutdown graceful) waits for running jobs (default: 30)",
    )
    setting(
        "--heartbeat-timeout",
        metavar="SECONDS",
        help="a front or shard whose loop stops for this long is killed and restarted "
        "(default: 20; 0 = never)",
    )
    setting(
        "--log-level",
        metavar="LEVEL",
        help=f"{', '.join(LOG_LEVELS)} (default: notice)",
    )
    setting(
        "--log-format",
        metavar="FORMAT",
        help=f"{', '.join(LOG_FORMATS)}: journal = a syslog <N> priority per line, no timestamp, "
        "tracebacks on one line; auto = journal when stderr is the systemd journal "
        "(default: auto)",
    )
    setting(
        "--metrics",
        metavar="ADDR:PORT",
        help="serve Prometheus metrics over HTTP on ADDR:PORT, e.g. 127.0.0.1:9730 "
        "(default: off)",
    )
    setting(
        "--tls-cert",
        metavar="FILE",
        help="the server's certificate chain (PEM); turns TLS on (TLS 1.2 and later): on "
        "--port, or with --tls-port on a port of its own",
    )
    setting("--tls-key", metavar="FILE", help="its private key (default: in --tls-cert)")
    setting(
        "--tls-ca",
        metavar="FILE",
        help="CA certificates (PEM) that sign client certificates; with it, a client must "
        "present one they signed",
    )
    setting(
        "--tls-client-cert",
        metavar="required|optional|none",
        help="client certificates: required (the default with --tls-ca), optional (verified "
        "when sent), none (the default without --tls-ca)",
    )
    setting(
        "--tls-port",
        metavar="N",
        help="serve TLS on a port of its own beside the plain-text --port (default: 0 = TLS on "
        "--port itself)",
    )
    setting(
        "--tls-listen",
        metavar="ADDR",
        help="address of the --tls-port listener (default: every interface)",
    )
    setting(
        "--tls-handshake-timeout",
        metavar="SECONDS",
        help="a client that has not finished its TLS handshake by then is cut (default: 10)",
    )
    setting(
        "--max-connections", metavar="N", help="connections in total (default: 65536; 0 = no limit)"
    )
    setting(
        "--max-connections-per-peer",
        metavar="N",
        help="connections from one peer address (default: 4096; 0 = no limit)",
    )
    setting(
        "--max-functions",
        metavar="N",
        help="functions the server knows (default: 100000; 0 = no limit)",
    )
    setting(
        "--max-function-name",
        metavar="BYTES",
        help="longest function name (default: 512, libgearman's; 0 = no limit)",
    )
    setting(
        "--max-queued-bytes",
        metavar="BYTES",
        help="payload bytes of one function's jobs, queued or running (default: 1G; 0 = no limit)",
    )
    setting(
        "--max-schedules",
        metavar="N",
        help="cron schedules (SUBMIT_JOB_SCHED) the server keeps (default: 10000; 0 = no limit)",
    )
    p.add_argument(
        "-V",
        "--version",
        action=_VersionAction,
        nargs=0,
        help="print the version and build, then exit",
    )
    return p


def parse_args(argv: list[str] | None = None) -> tuple[str | None, dict[str, Any], bool]:
    """Parse `argv` (default: sys.argv[1:]) into (config file, Config field -> value of each flag
    given, --check-config); exits with status 2 on a bad flag."""
    a = vars(build_parser().parse_args(argv))
    if a.pop("journal_size", None) is not None:
        print("shardgear: --journal-size is ignored: the job log grows as needed", file=sys.stderr)
    path = a.pop("config", None)
    check = bool(a.pop("check_config", False))
    return path, a, check


def parse_config(argv: list[str] | None = None) -> Config:
    """Parse `argv` and the --config file into a Config; exits with status 2 on a bad flag or a
    bad file (one line: ``shardgear: error: FILE:LINE: reason``)."""
    path, flags, _check = parse_args(argv)
    return _load(path, flags)


def _load(path: str | None, flags: dict[str, Any]) -> Config:
    try:
        return build_config(path, flags)
    except ConfigError as exc:
        sys.stderr.write(f"shardgear: error: {exc}\n")
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``shardgear`` command."""
    path, flags, check = parse_args(argv)
    config = _load(path, flags)
    if check:
        print(f"{path or 'the flags'}: OK")
        return 0
    from shardgear.supervisor import run

    def reload() -> Config:
        """The config as the file says now, the flags still on top; ConfigError if it is bad."""
        return build_config(path, flags)

    return run(config, reload if path else None)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""shardgear-bench: a Gearman load generator (raw protocol, several processes).

Three things it does (see bench/README.md for examples):
* one run against one or more running servers (``TARGET ...``);
* ``--compare SPEC ...`` / ``--scaling FxS ...``: the same load against several servers, started
  here or already running, in alternating rounds, with medians and ratios;
* ``--memory N``: N queued background jobs, no workers: server memory per queued job.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

import orjson

from bench import report
from bench.config import GRABS, MODES, UNIQUE_MODES, Load, parse_priority, parse_range, parse_target
from bench.memory import drain, measure_memory
from bench.runner import run_load
from bench.servers import DEFAULT_GEARMAND, Server, ServerSpec, parse_spec, start


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shardgear-bench",
        description="Gearman load generator: raw protocol, several processes, bounded runs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "targets",
        nargs="*",
        default=[],
        metavar="HOST:PORT",
        help="running server(s) to load (default 127.0.0.1:4730); connections are "
        "spread over them round-robin",
    )
    g = p.add_argument_group("load")
    g.add_argument("-c", "--clients", type=int, default=4, help="client connections")
    g.add_argument("-i", "--inflight", type=int, default=100, help="jobs in flight per client")
    g.add_argument(
        "-w", "--workers", type=int, default=16, help="worker connections (one job at a time each)"
    )
    g.add_argument("-f", "--functions", type=int, default=4, help="number of functions")
    g.add_argument("--func-prefix", default="bench", help="function names are PREFIX_f0 ...")
    g.add_argument("-s", "--payload", default="64", help="payload bytes: N or MIN-MAX (>= 16)")
    g.add_argument("--result-size", type=int, default=0, help="bytes in each WORK_COMPLETE")
    g.add_argument(
        "-m", "--mode", choices=MODES, default="fg", help="foreground, background or mixed jobs"
    )
    g.add_argument("--bg-share", type=float, default=0.5, help="background share in mixed mode")
    g.add_argument(
        "-p",
        "--priority",
        default="normal",
        help="priority mix, e.g. normal or high=1,normal=8,low=1",
    )
    g.add_argument(
        "-u",
        "--unique",
        choices=UNIQUE_MODES,
        default="none",
        help="unique keys: none, all distinct, or a share that coalesces",
    )
    g.add_argument(
        "--coalesce-share",
        type=float,
        default=0.2,
        help="with --unique coalesce: share of submissions that reuse the unique of "
        "the connection's previous submission",
    )
    g.add_argument(
        "-g",
        "--grab",
        choices=tuple(GRABS),
        default="job",
        help="GRAB_JOB, GRAB_JOB_UNIQ or GRAB_JOB_ALL",
    )
    g.add_argument("--work-time", default="0", help="simulated work ms per job: N or MIN-MAX")
    g.add_argument(
        "--bg-backlog",
        type=int,
        default=None,
        help="soft cap on queued, unexecuted background jobs (default clients x "
        "inflight; 0 = none)",
    )
    amount = g.add_mutually_exclusive_group()
    amount.add_argument(
        "-n",
        "--jobs",
        type=int,
        default=None,
        help="jobs per run (default 100000 unless --duration)",
    )
    amount.add_argument("-d", "--duration", type=float, default=None, help="seconds per run")
    r = p.add_argument_group("run")
    r.add_argument("-P", "--procs", type=int, default=2, help="generator processes")
    r.add_argument("--max-time", type=float, default=300.0, help="hard limit per run, seconds")
    r.add_argument(
        "--drain-timeout",
        type=float,
        default=10.0,
        help="after --duration, wait at most this for outstanding jobs",
    )
    r.add_argument(
        "--stall-timeout",
        type=float,
        default=10.0,
        help="end a run after this many seconds without progress",
    )
    r.add_argument("--seed", type=int, default=1)
    r.add_argument(
        "--server-pids",
        nargs="+",
        default=[],
        metavar="PID",
        help="server pids (comma or space separated) for CPU and memory; each "
        "includes its descendants",
    )
    t = p.add_argument_group("TLS (against running servers; --compare starts its own: +tls)")
    t.add_argument("--tls-ca", default="", metavar="FILE", help="CA of the server's certificate")
    t.add_argument("--tls-cert", default="", metavar="FILE", help="client certificate")
    t.add_argument("--tls-key", default="", metavar="FILE", help="its key")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print the result as JSON (orjson)")
    o.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="live progress line (default: when stderr is a terminal)",
    )
    o.add_argument("--plot", metavar="FILE.png", help="plot compare/scaling results (matplotlib)")
    m = p.add_argument_group("compare, scaling, memory")
    m.add_argument(
        "--compare",
        nargs="+",
        metavar="SPEC",
        help="servers to compare: gearmand[:THREADS], shardgear[:FxS], HOST:PORT[@PID,...]",
    )
    m.add_argument(
        "--scaling",
        nargs="+",
        metavar="FxS",
        help="start shardgear with each fronts x shards combination, e.g. 1x1 2x2",
    )
    m.add_argument("--rounds", type=int, default=3, help="rounds per server (compare, scaling)")
    m.add_argument("--warmup", type=int, default=0, help="unrecorded warm-up jobs per server")
    m.add_argument(
        "--memory",
        type=int,
        metavar="N",
        help="queue N background jobs without workers and report memory per job",
    )
    m.add_argument("--gearmand", default=DEFAULT_GEARMAND, help="gearmand binary to start")
    m.add_argument(
        "--shardgear-cmd",
        default=None,
        help="command that starts shardgear (default: this python -m shardgear); "
        "--listen/--port/--fronts/--shards are appended",
    )
    return p


def load_from_args(
    a: argparse.Namespace, targets: Sequence[tuple[str, int]], tls: dict[str, str] | None = None
) -> Load:
    jobs = a.jobs if a.jobs is not None or a.duration is not None else 100_000
    if tls is None:
        tls = {"tls_ca": a.tls_ca, "tls_cert": a.tls_cert, "tls_key": a.tls_key}
    return Load(
        **tls,
        targets=tuple(targets),
        clients=a.clients,
        inflight=a.inflight,
        workers=a.workers,
        functions=a.functions,
        func_prefix=a.func_prefix,
        payload=parse_range(a.payload),
        result_size=a.result_size,
        mode=a.mode,
        bg_share=a.bg_share,
        priority=parse_priority(a.priority),
        unique=a.unique,
        coalesce_share=a.coalesce_share,
        grab=a.grab,
        work_time_ms=parse_range(a.work_time, float),
        jobs=jobs,
        duration=a.duration,
        bg_backlog=a.bg_backlog,
        procs=a.procs,
        max_time=a.max_time,
        drain_timeout=a.drain_timeout,
        stall_timeout=a.stall_timeout,
        seed=a.seed,
    )


def parse_pids(items: Sequence[str]) -> tuple[int, ...]:
    return tuple(int(x) for item in items for x in item.split(",") if x.strip())


def ok(result: dict[str, Any]) -> bool:
    return result["outcome"] == "complete" and result["errors"] == 0


def emit(a: argparse.Namespace, data: Any, text: str) -> None:
    if a.json:
        sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        print(text)
    sys.stdout.flush()


def cmd_single(a: argparse.Namespace, progress: bool) -> int:
    targets = [parse_target(t) for t in a.targets] or [("127.0.0.1", 4730)]
    load = load_from_args(a, targets)
    result = run_load(load, server_pids=parse_pids(a.server_pids), progress=progress)
    emit(a, result, report.format_run(result))
    return 0 if ok(result) else 1


def server_specs(a: argparse.Namespace) -> list[ServerSpec]:
    # the first server is the base of the ratios: compare specs first, then the scaling grid
    specs = [parse_spec(s) for s in a.compare or []]
    specs += [parse_spec(f"shardgear:{c}") for c in a.scaling or []]
    if not specs:  # memory mode on running targets
        pids = parse_pids(a.server_pids)
        specs = [dataclasses.replace(parse_spec(t), pids=pids) for t in a.targets]
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"shardgear-bench: a server is listed twice: {labels}")
    return specs


def start_all(stack: ExitStack, a: argparse.Namespace, specs: Sequence[ServerSpec]) -> list[Server]:
    servers = []
    for spec in specs:
        server = start(spec, gearmand=a.gearmand, shardgear_cmd=a.shardgear_cmd)
        stack.callback(server.stop)
        servers.append(server)
        print(
            f"# {server.label}: {server.host}:{server.port} pids {list(server.pids)}",
            file=sys.stderr,
        )
    return servers


def cmd_compare(a: argparse.Namespace, progress: bool) -> int:
    if a.plot:
        report.check_plotting()
    specs = server_specs(a)
    rounds: list[dict[str, Any]] = []
    run_id = 1
    with ExitStack() as stack:
        servers = start_all(stack, a, specs)
        if a.warmup > 0:
            for s in servers:
                base = load_from_args(a, [s.target], s.client_tls())
                warm = dataclasses.replace(base, jobs=a.warmup, duration=None, run_id=run_id)
                run_id += 1
                run_load(warm, server_pids=s.pids, progress=progress, label=f"{s.label} warm-up ")
        for rnd in range(a.rounds):
            order = servers if rnd % 2 == 0 else servers[::-1]
            for s in order:
                load = dataclasses.replace(
                    load_from_args(a, [s.target], s.client_tls()), run_id=run_id
                )
                run_id += 1
                res = run_load(load, server_pids=s.pids, progress=progress, label=f"{s.label} ")
                res["label"] = s.label
                res["round"] = rnd
                rounds.append(res)
                print(
                    f"# round {rnd + 1}/{a.rounds} {s.label}: {res['jobs_per_s']:,.0f} jobs/s "
                    f"p99 {res['latency_ms'].get('p99')} ms errors {res['errors']} "
                    f"({res['outcome']})",
                    file=sys.stderr,
                )
    rows = report.compare_rows([s.label for s in specs], rounds)
    text = [
        report.describe_load(rounds[0]["config"]) if rounds else "",
        report.format_compare(rows),
    ]
    grid = report.scaling_grid(rows)
    if grid:
        text.append(report.format_scaling(grid))
    data = {
        "mode": "compare",
        "table": rows,
        "rounds": rounds,
        "scaling": [
            {"fronts": f, "shards": s, "jobs_per_s": v} for (f, s), v in sorted(grid.items())
        ],
    }
    emit(a, data, "\n\n".join(text))
    if a.plot and rounds:
        report.plot(a.plot, rows, report.describe_load(rounds[0]["config"]))
        print(f"# plot written to {a.plot}", file=sys.stderr)
    return 0 if all(ok(r) for r in rounds) else 1


def cmd_memory(a: argparse.Namespace, progress: bool) -> int:
    specs = server_specs(a)
    results = []
    with ExitStack() as stack:
        for server in start_all(stack, a, specs):
            base = dataclasses.replace(
                load_from_args(a, [server.target], server.client_tls()),
                jobs=a.memory,
                duration=None,
                payload=parse_range(a.payload),
            )
            res = measure_memory(base, server.pids, server.label, progress=progress)
            if server.proc is None:
                res["drained"] = drain(server.host, server.port, base, res["distinct_jobs"])
            else:
                server.stop()
            res.pop("run")
            results.append(res)
    head = (
        "server",
        "jobs queued",
        "Pss before KiB",
        "Pss after KiB",
        "bytes/job (Pss)",
        "bytes/job (Rss)",
        "procs",
        "errors",
    )
    body = [
        (
            r["server"],
            str(r["jobs_queued"]),
            str(r["pss_before_kb"]),
            str(r["pss_after_kb"]),
            str(r["bytes_per_job_pss"]),
            str(r["bytes_per_job_rss"]),
            str(r["processes"]),
            str(r["errors"]),
        )
        for r in results
    ]
    emit(a, {"mode": "memory", "results": results}, report.table(head, body))
    return 0 if all(r["errors"] == 0 for r in results) else 1


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    progress = a.progress if a.progress is not None else sys.stderr.isatty()
    try:
        if a.memory is not None:
            if a.memory < 1:
                raise ValueError("--memory needs N >= 1")
            return cmd_memory(a, progress)
        if a.compare or a.scaling:
            return cmd_compare(a, progress)
        if a.plot:
            raise ValueError("--plot needs --compare or --scaling")
        return cmd_single(a, progress)
    except (ValueError, ImportError, RuntimeError, TimeoutError, OSError) as e:
        print(f"shardgear-bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

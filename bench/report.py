"""Human-readable output: a run's summary, the compare table, the scaling grid, the plot."""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Sequence
from typing import Any

PLOT_HINT = "plotting needs matplotlib: pip install 'shardgear[plot]' (or pip install matplotlib)"


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


def describe_load(cfg: dict[str, Any]) -> str:
    lo, hi = cfg["payload"]
    size = f"{lo} B" if lo == hi else f"{lo}-{hi} B"
    amount = f"{cfg['jobs']} jobs" if cfg["jobs"] is not None else f"{cfg['duration']} s"
    return (
        f"{cfg['mode']}, {cfg['clients']} clients x {cfg['inflight']} in flight, "
        f"{cfg['workers']} workers ({cfg['grab']}), {cfg['functions']} functions, payload "
        f"{size}, unique {cfg['unique']}, {amount}, {cfg['procs']} generator procs"
    )


def latency_line(lat: dict[str, Any]) -> str:
    if not lat.get("count"):
        return "no samples"
    return (
        f"p50 {_ms(lat.get('p50'))}  p90 {_ms(lat.get('p90'))}  p99 {_ms(lat.get('p99'))}  "
        f"p99.9 {_ms(lat.get('p99.9'))}  max {_ms(lat.get('max'))} ms  (n={lat['count']})"
    )


def format_run(r: dict[str, Any]) -> str:
    cfg = r["config"]
    lines = [
        f"target   {', '.join(cfg['targets'])}  [{r.get('label') or 'run'}]",
        f"load     {describe_load(cfg)}",
    ]
    req = f" / {r['jobs_requested']} requested" if r["jobs_requested"] is not None else ""
    lines.append(
        f"result   {r['outcome']}: {r['jobs_done']} jobs{req} in {r['elapsed_s']:.3f} s"
        f" -> {r['jobs_per_s']:,.0f} jobs/s, errors {r['errors']}"
    )
    if r["bg_acked"]:
        lines.append(
            f"bg       {r['bg_acked']} accepted, {r['bg_distinct']} distinct, "
            f"{r['bg_executed']} executed, {r['coalesced']} coalesced"
        )
    elif r["coalesced"]:
        lines.append(f"unique   {r['coalesced']} submissions coalesced")
    lines.append(f"latency  {latency_line(r['latency_ms'])}  submit -> result")
    for key, what in (
        ("latency_fg_ms", "fg"),
        ("latency_bg_ms", "bg"),
        ("bg_ack_latency_ms", "bg ack"),
    ):
        if key in r:
            lines.append(f"  {what:<6} {latency_line(r[key])}")
    g = r["loadgen"]
    lines.append(
        f"loadgen  cpu {g['cpu_s']:.2f} s = {g['cpu_cores']:.2f} cores over {g['procs']} "
        f"procs (busiest proc {g['max_proc_util']:.0%} of a core; machine has "
        f"{g['machine_cpus']} cpus)"
    )
    s = r.get("server")
    if s:
        lines.append(
            f"server   cpu {s['cpu_s']:.2f} s = {s['cpu_cores']:.2f} cores, peak Pss "
            f"{s['peak_pss_kb'] / 1024:.1f} MiB (Rss {s['peak_rss_kb'] / 1024:.1f} MiB), "
            f"pids {s['pids']}"
        )
    if g["max_proc_util"] > 0.9:
        lines.append("warning  a generator process was above 90% of a core: add --procs")
    for e in r["error_samples"]:
        lines.append(f"error    {e}")
    return "\n".join(lines)


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def compare_rows(labels: Sequence[str], rounds: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per server: medians over its rounds, and the ratio to the first server."""
    rows = []
    for label in labels:
        runs = [r for r in rounds if r["label"] == label]
        rates = [r["jobs_per_s"] for r in runs]
        rows.append(
            {
                "server": label,
                "rounds": len(runs),
                "jobs_per_s": _median(rates),
                "min": min(rates) if rates else None,
                "max": max(rates) if rates else None,
                "p50_ms": _median([r["latency_ms"].get("p50") for r in runs]),
                "p99_ms": _median([r["latency_ms"].get("p99") for r in runs]),
                "server_cores": _median([r.get("server", {}).get("cpu_cores") for r in runs]),
                "server_peak_pss_kb": _median(
                    [r.get("server", {}).get("peak_pss_kb") for r in runs]
                ),
                "loadgen_cores": _median([r["loadgen"]["cpu_cores"] for r in runs]),
                "server_us_per_job": _median([_us_per_job(r) for r in runs]),
                "errors": sum(r["errors"] for r in runs),
            }
        )
    base = rows[0]["jobs_per_s"] if rows else None
    for row in rows:
        row["ratio"] = round(row["jobs_per_s"] / base, 3) if base and row["jobs_per_s"] else None
    return rows


def _us_per_job(run: dict[str, Any]) -> float | None:
    """Server CPU microseconds per completed job (all its processes), or None if unknown."""
    cpu = run.get("server", {}).get("cpu_s")
    if cpu is None or not run.get("jobs_done"):
        return None
    return float(cpu) * 1e6 / run["jobs_done"]


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_compare(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "server",
        "rounds",
        "jobs/s (median)",
        "ratio",
        "min-max",
        "p50 ms",
        "p99 ms",
        "server cores",
        "server CPU us/job",
        "loadgen cores",
        "errors",
    )
    body = [
        (
            r["server"],
            str(r["rounds"]),
            _fmt(r["jobs_per_s"], ",.0f"),
            _fmt(r["ratio"], ".2f"),
            f"{_fmt(r['min'], ',.0f')}-{_fmt(r['max'], ',.0f')}",
            _fmt(r["p50_ms"], ".3f"),
            _fmt(r["p99_ms"], ".3f"),
            _fmt(r["server_cores"], ".2f"),
            _fmt(r["server_us_per_job"], ".1f"),
            _fmt(r["loadgen_cores"], ".2f"),
            str(r["errors"]),
        )
        for r in rows
    ]
    return table(head, body)


def table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=False)]
    out = ["  ".join(str(h).ljust(w) for h, w in zip(head, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += [
        "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in body
    ]
    return "\n".join(out)


def scaling_grid(rows: Sequence[dict[str, Any]]) -> dict[tuple[int, int], float | None]:
    """(fronts, shards) -> median jobs/s, from rows labelled ``shardgear-FxS``."""
    grid: dict[tuple[int, int], float | None] = {}
    for r in rows:
        label = r["server"]
        if label.startswith("shardgear-") and "x" in label and "+" not in label:
            f, _, s = label.removeprefix("shardgear-").partition("x")
            grid[(int(f), int(s))] = r["jobs_per_s"]
    return grid


def format_scaling(grid: dict[tuple[int, int], float | None]) -> str:
    fronts = sorted({f for f, _ in grid})
    shards = sorted({s for _, s in grid})
    head = ["fronts \\ shards", *[str(s) for s in shards]]
    body = [[str(f), *[_fmt(grid.get((f, s)), ",.0f") for s in shards]] for f in fronts]
    return "median jobs/s\n" + table(head, body)


def check_plotting() -> None:
    """Raise ImportError with an install hint if matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ImportError(PLOT_HINT) from e


def plot(path: str, rows: Sequence[dict[str, Any]], title: str) -> None:
    """Bar chart of median jobs/s per server (min-max whiskers), plus the scaling lines if any."""
    check_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = scaling_grid(rows)
    ncols = 2 if grid else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 4.5), squeeze=False)
    ax = axes[0][0]
    labels = [r["server"] for r in rows]
    med = [r["jobs_per_s"] or 0 for r in rows]
    lo = [m - (r["min"] or m) for m, r in zip(med, rows, strict=True)]
    hi = [(r["max"] or m) - m for m, r in zip(med, rows, strict=True)]
    bars = ax.bar(labels, med, yerr=[lo, hi], capsize=4, color="#4c72b0")
    for bar, r in zip(bars, rows, strict=True):
        if r["ratio"] is not None:
            ax.annotate(
                f"{r['ratio']:.2f}x",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_ylabel("jobs/s (median of rounds)")
    ax.set_title(textwrap.fill(title, 60), fontsize=8)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    if grid:
        ax2 = axes[0][1]
        for f in sorted({f for f, _ in grid}):
            pts = sorted((s, v) for (ff, s), v in grid.items() if ff == f and v is not None)
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{f} fronts")
        ax2.set_xticks(sorted({s for _, s in grid}))
        ax2.set_xlabel("shards")
        ax2.set_ylabel("jobs/s (median)")
        ax2.set_title("shardgear scaling", fontsize=9)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

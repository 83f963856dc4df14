"""REPORT.md and chart.png of one benchmark run."""

from __future__ import annotations

import gzip
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from loadtests.stack import REPO

# The system we replace (DESIGN.md and issue 5): measured on this kind of machine, and published.
REPLACED = {
    # Issue 13: three runs back to back with ours, 100 users, no think time, 30 s, on this kind of
    # machine, on another day: its one synchronous POST /teamquestions/ (uvicorn, 2 workers).
    "register_claim": {"here": "116.9-119.7 teams/s, p50 721-732 ms, p95 1.60-1.65 s, worst 3.6 s, 0 failures "
                               "(measured on another day, not this run)",
                       "published": "-", "rate": 118.3, "rate_range": (116.9, 119.7), "p50_ms": 726.5,
                       "p95_ms": 1625.0, "p95_range": (1600.0, 1650.0), "worst_ms": 3600.0},
    "registration": {"here": "about 110 teams/s, p95 850 ms", "published": "136 teams/s, p95 499 ms",
                     "rate": 110.0, "p95_ms": 850.0},
    "organiser": {"here": "-", "published": "12 req/s, p95 7.83 s", "rate": 12.0, "p95_ms": 7830.0},
    "competition": {"here": "3-12 req/s, p95 30 s", "published": "5 req/s, p95 33.7 s", "rate": 12.0,
                    "p95_ms": 30000.0},
    "claim_race": {"here": "some 500s, thousands of orphan rows", "published": "-"},
    "fanout": {"here": "broke with more than one worker (websockets per process)", "published": "-"},
    "fanout10k": {"here": "broke with more than one worker (websockets per process)", "published": "-"},
}

GROUP_ORDER = ["api", "reference", "worker registrations", "worker board.0", "worker board.1", "worker board.2",
               "worker board.3", "worker competition.0", "worker mystery.0", "sweeper", "realtime", "realtime-2",
               "postgres", "redis", "locust", "spectators", "bench", "other", "machine"]
# mystery.0 is competition.0's name in trees before the job-kind registry (bench --compare).
SHORT = {"worker registrations": "reg", "worker competition.0": "comp.0", "worker mystery.0": "mys.0", "postgres": "pg",
         "spectators": "spect", "machine": "machine"}


def load_samples(raw: Path, key: str) -> dict[str, Any]:
    """One run's raw samples: Locust's file in raw/, or the compressed copy the benchmark keeps in
    samples/ (``compress_samples``)."""
    plain = raw / f"{key}-samples.json"
    packed = raw.parent / "samples" / f"{key}.json.gz"
    if plain.exists():
        return json.loads(plain.read_text())
    if packed.exists():
        with gzip.open(packed, "rt") as f:
            return json.load(f)
    return {"samples": [], "accepted": [], "outcomes": {}}


def compress_samples(raw: Path, key: str) -> Path | None:
    """Keep a run's raw samples (every request: time, category, name, ms, ok) gzipped in samples/,
    small enough to commit, so any percentile can be computed again; drop the plain file."""
    plain = raw / f"{key}-samples.json"
    if not plain.exists():
        return None
    packed = raw.parent / "samples" / f"{key}.json.gz"
    packed.parent.mkdir(exist_ok=True)
    with gzip.open(packed, "wb", compresslevel=9) as f:
        f.write(plain.read_bytes())
    plain.unlink()
    return packed


def percentiles(values: Any, points: tuple[int, ...] = (50, 95, 99)) -> dict[str, float | None]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {f"p{p}": None for p in points}
    return {f"p{p}": round(float(np.percentile(arr, p)), 1) for p in points}


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=10).stdout.rstrip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def revision() -> dict[str, Any]:
    """The commit under test and the tracked files that differ from it (taken when the run starts)."""
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"])
    return {"commit": _run(["git", "rev-parse", "HEAD"]), "dirty": [line[3:] for line in dirty.splitlines()]}


def machine(settings: Any, env: dict[str, str], *, smoke: bool, elapsed: float, error: str | None,
            rate_limits: bool, busy_before: float | None, rev: dict[str, Any],
            postgres: dict[str, int] | None = None) -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        **rev,
        "nproc": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "smoke": smoke,
        "elapsed": round(elapsed),
        "error": error,
        "rate_limits": rate_limits,
        "busy_before": busy_before,
        "postgres_connections": postgres or {},
        "settings": {
            "api_workers": getattr(settings, "api_workers", None),
            "api_threads": getattr(settings, "api_threads", None),
            # Trees before the gevent default have no such setting: they ran gthread.
            "api_worker_class": getattr(settings, "api_worker_class", "gthread"),
            "board_queues": getattr(settings, "board_queues", None),
            "competition_queues": getattr(settings, "competition_queues", getattr(settings, "mystery_shards", None)),
            "db_pool_size": getattr(settings, "db_pool_size", None),
            "broadcast_interval": getattr(settings, "broadcast_interval", None),
            "environment": getattr(settings, "environment", None),
        },
        "postgres": _run(["psql", "--version"]),
    }


# -- formatting --------------------------------------------------------------------------


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 10000 else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def ms_unit(value: float | None) -> str:
    text = ms(value)
    return text if text.endswith(" s") or text == "-" else text + " ms"


def trio(d: dict[str, Any] | None) -> str:
    if not d or d.get("p50") is None:
        return "-"
    return f"{ms(d['p50'])} / {ms(d['p95'])} / {ms(d['p99'])}"


def check_cell(invariants: dict[str, Any] | None) -> str:
    if invariants is None:
        return "-"
    return "ok" if invariants["ok"] else "**" + "; ".join(invariants["problems"])[:300] + "**"


def cpu_cell(cpu: dict[str, float]) -> str:
    if not cpu:
        return "-"
    parts = []
    boards = [v for k, v in cpu.items() if k.startswith("worker board.")]
    for group in GROUP_ORDER:
        if group not in cpu or group.startswith("worker board.") or group == "bench":
            continue
        parts.append(f"{SHORT.get(group, group)} {cpu[group]:.0f}")
        if group == "worker registrations" and boards:
            parts.append("board " + "+".join(f"{v:.0f}" for v in boards))
    return ", ".join(parts)


def _label(name: str) -> str:
    # Runs before the recorder learnt not to repeat the method wrote "POST POST /...".
    first, _, rest = name.partition(" ")
    return rest if rest.startswith(first + " ") else name


def _cpu_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def _p95_ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "-"
    return f"{theirs / ours:.1f}x lower p95" if ours <= theirs else f"{ours / theirs:.1f}x higher p95"


def _ratio(ours: float | None, theirs: float | None, higher_is_better: bool) -> str:
    if not ours or not theirs:
        return "-"
    r = ours / theirs if higher_is_better else theirs / ours
    return f"{r:.1f}x" if r < 100 else f"{r:.0f}x"


# -- the targets -------------------------------------------------------------------------


def targets(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, bool | None]]:
    rows: list[tuple[str, str, str, bool | None]] = []

    def get(name: str) -> dict[str, Any] | None:
        r = results.get(name)
        return None if r is None or "error" in r else r

    if (r := get("register_claim")) is not None and r.get("team_round_trips"):
        t = r["team_round_trips"]
        old = REPLACED["register_claim"]
        # Against the replaced system's best run: its highest rate and its lowest p95.
        rate_goal, p95_goal = 1.5 * old["rate_range"][1], 0.5 * old["p95_range"][0]
        failures = t["failures"] + r["http_failures"] + r["job_failures"]
        rows += [
            ("register and claim (issue 13)", f">= 1.5x the replaced system's teams/s ({rate_goal:.0f}/s)",
             f"{t['per_s']:.0f}/s", t["per_s"] >= rate_goal),
            ("register and claim (issue 13)", f"p95 <= 0.5x the replaced system's ({ms_unit(p95_goal)})",
             ms_unit(t["p95"]), t["p95"] is not None and t["p95"] <= p95_goal),
            ("register and claim (issue 13)", "0 failures", str(failures), failures == 0),
        ]
    if (r := get("registration")) is not None:
        job = r["by_name"].get("job|JOB register", {})
        rows += [
            ("registration", ">= 1,000 teams registered/s", f"{r['teams_registered_per_s']:.0f}/s",
             r["teams_registered_per_s"] >= 1000),
            ("registration", "p95 accept < 50 ms", ms_unit(r["accept"]["p95"]),
             r["accept"]["p95"] is not None and r["accept"]["p95"] < 50),
            ("registration", "p95 to job finished < 100 ms", ms_unit(job.get("p95")),
             job.get("p95") is not None and job["p95"] < 100),
            ("registration", "0 failures", str(r["http_failures"] + r["job_failures"]),
             r["http_failures"] + r["job_failures"] == 0),
        ]
    if (r := get("organiser")) is not None:
        for v in r["by_name"].values():
            if v["category"] == "read" and "(list)" in v["name"]:
                rows.append(("organiser", f"p95 < 50 ms: {_label(v['name'])}", ms_unit(v["p95"]),
                             v["p95"] is not None and v["p95"] < 50))
    if (r := get("competition")) is not None:
        failures = r["http_failures"] + r["job_failures"]
        rows += [
            ("full competition", ">= 500 jobs finished/s", f"{r['jobs_per_s']:.0f}/s", r["jobs_per_s"] >= 500),
            ("full competition", "p95 POST-to-job-finished < 150 ms", ms_unit(r["job"]["p95"]),
             r["job"]["p95"] is not None and r["job"]["p95"] < 150),
            ("full competition", "0 failures", str(failures), failures == 0),
            ("full competition", "0 duplicate claims", str(r["duplicate_claims"]), r["duplicate_claims"] == 0),
            ("full competition", "0 lost jobs", str(r["jobs_lost"]), r["jobs_lost"] == 0),
            ("full competition", "0 ledger mismatches", str(r["ledger_mismatches"]), r["ledger_mismatches"] == 0),
        ]
    if (r := get("claim_race")) is not None:
        rows.append(("claim race", f"exactly {r.get('expected_winners')} winners", str(r["claims"]),
                     r["claims"] == r.get("expected_winners") and r["claims_won_twice"] == 0))
        fives = sum(f["occurrences"] for f in r["locust_failures"] if f["error"][:1] == "5")
        rows.append(("claim race", "no 5xx, no orphan rows", f"{fives} 5xx, {r['orphan_claims']} orphans",
                     fives == 0 and r["orphan_claims"] == 0))
    for name, label, limit in (("fanout", "2,000 clients, 1 realtime process", 500.0),
                               ("fanout10k", "10,000 clients, 2 realtime processes", 1000.0)):
        if (r := get(name)) is None or not r.get("spectators"):
            continue
        s = r["spectators"]
        p99 = s["latency"]["p99"]
        rows.append((f"fan-out ({label})", f"p99 commit-to-event < {limit:.0f} ms", ms_unit(p99),
                     p99 is not None and p99 < limit))
        rows.append((f"fan-out ({label})", "every client ends on the final standings",
                     f"{s['on_final_standings']} of {s['clients']}", s["on_final_standings"] == s["clients"]))
    return rows


# -- the chart ---------------------------------------------------------------------------


def chart(out: Path, results: list[dict[str, Any]]) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in results if "error" not in r]
    if not runs:
        return None
    fig, axes = plt.subplots(len(runs), 2, figsize=(14, 3.2 * len(runs)), squeeze=False)
    for row, r in enumerate(runs):
        samples = load_samples(out / "raw", r.get("key", r["name"]))["samples"]
        t0 = r["window"][0]
        left, right = axes[row]
        http = np.array([s[0] for s in samples if s[1] in ("accept", "wait")]) - t0
        if http.size:
            bins = np.arange(0, max(1, int(http.max()) + 2))
            counts, _ = np.histogram(http, bins=bins)
            left.plot(bins[:-1], counts, label="writes/s", color="tab:blue")
        series = r.get("jobs_per_second_series") or []
        if series:
            left.plot([s - t0 for s, _ in series], [n for _, n in series], label="jobs finished/s",
                      color="tab:green")
        left.set_title(f"{r['title']}: throughput")
        left.set_xlabel("seconds")
        left.legend(loc="upper right", fontsize=8)
        left.grid(alpha=0.3)
        for category, color in (("accept", "tab:blue"), ("job", "tab:green")):
            pts = [(s[0] - t0, s[3]) for s in samples if s[1] == category and s[4]]
            _percentile_lines(right, pts, f"{'HTTP accept' if category == 'accept' else 'POST-to-job-finished'}",
                              color)
        pts = [(s[0] - t0, s[3]) for s in samples if s[1] == "team" and s[4]]
        _percentile_lines(right, pts, "per team (register + claim)", "tab:orange")
        if r["name"] == "organiser":
            pts = [(s[0] - t0, s[3]) for s in samples if s[1] == "read" and s[4]]
            _percentile_lines(right, pts, "list pages", "tab:purple")
        events = out / "samples" / f"{r.get('key', r['name'])}-events.npz"
        if not events.exists():  # runs before the samples moved out of raw/
            events = out / "raw" / f"{r.get('key', r['name'])}-events.npz"
        if events.exists():
            with np.load(events) as z:
                pts = list(zip((z["arrival"] - t0).tolist(), z["latency"].tolist(), strict=True))
            _percentile_lines(right, pts, "commit-to-event", "tab:red")
        right.set_yscale("log")
        right.set_ylabel("ms")
        right.set_xlabel("seconds")
        right.set_title(f"{r['title']}: latency per second (p50 solid, p95 dashed)")
        right.legend(loc="upper right", fontsize=8)
        right.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = out / "chart.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def open_chart(out: Path, r: dict[str, Any]) -> Path | None:
    """The open load's latency against the rate offered, with the rate achieved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ol = r.get("open_load")
    steps = [s for s in (ol or {}).get("steps", []) if s["p50"] is not None]
    if not steps:
        return None
    rates = [s["rate"] for s in steps]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(rates, [s["p50"] for s in steps], marker="o", label="POST-to-visible p50")
    ax.plot(rates, [s["p95"] for s in steps], marker="o", label="POST-to-visible p95")
    ax.plot(rates, [s["p99"] for s in steps], marker=".", linestyle=":", label="POST-to-visible p99")
    ax.axhline(ol["limit_ms"], color="tab:red", linestyle="--", label=f"{ol['limit_ms']:.0f} ms")
    ax.set_yscale("log")
    ax.set_xlabel("plays/s offered")
    ax.set_ylabel("ms")
    ax.grid(alpha=0.3, which="both")
    right = ax.twinx()
    right.plot(rates, [s["writes_per_s"] for s in steps], color="tab:gray", marker="s", alpha=0.6,
               label="writes/s achieved")
    right.set_ylabel("writes/s achieved")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize=8)
    ax.set_title(f"{r['title']}: latency against rate")
    fig.tight_layout()
    path = out / f"open-{r.get('key', r['name'])}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _percentile_lines(ax: Any, points: list[tuple[float, float]], label: str, color: str) -> None:
    if not points:
        return
    arr = np.array(points)
    seconds = np.floor(arr[:, 0]).astype(int)
    xs, p50, p95 = [], [], []
    for s in np.unique(seconds):
        v = arr[seconds == s, 1]
        if v.size < 3:
            continue
        xs.append(s)
        p50.append(np.percentile(v, 50))
        p95.append(np.percentile(v, 95))
    ax.plot(xs, p50, color=color, label=f"{label} p50")
    ax.plot(xs, p95, color=color, linestyle="--", label=f"{label} p95")


# -- REPORT.md ---------------------------------------------------------------------------


def headline(r: dict[str, Any]) -> dict[str, Any]:
    """A run's headline figures: its rate, latencies, CPU per job and writes/s."""
    if r["name"] == "register_claim" and r.get("team_round_trips"):
        t = r["team_round_trips"]
        rate, unit, lat, tail_label = t["per_s"], "teams/s", t, "worst"
        tail = t.get("max")
    elif r["name"] == "reference":
        rate, unit, lat, tail_label = r["writes_per_s"], "writes/s", r["accept"], "p99"
        tail = lat.get("p99")
    else:
        rate, unit, lat, tail_label = r.get("jobs_per_s"), "jobs/s", r.get("job") or {}, "p99"
        tail = lat.get("p99")
    cpu = r.get("cpu_per_job") or {}
    return {"rate": rate, "unit": unit, "p50": lat.get("p50"), "p95": lat.get("p95"), "tail": tail,
            "tail_label": tail_label, "cpu": cpu.get("total"), "writes": r.get("writes_per_s"),
            **{f"cpu_{k}": cpu.get(k) for k in CPU_KINDS}}


# The stack's process kinds in CPU per job (loadtests.stack.STACK_KINDS).
CPU_KINDS = ("api", "consumers", "sweeper", "realtime", "postgres", "redis")


def _spread(values: list[float | None]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": float(np.median(vals)), "min": min(vals), "max": max(vals), "n": len(vals)}


def summarise(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The median and range of each headline figure, per scenario and side, over its repeats."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        if "error" not in r:
            groups.setdefault((r["name"], r.get("side", "head")), []).append(r)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for key, runs in groups.items():
        figures = [headline(r) for r in runs]
        rates = [f["rate"] or 0.0 for f in figures]
        # The run whose rate is the median stands for the group in the per-run sections.
        middle = runs[int(np.argsort(rates)[(len(rates) - 1) // 2])]
        out[key] = {"runs": len(runs), "unit": figures[0]["unit"], "tail_label": figures[0]["tail_label"],
                    "title": runs[0].get("scenario_title", runs[0]["title"]), "representative": middle,
                    **{k: _spread([f[k] for f in figures]) for k in ("rate", "p50", "p95", "tail", "cpu", "writes",
                                                                      *(f"cpu_{c}" for c in CPU_KINDS))}}
    return out


def _med(d: dict[str, float] | None, fmt: Any = ms_unit) -> str:
    if not d:
        return "-"
    if d["n"] == 1 or d["min"] == d["max"]:
        return fmt(d["median"])
    return f"{fmt(d['median'])} ({fmt(d['min'])} - {fmt(d['max'])})"


def _num(v: float) -> str:
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


def summary_lines(summary: dict[tuple[str, str], dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    add = lines.append
    compare = meta.get("compare")
    ref = summary.get(("reference", "head"))
    ref_rate = ref["writes"]["median"] if ref and ref.get("writes") else None
    add("## Headlines")
    add("")
    add("The median of each scenario's runs, with the range in brackets (`--repeat`). *of reference*: the "
        "scenario's writes/s over the same-run reference's (a minimal Falcon endpoint under the same gunicorn "
        "configuration that inserts one row and pushes one Redis message, driven by the same Locust): the share of "
        "this machine's write ceiling, today, that the scenario reached. *CPU/job*: CPU ms of the stack (not the "
        "load generator) per finished job; for the reference, per write.")
    add("")
    add("| scenario | side | runs | rate | p50 | p95 | p99 or worst | CPU/job | writes/s | of reference |")
    add("|---|---|---|---|---|---|---|---|---|---|")
    for (name, side), g in summary.items():
        share = (f"{g['writes']['median'] / ref_rate:.0%}" if ref_rate and g.get("writes") and name != "reference"
                 else "-")
        add(f"| {g['title']} | {side} | {g['runs']} | {_med(g['rate'], _num)} {g['unit']} | {_med(g['p50'])} "
            f"| {_med(g['p95'])} | {g['tail_label']} {_med(g['tail'])} | {_med(g['cpu'], lambda v: f'{v:.2f} ms')} "
            f"| {_med(g['writes'], _num)} | {share} |")
    add("")
    old = REPLACED["register_claim"]
    for (name, side), g in summary.items():
        if name != "register_claim" or not g.get("rate") or not g.get("p95"):
            continue
        lo, hi = old["rate_range"]
        add(f"Register and claim, waiting, `{side}` against the system we replace ({old['here']}): "
            f"{g['rate']['median'] / hi:.2f}-{g['rate']['median'] / lo:.2f}x its teams/s, p95 "
            f"{g['p95']['median'] / old['p95_range'][1]:.2f}-{g['p95']['median'] / old['p95_range'][0]:.2f}x its p95 "
            "(issue 13's target: at least 1.5x the teams/s at no more than 0.5x the p95).")
        add("")
    if compare:
        label = compare["label"]
        add(f"## This tree against `{label}`, side by side in this run")
        add("")
        add(f"Both stacks ran at once on this machine, each from its own tree (`{label}` from a git worktree of "
            f"`{compare['commit']}`, started with "
            + ("the command lines of its own `processes.py`" if compare.get("processes_py") else
               "the command lines its own benchmark used, as it has no `processes.py`")
            + "), with this tree's load generator; each scenario ran alternately against one and the other "
            "(the first side alternating between repeats) while the other idled. Ratios are head / "
            f"`{label}` of the medians: above 1 is more for rates, and worse for latencies and CPU.")
        add("")
        add(f"| scenario | measure | head | `{label}` | head / `{label}` |")
        add("|---|---|---|---|---|")
        for (name, side), g in summary.items():
            if side != "head" or (name, label) not in summary:
                continue
            o = summary[(name, label)]
            cpu_rows = [(f"cpu_{k}", f"CPU ms per job: {k}", lambda v: f"{v:.2f}") for k in CPU_KINDS]
            for field, what, fmt in (("rate", g["unit"], _num), ("p50", "p50", ms_unit), ("p95", "p95", ms_unit),
                                     ("tail", g["tail_label"], ms_unit),
                                     ("cpu", "CPU ms per job: total", lambda v: f"{v:.2f}"), *cpu_rows):
                a, b = g.get(field), o.get(field)
                ratio = f"{a['median'] / b['median']:.2f}x" if a and b and b["median"] else "-"
                add(f"| {g['title']} | {what} | {_med(a, fmt)} | {_med(b, fmt)} | **{ratio}** |")
        add("")
    return lines


def write(out: Path, results: list[dict[str, Any]], meta: dict[str, Any]) -> Path:
    # First, so that a fault in the rendering below loses no measurement (``python -m loadtests.report RUN``
    # renders it again).
    (out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1, default=str))
    summary = summarise(results)
    # One row per scenario and side (its median run), however many repeats: the picture stays readable.
    chart_path = chart(out, [g["representative"] for g in summary.values()])
    # The figures that stand for a scenario (targets, the replaced system): this tree's median run.
    by_name = {name: g["representative"] for (name, side), g in summary.items() if side == "head"}
    lines: list[str] = []
    add = lines.append
    add(f"# Benchmark report{' (smoke run: few users, ~10 s each; not a measurement)' if meta['smoke'] else ''}")
    add("")
    add(f"- commit `{meta['commit']}`" + (f" with uncommitted changes in {', '.join(meta['dirty'][:12])}"
                                           if meta["dirty"] else ""))
    add(f"- machine: {meta['nproc']} cores ({meta['cpu_model']}), {meta['memory_gib']} GiB, Python {meta['python']}, "
        f"{meta['platform']}, {meta['postgres']}")
    s = meta["settings"]
    api = (f"gunicorn {s['api_workers']} gevent workers" if s.get("api_worker_class") == "gevent"
           else f"gunicorn {s['api_workers']} workers x {s['api_threads']} threads")
    add(f"- stack: QUIZ_ENV={s['environment']}, {api}, "
        f"{s['board_queues']} board queues + registrations + "
        f"{s.get('competition_queues', s.get('mystery_shards'))} competition queue(s), one solo "
        f"Celery consumer each, sweeper, realtime (eventlet); DB pool {s['db_pool_size']}; public broadcasts "
        f"coalesced every {s['broadcast_interval']} s; rate limits {'on' if meta['rate_limits'] else 'off'}")
    add("- load generator on the same 2 cores: one Locust process (FastHttpUser, no think time) and the "
        "Socket.IO spectators (python-socketio AsyncClient, websocket transport) in their own processes")
    if meta.get("busy_before") is not None:
        add(f"- the machine was {meta['busy_before']:.0f}% busy (of one core) just before the stack started; "
            "the CPU column's *other* is what ran beside the benchmark during each scenario (other people's work "
            "on this shared machine, the kernel). Redis is one server shared with them.")
    pg = meta.get("postgres_connections") or {}
    if pg:
        add(f"- PostgreSQL max_connections {pg['max_connections']}, of which {pg['others_connections']} were held by "
            "other people's databases when the stack started; the stack may open up to about 75 (gunicorn "
            f"{s['api_workers']} x at most {s['api_threads']} threads or {s['db_pool_size']} pooled connections, "
            "6 consumers, realtime, sweeper), so "
            "`too many clients` 503s are possible here")
    add(f"- whole run: {meta['elapsed']} s" + (f"; **run error: {meta['error']}**" if meta["error"] else ""))
    if meta.get("command"):
        add(f"- command: `{meta['command']}`")
    for st in meta.get("stacks") or []:
        if st:
            add(f"- stack `{st['label']}`: commit `{st['commit'][:12]}` from `{st['tree']}`, schema at migration "
                f"`{st['schema']}`, {st['processes']} processes running in {', '.join(f'`{c}`' for c in st['cwd'])}")
    add("")
    lines += summary_lines(summary, meta)
    add("## Every run")
    add("")
    add("Latencies are p50 / p95 / p99 in ms. *HTTP accept*: the round trip of a write answered 202. "
        "*POST-to-job-finished*: from just before the POST to the job's `finishedAt` (the worker's commit). "
        "*commit-to-event*: from the commit of the oldest change an event carries (`oldestAt`, else `at`) "
        "to a spectator's receipt. *writes/s*: writes answered (202, or 200 after `Prefer: wait`) per second; "
        "job polls and reads are left out. "
        "CPU is the average over the scenario in % of one core (200 = the whole machine).")
    add("")
    add("| scenario | users | duration | writes/s | jobs completed/s | HTTP accept | POST-to-job-finished "
        "| commit-to-event | failures | duplicate claims | jobs lost | ledger mismatches | `manage.py check` | CPU % |")
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            add(f"| {r['title']} | {r['users']} | {r['seconds']} s | **failed to run: {r['error'][:200]}** "
                "| | | | | | | | | | |")
            continue
        if r["name"] == "reference":
            fails = r["http_failures"]
            add(f"| {r['title']} | {r['users']} | {r['seconds']} s | {r['writes_per_s']:.0f} | - | {trio(r['accept'])} "
                f"| - | - | {fails} | - | - | - | - | {cpu_cell(r['cpu'])} |")
            continue
        spect = r.get("spectators")
        users = f"{r['users']}" + (f" + {spect['clients']:,} sockets" if spect else "")
        event = trio(spect["latency"]) if spect else "-"
        failures = r["http_failures"] + r["job_failures"]
        fail_cell = f"{failures}" + (f" ({r['http_failures']} HTTP, {r['job_failures']} job)" if failures else "")
        add(f"| {r['title']} | {users} | {r['seconds']} s | {r.get('writes_per_s', r['requests_per_s']):.0f} "
            f"| {r['jobs_per_s']:.0f} "
            f"| {trio(r['accept'])} | {trio(r['job'])} | {event} | {fail_cell} | {r['duplicate_claims']} "
            f"| {r['jobs_lost']} | {r['ledger_mismatches']} | {check_cell(r.get('invariants'))} "
            f"| {cpu_cell(r['cpu'])} |")
    add("")

    add("## Against the system we replace")
    add("")
    add("| scenario | replaced system, this kind of machine | replaced system, published | ours | ratio |")
    add("|---|---|---|---|---|")
    for r in by_name.values():
        if "error" in r or r["name"] not in REPLACED:
            continue
        old = REPLACED[r["name"]]
        if r["name"] == "register_claim":
            t = r.get("team_round_trips") or {}
            lo, hi = old["rate_range"]
            ours = (f"{t.get('per_s', 0):.0f} teams/s, p50 {ms_unit(t.get('p50'))}, p95 {ms_unit(t.get('p95'))}, "
                    f"worst {ms_unit(t.get('max'))}, {t.get('failures', 0)} failed teams")
            ratio = (f"{t.get('per_s', 0) / hi:.2f}-{t.get('per_s', 0) / lo:.2f}x the teams/s, "
                     f"{_p95_ratio(t.get('p95'), old['p95_ms'])}")
        elif r["name"] == "registration":
            job = r["by_name"].get("job|JOB register", {})
            ours = (f"{r['teams_registered_per_s']:.0f} teams/s; p95 to registered {ms_unit(job.get('p95'))} "
                    f"(p95 accept {ms_unit(r['accept']['p95'])})")
            ratio = (f"{_ratio(r['teams_registered_per_s'], old['rate'], True)} the throughput, "
                     f"{_p95_ratio(job.get('p95'), old['p95_ms'])}")
        elif r["name"] == "organiser":
            own = r["own_requests"]
            rate = r.get("own_requests_per_s", r["requests_per_s"])
            ours = f"{rate:.0f} req/s (job polls left out), p95 {ms_unit(own['p95'])} over all organiser requests"
            ratio = (f"{_ratio(rate, old['rate'], True)} the throughput, "
                     f"{_p95_ratio(own['p95'], old['p95_ms'])}")
        elif r["name"] == "competition":
            # Writes only: our clients' job polls are not requests the replaced system had to answer.
            ours = (f"{r.get('writes_per_s', r['requests_per_s']):.0f} writes/s ({r['jobs_per_s']:.0f} jobs/s), "
                    f"p95 POST-to-job-finished {ms_unit(r['job']['p95'])}")
            ratio = (f"{_ratio(r.get('writes_per_s', r['requests_per_s']), old['rate'], True)} the requests/s of "
                     "its best figure, "
                     f"{_p95_ratio(r['job']['p95'], old['p95_ms'])}")
        elif r["name"] == "claim_race":
            fives = sum(f["occurrences"] for f in r["locust_failures"] if f["error"][:1] == "5")
            ours = (f"{fives} 5xx, {r['orphan_claims']} orphan claims, {r['claims']} winners of "
                    f"{r.get('expected_winners')} expected, {r['claims_won_twice']} questions won twice")
            ratio = "-"
        else:
            sp = r.get("spectators") or {}
            ours = (f"{sp.get('connected', 0):,} clients on {sp.get('processes')} realtime process(es), p99 "
                    f"commit-to-event {ms_unit((sp.get('latency') or {}).get('p99'))}, "
                    f"{sp.get('on_final_standings', 0):,} on the final standings")
            ratio = "-"
        add(f"| {r['title']} | {old['here']} | {old['published']} | {ours} | {ratio} |")
    add("")

    add("## CPU per job")
    add("")
    add("CPU milliseconds per job finished during the load window, by process kind of the stack; *total* is "
        "their sum, without the load generator (Locust's own share is beside it). Redis is one server shared "
        "with other work on this machine.")
    add("")
    kinds = CPU_KINDS
    add("| scenario | jobs | " + " | ".join(kinds) + " | total | Locust |")
    add("|---|---|" + "---|" * len(kinds) + "---|---|")
    for r in results:
        c = r.get("cpu_per_job")
        if "error" in r or not c:
            continue
        add(f"| {r['title']} | {c['units']:,} | " + " | ".join(_cpu_ms(c.get(k)) for k in kinds)
            + f" | **{_cpu_ms(c.get('total'))}** | {_cpu_ms(c.get('load_generator'))} |")
    add("")

    for r in results:
        ol = r.get("open_load")
        if "error" in r or not ol:
            continue
        add("## Open load" + (f" ({r['key']})" if r.get("key", r["name"]) != r["name"] else ""))
        add("")
        if ol["knee_rate"] is None:
            knee = (f"p95 POST-to-visible stayed under {ol['limit_ms']:.0f} ms up to the highest rate offered "
                    f"({ol['highest_under']:g} plays/s): no knee in this range")
        elif ol["highest_under"] is None:
            knee = (f"p95 POST-to-visible was over {ol['limit_ms']:.0f} ms already at the lowest rate offered, "
                    f"{ol['knee_rate']:g} plays/s")
        else:
            knee = (f"p95 POST-to-visible passed {ol['limit_ms']:.0f} ms at **{ol['knee_rate']:g} plays/s** offered; "
                    f"the highest rate under it: **{ol['highest_under']:g} plays/s**")
        play = ("one new team's registration" if ol.get("base") == "registration" else
                "the full competition's game: claim and answer, or a mystery box")
        add(f"{ol['users']} players, each play ({play}) started at Poisson arrival instants, so the rate is offered "
            "whatever the latency. *POST-to-visible*: from just before a write's POST to its job's commit; "
            f"*accept p95*: the 202's round trip. Knee: {knee}.")
        add("")
        add("| plays/s offered | seconds | writes/s achieved | accept p95 | POST-to-visible p50 | p95 | p99 | jobs "
            "| failures |")
        add("|---|---|---|---|---|---|---|---|---|")
        for st in ol["steps"]:
            add(f"| {st['rate']:g} | {st['seconds']} | {st['writes_per_s']:.1f} | {ms_unit(st.get('accept_p95'))} "
                f"| {ms_unit(st['p50'])} | {ms_unit(st['p95'])} | {ms_unit(st['p99'])} | {st['jobs']:,} "
                f"| {st['failures']} |")
        add("")
        picture = open_chart(out, r)
        if picture:
            add(f"![latency against offered rate]({picture.name})")
            add("")

    add("## Targets (issues 5 and 13)")
    add("")
    add("| scenario | target | measured | verdict |")
    add("|---|---|---|---|")
    for scenario, target, measured, ok in targets(by_name):
        add(f"| {scenario} | {target} | {measured} | {verdict(ok)} |")
    add("")
    if chart_path:
        add("## Throughput and latency over time")
        add("")
        add("Each scenario's median run (by its rate), per side.")
        add("")
        add("![throughput and latency over time](chart.png)")
        add("")

    add("## Details per scenario")
    for r in results:
        add("")
        add(f"### {r['title']}")
        add("")
        if r.get("deaths"):
            add(f"**Stack processes died during this scenario** (stopped from outside the benchmark: this machine "
                f"is shared), so it was run again with them restarted: {'; '.join(r['deaths'])}.")
            add("")
        if "error" in r:
            add(f"Failed to run: `{r['error']}`")
            continue
        window = r["window"][1] - r["window"][0]
        if r["name"] == "reference":
            add(f"Load window {window:.1f} s; {r['writes']:,} writes ({r['http_failures']} failed), "
                f"{r['writes_per_s']:.1f}/s; round trip {trio(r['accept'])}.")
            add("")
            add("CPU (% of one core): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["cpu"].items())))
            continue
        add(f"Competition `{r['slug']}`; set-up {r['setup_seconds']} s; load window {window:.1f} s; "
            f"queues drained {r['drain_seconds']} s after Locust stopped; {r['requests']:,} HTTP requests; "
            f"{r['jobs_finished']:,} jobs finished in the window; {r['accepted_by_clients']:,} jobs accepted by "
            f"the clients, {r['accepted_missing']} of them missing from the database, {r['accepted_unfinished']} "
            f"unfinished; {r['jobs_unfinished']} jobs of the competition unfinished after the drain. "
            f"Server-side job time (created to finished, from the jobs table): {trio(r['server_job_ms'])}. "
            f"Prefer: wait round trips: {trio(r['wait'])} ({r['wait']['count']}).")
        add("")
        add("| request | count | failures | p50 | p95 | p99 |")
        add("|---|---|---|---|---|---|")
        for v in r["by_name"].values():
            add(f"| {v['category']}: `{_label(v['name'])}` | {v['count']:,} | {v['failures']} | {ms(v['p50'])} "
                f"| {ms(v['p95'])} | {ms(v['p99'])} |")
        add("")
        if r.get("team_round_trips"):
            t = r["team_round_trips"]
            add(f"Teams (registration + claim, both waited for): {t['succeeded']:,} succeeded, {t['failures']} failed; "
                f"{t['per_s']:.1f} teams/s; per team p50 {ms_unit(t['p50'])}, p95 {ms_unit(t['p95'])}, "
                f"p99 {ms_unit(t['p99'])}, worst {ms_unit(t['max'])}.")
            add("")
        add("Job outcomes (client side): " + ", ".join(f"{k}: {n:,}" for k, n in sorted(r["outcomes"].items())))
        add("")
        add("Jobs in the database: " + ", ".join(f"{k}: {n:,}" for k, n in r["job_statuses"].items()))
        add("")
        add(f"Checks: {r['teams']} teams, {r['claims']} claims, {r['duplicate_claim_rows']} questions with two "
            f"claim rows, {r['claims_won_twice']} questions whose claim succeeded twice, {r['mystery_sold_twice']} "
            f"mystery questions sold twice, {r['orphan_claims']} claims without a succeeded claim job, "
            f"{r['ledger_mismatches']} teams whose points differ from starting points + ledger.")
        if r["locust_failures"]:
            add("")
            add("Failures reported by Locust:")
            add("")
            for f in r["locust_failures"][:15]:
                add(f"- {f['occurrences']} x {f['method']} `{f['name']}`: {f['error']}")
        if r.get("spectators"):
            sp = r["spectators"]
            add("")
            errors = "; ".join(f"{n} x {k}" for k, n in sp.get("connect_errors", {}).items())
            add(f"Spectators ({sp.get('client')}): {sp['connected']:,} of {sp['clients']:,} connected in "
                f"{sp.get('connect_seconds')} s "
                f"({sp['connect_failures']} gave up, {sp.get('connect_retries', 0)} connection attempts failed and "
                f"were retried{': ' + errors if errors else ''}; "
                f"{sp['disconnects']} disconnects) in {sp['processes']} process(es); events received: "
                + ", ".join(f"{k} {n:,}" for k, n in sorted(sp["events"].items()))
                + f"; {sp['seq_regressions']:,} events arrived with a seq not above the client's last one of any "
                f"event ({sp.get('seq_regressions_same_event', 0):,} not above the last one of the same event); "
                f"{sp['on_final_standings']:,} clients ended on the final standings (checked after each 2 s without "
                f"an event, until all did or 30 s had passed; last check {sp.get('settled_seconds')} s after the "
                f"load stopped). Commit-to-event by event: "
                + "; ".join(f"{k} {trio(v)} ({v['count']:,})" for k, v in sp["by_event"].items())
                + f". The spectators' own event-loop lag: p99 {ms_unit(sp['loop_lag_p99'])}, "
                f"max {ms_unit(sp['loop_lag_max'])} (when this is large the latencies include the clients' backlog).")
            server = sp.get("server")
            if server:
                add("")
                add("The realtime processes' own view of the load window (their /metrics): "
                    + "; ".join(f"{k} commit-to-emit p50 at most {v['p50_at_most_ms']} ms, p99 at most "
                                f"{v['p99_at_most_ms']} ms ({v['emits']:,} emits)"
                                for k, v in server.items() if isinstance(v, dict))
                    + f"; {server.get('broadcasts', 0):,} broadcasts, each {server.get('broadcast_mean_ms')} ms on "
                    f"average from the first read to the last client's write, of which {server.get('write_mean_ms')} "
                    "ms writing to the clients. What the spectators measure beyond this is the kernel, and their own "
                    "process.")
        add("")
        add("CPU (% of one core): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["cpu"].items())))
    add("")
    path = out / "REPORT.md"
    findings = out / "FINDINGS.md"
    if findings.exists():
        # Written by a person after the run: the profiles and what they show.
        lines += ["", findings.read_text()]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Render REPORT.md and chart.png again from a run's results.json (after adding FINDINGS.md, say)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("run", type=Path, help="a results folder, e.g. loadtests/results/<timestamp>")
    args = parser.parse_args(argv)
    data = json.loads((args.run / "results.json").read_text())
    print(write(args.run, data["results"], data["meta"]))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())

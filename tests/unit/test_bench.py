"""The benchmark's arithmetic: CPU per job, the median and range of repeats, head / REV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests import report
from loadtests.bench import cpu_per_unit
from loadtests.stack import LEGACY_COMMANDS, stack_kind


def _run(name: str, side: str, rate: float, p95: float, cpu: float) -> dict[str, Any]:
    return {"name": name, "title": name, "side": side, "writes_per_s": 2 * rate, "jobs_per_s": 2 * rate,
            "team_round_trips": {"per_s": rate, "p50": p95 / 2, "p95": p95, "max": 2 * p95},
            "cpu_per_job": {"total": cpu}}


def test_cpu_per_job_counts_the_stack_and_not_the_load_generator() -> None:
    seconds = {"api": 2.0, "worker registrations": 1.0, "worker board.0": 1.0, "postgres": 0.5, "redis": 0.5,
               "locust": 3.0, "spectators": 1.0, "other": 9.0, "machine": 20.0}
    got = cpu_per_unit(seconds, 1000, 10.0)
    assert got["api"] == 2.0 and got["consumers"] == 2.0 and got["postgres"] == 0.5
    assert got["total"] == 5.0
    assert got["load_generator"] == 3.0
    assert cpu_per_unit(seconds, 0, 10.0)["total"] is None
    assert stack_kind("reference") == "api" and stack_kind("realtime-2") == "realtime"
    assert stack_kind("locust") is None


def test_summary_takes_the_median_and_range_and_the_compare_ratio() -> None:
    results = [_run("register_claim", "head", r, 100.0 + r, 10.0) for r in (100.0, 120.0, 90.0)]
    results += [_run("register_claim", "old", r, 200.0, 20.0) for r in (50.0, 60.0, 55.0)]
    results.append({"name": "reference", "title": "reference", "side": "head", "writes_per_s": 880.0,
                    "accept": {"p50": 5.0, "p95": 10.0, "p99": 20.0}, "cpu_per_job": {"total": 1.0}})
    summary = report.summarise(results)
    head = summary[("register_claim", "head")]
    assert head["rate"] == {"median": 100.0, "min": 90.0, "max": 120.0, "n": 3}
    assert head["representative"]["team_round_trips"]["per_s"] == 100.0
    lines = "\n".join(report.summary_lines(summary, {"compare": {"label": "old", "commit": "0" * 40}}))
    assert "| 23% |" in lines  # 200 writes/s of the reference's 880
    assert "**1.82x**" in lines  # 100 / 55 teams/s
    assert "**0.50x**" in lines  # CPU per job 10 / 20


def test_raw_samples_are_kept_gzipped_and_read_back(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "x-samples.json").write_text('{"samples": [[1.0, "accept", "POST /a", 3.5, true]]}')
    packed = report.compress_samples(raw, "x")
    assert packed is not None and packed.name == "x.json.gz" and not (raw / "x-samples.json").exists()
    assert report.load_samples(raw, "x")["samples"] == [[1.0, "accept", "POST /a", 3.5, True]]


def test_legacy_commands_fill_the_queue() -> None:
    assert "{queue}" in LEGACY_COMMANDS["consumer"]


def test_open_load_finds_the_knee(tmp_path: Path) -> None:
    import json

    from loadtests.bench import open_steps

    steps = [{"step": i, "rate": r, "start": 100.0 + 10 * i, "end": 110.0 + 10 * i} for i, r in enumerate((10, 20, 40))]
    (tmp_path / "o-samples.json.steps.json").write_text(json.dumps({"users": 5, "steps": steps}))
    samples = []
    for i, ms in enumerate((50.0, 90.0, 400.0)):
        samples += [[100.0 + 10 * i + k / 10, "job", "JOB claim", ms, True] for k in range(50)]
        samples += [[100.0 + 10 * i + k / 10, "accept", "POST claims", 5.0, True] for k in range(50)]
    got = open_steps(tmp_path, "o", samples)
    assert got is not None
    assert [s["p95"] for s in got["steps"]] == [50.0, 90.0, 400.0]
    assert got["steps"][0]["writes_per_s"] == 5.0
    assert got["knee_rate"] == 40 and got["highest_under"] == 20


def test_spectator_processes_share_their_servers_clients_without_losing_one() -> None:
    from loadtests.bench import Scenario

    split = Scenario("s", "s", "x.py", 1, 1, spectators=(2001, 10), client_processes=2)
    assert split.groups == [(0, 1001), (0, 1000), (1, 5), (1, 5)]
    assert Scenario("s", "s", "x.py", 1, 1, spectators=(5000, 5000)).groups == [(0, 5000), (1, 5000)]


def test_the_realtime_side_is_read_from_histogram_differences() -> None:
    from loadtests.bench import realtime_side

    def families(counts: list[float], total: float, broadcasts: float, seconds: float) -> dict[str, Any]:
        bounds = [0.1, 0.25, 0.5, float("inf")]
        lag = [("quiz_realtime_commit_to_emit_seconds_bucket", {"event": "leaderboard_update", "le": str(b)}, c)
               for b, c in zip(bounds, [*counts, total], strict=True)]
        return {"quiz_realtime_commit_to_emit_seconds": lag,
                "quiz_realtime_broadcast_seconds": [
                    ("quiz_realtime_broadcast_seconds_bucket", {"le": "+Inf"}, broadcasts),
                    ("quiz_realtime_broadcast_seconds_sum", {}, seconds)]}

    # 100 emits in the window: 50 within 0.1 s, 99 within 0.25 s, all within 0.5 s.
    got = realtime_side(families([10, 20, 30], 30, 5, 1.0), families([60, 119, 130], 130, 105, 6.0))
    assert got is not None
    assert got["leaderboard_update"] == {"emits": 100, "p50_at_most_ms": 100, "p99_at_most_ms": 250}
    assert got["broadcasts"] == 100 and got["broadcast_mean_ms"] == 50.0

"""Summaries of py-spy profiles (``--format raw``: collapsed stacks, one ``a;b;c count`` a line).

    .venv/bin/python -m loadtests.profiles PROFILE.txt [...]

For each profile: how many samples, the share spent waiting (the innermost frame is a socket,
poll or lock wait), the functions with the most time on top of the stack, and the project's own
functions by inclusive time: what a reader needs to see where a process spends its time.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

WAITING = re.compile(r"\b(recv|recv_into|poll|select|epoll|wait|_wait_for_tstate_lock|acquire|sleep|accept|"
                     r"read|readinto|_read_ready|get|_pgconn_wait|wait_conn|wait_c)\b")
PROJECT = ("web/", "workers/", "models/", "realtime/", "settings.py")


def _frame(raw: str) -> tuple[str, str]:
    # py-spy frames look like "function (path/to/file.py:123)"; drop the line number.
    name, _, where = raw.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return name, path


def summarise(path: Path, top: int = 12) -> dict[str, object]:
    stacks: list[tuple[list[tuple[str, str]], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append(([_frame(f) for f in stack.split(";") if f], int(count)))
    total = sum(n for _, n in stacks) or 1
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    waiting = 0
    for frames, n in stacks:
        if not frames:
            continue
        name, where = frames[-1]
        self_time[f"{name} ({Path(where).name})"] += n
        if WAITING.search(name):
            waiting += n
        seen = set()
        for fname, fpath in frames:
            # py-spy shortens paths: the project's files are relative to the working directory.
            if fpath.startswith(PROJECT):
                key = f"{fname} ({fpath})"
                if key not in seen:
                    inclusive[key] += n
                    seen.add(key)
    return {
        "file": path.name,
        "samples": total,
        "waiting_share": waiting / total,
        "self": [(k, n / total) for k, n in self_time.most_common(top)],
        "project_inclusive": [(k, n / total) for k, n in inclusive.most_common(top)],
    }


def render(summary: dict[str, object]) -> str:
    lines = [f"**{summary['file']}**: {summary['samples']} samples, "
             f"{100 * float(summary['waiting_share']):.0f}% of them waiting (socket, poll, lock, sleep)", ""]
    lines.append("| on top of the stack | share | project function, inclusive | share |")
    lines.append("|---|---|---|---|")
    left = summary["self"]
    right = summary["project_inclusive"]
    for i in range(max(len(left), len(right))):  # type: ignore[arg-type]
        a = left[i] if i < len(left) else ("", 0.0)  # type: ignore[index]
        b = right[i] if i < len(right) else ("", 0.0)  # type: ignore[index]
        lines.append(f"| `{a[0]}` | {100 * a[1]:.1f}% | `{b[0]}` | {100 * b[1]:.1f}% |" if b[0] else
                     f"| `{a[0]}` | {100 * a[1]:.1f}% | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profiles", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    for path in args.profiles:
        print(render(summarise(path, args.top)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

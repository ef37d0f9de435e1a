"""The peers benchmarks' results: samples, medians and spreads, one JSON file per side.

A :class:`Sample` is one measured run of one method (wall and client CPU seconds);
:func:`summarise` groups them by (method, N, mode) into medians and spreads (min and
max); :func:`save` and :func:`load` keep a side's samples with the load average and the
command, for ``plot.py`` and the README.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.peers.venvs import DEFAULT_DIR


@dataclass(frozen=True)
class Sample:
    method: str
    n: int
    mode: str  # "run" for local jobs; "cold" or "warm" for SSH
    round: int
    wall: float
    cpu: float


@dataclass(frozen=True)
class Summary:
    method: str
    n: int
    mode: str
    count: int
    wall: float  # median
    wall_min: float
    wall_max: float
    cpu: float  # median
    cpu_min: float
    cpu_max: float


def summarise(samples: Iterable[Sample]) -> list[Summary]:
    """Medians and spreads per (method, N, mode), in first-seen order."""
    groups: dict[tuple[str, int, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.method, s.n, s.mode), []).append(s)
    out = []
    for (method, n, mode), group in groups.items():
        walls = [s.wall for s in group]
        cpus = [s.cpu for s in group]
        out.append(
            Summary(
                method,
                n,
                mode,
                len(group),
                statistics.median(walls),
                min(walls),
                max(walls),
                statistics.median(cpus),
                min(cpus),
                max(cpus),
            )
        )
    return out


def find(summaries: Sequence[Summary], method: str, n: int, mode: str) -> Summary | None:
    for s in summaries:
        if (s.method, s.n, s.mode) == (method, n, mode):
            return s
    return None


@dataclass
class Results:
    side: str
    samples: list[Sample] = field(default_factory=list)
    load: list[list[float]] = field(default_factory=list)  # (1, 5, 15 min) each time noted
    command: str = ""
    notes: dict[str, Any] = field(default_factory=dict)

    def note_load(self) -> list[float]:
        self.load.append(list(os.getloadavg()))
        return self.load[-1]


def parser(
    description: str, sizes: list[int], methods: Sequence[str], json_file: Path
) -> argparse.ArgumentParser:
    """The drivers' common options: sizes, rounds, methods, venvs, JSON file, --quick."""
    made = argparse.ArgumentParser(description=description)
    made.add_argument("--sizes", type=int, nargs="+", default=sizes)
    made.add_argument("--rounds", type=int, default=3)
    made.add_argument("--methods", nargs="+", choices=methods, default=list(methods))
    made.add_argument("--venvs", type=Path, default=DEFAULT_DIR)
    made.add_argument("--json", type=Path, default=json_file)
    made.add_argument("--quick", action="store_true", help="smoke run: N=10, one round")
    return made


def start(side: str) -> Results:
    """A side's results, the load noted; the descriptor limit raised to the hard one
    for this process and the workers it starts (1000 jobs hold ~3000 pipes)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = Results(side, command=" ".join(sys.argv))
    results.note_load()
    return results


def save(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(results), indent=1) + "\n")


def load(path: Path) -> Results:
    raw = json.loads(path.read_text())
    return Results(
        raw["side"],
        [Sample(**s) for s in raw["samples"]],
        raw["load"],
        raw["command"],
        raw.get("notes", {}),
    )


def table(summaries: Sequence[Summary], per_host: bool = False) -> str:
    """A Markdown table: median and spread of wall and CPU (and CPU per N)."""
    lines = [
        "| method | N | mode | rounds | wall median | wall min-max | CPU median | CPU min-max"
        + (" | CPU per N |" if per_host else " |"),
        "|---" * (9 if per_host else 8) + "|",
    ]
    for s in summaries:
        line = (
            f"| {s.method} | {s.n} | {s.mode} | {s.count} | {s.wall:.3f} s "
            f"| {s.wall_min:.3f}-{s.wall_max:.3f} | {s.cpu:.3f} s "
            f"| {s.cpu_min:.3f}-{s.cpu_max:.3f} |"
        )
        if per_host:
            line += f" {s.cpu / s.n * 1000:.2f} ms |"
        lines.append(line)
    return "\n".join(lines)


def load_line(results: Results) -> str:
    return "load average (1/5/15 min): " + " -> ".join(
        " ".join(f"{x:.1f}" for x in avg) for avg in results.load
    )

"""The peers benchmarks as PNGs: ``python benchmarks/peers/plot.py [--dir benchmarks/plots]``.

Reads what ``local_side.py`` and ``ssh_side.py`` wrote (``local_side.json``,
``ssh_side.json``) and the loop-lag samples of a sim scale run
(``benchmarks/sim_boot.py --lag-json sim_lag.json``) from ``--dir`` and draws, beside
them: ``local_side.png`` (wall and client CPU by method and N: bars at the median,
whiskers from min to max), ``ssh_side.png`` (the same, cold and warm, CPU per host)
and ``sim_lag.png`` (the loop's lateness over time, coloured by phase, with the 20 ms
goal). A missing input is skipped with a note. Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.peers import results  # noqa: E402

COLOURS = {
    "raw": "#7f7f7f",
    "aiores": "#1f77b4",
    "psij": "#ff7f0e",
    "saga": "#d62728",
    "pssh": "#2ca02c",
    "fabric": "#9467bd",
}


def bars(
    ax: Axes,
    summaries: Sequence[results.Summary],
    mode: str,
    field: str,
    scale: float,
    per_n: bool = False,
) -> None:
    """Grouped bars: one group per N, one bar per method, whiskers min..max."""
    chosen = [s for s in summaries if s.mode == mode]
    sizes = sorted({s.n for s in chosen})
    methods = list(dict.fromkeys(s.method for s in chosen))
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        xs, ys, lo, hi = [], [], [], []
        for j, n in enumerate(sizes):
            s = results.find(chosen, method, n, mode)
            if s is None:
                continue
            div = n if per_n else 1
            mid = getattr(s, field) * scale / div
            xs.append(j + (i - (len(methods) - 1) / 2) * width)
            ys.append(mid)
            lo.append(mid - getattr(s, field + "_min") * scale / div)
            hi.append(getattr(s, field + "_max") * scale / div - mid)
        ax.bar(xs, ys, width, label=method, color=COLOURS.get(method), yerr=[lo, hi], capsize=2)
    ax.set_xticks(range(len(sizes)), [f"N={n}" for n in sizes])
    ax.grid(axis="y", alpha=0.3)


def load_title(res: results.Results) -> str:
    first, last = res.load[0], res.load[-1]
    return f"load average {first[0]:.1f} -> {last[0]:.1f} (1 min)"


def local_side(res: results.Results, out: Path) -> None:
    summaries = results.summarise(res.samples)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    bars(axes[0], summaries, "run", "wall", 1.0)
    axes[0].set_ylabel("wall, s (log)")
    axes[0].set_yscale("log")
    axes[0].set_title("N /bin/true jobs: wall")
    bars(axes[1], summaries, "run", "cpu", 1000.0, per_n=True)
    axes[1].set_ylabel("client CPU per job, ms (log)")
    axes[1].set_yscale("log")
    axes[1].set_title("client CPU per job")
    axes[0].legend()
    rounds = summaries[0].count
    fig.suptitle(f"local jobs, median and min-max of {rounds} rounds; " + load_title(res))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def ssh_side(res: results.Results, out: Path) -> None:
    summaries = results.summarise(res.samples)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for col, mode in enumerate(("cold", "warm")):
        bars(axes[0][col], summaries, mode, "wall", 1.0)
        axes[0][col].set_title(f"{mode}: wall")
        axes[0][col].set_ylabel("wall, s")
        bars(axes[1][col], summaries, mode, "cpu", 1000.0, per_n=True)
        axes[1][col].set_title(f"{mode}: client CPU per host")
        axes[1][col].set_ylabel("ms per host")
    axes[0][0].legend()
    fig.suptitle(
        f"SSH fan-out of `true` on sim VMs, median and min-max of {summaries[0].count} rounds; "
        + load_title(res)
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def sim_lag(path: Path, out: Path) -> None:
    data = json.loads(path.read_text())
    fig, ax = plt.subplots(figsize=(11, 4.2))
    for phase in data["phases"]:
        if phase["t"]:
            ms = [x * 1000 for x in phase["lag"]]
            ax.plot(phase["t"], ms, ".", markersize=2, label=phase["phase"])
    ax.axhline(20, color="black", linewidth=0.8, linestyle="--", label="goal p99 20 ms")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("lateness of a 10 ms tick, ms")
    ax.set_title(f"event-loop lag during the sim scale run ({data['vms']} VMs)")
    ax.legend(fontsize=7, markerscale=4, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / "benchmarks/plots")
    args = parser.parse_args()
    for name, draw in (("local_side", local_side), ("ssh_side", ssh_side)):
        source = args.dir / f"{name}.json"
        if source.exists():
            draw(results.load(source), args.dir / f"{name}.png")
            print(f"wrote {args.dir / name}.png")
        else:
            print(f"no {source}: skipped")
    source = args.dir / "sim_lag.json"
    if source.exists():
        sim_lag(source, args.dir / "sim_lag.png")
        print(f"wrote {args.dir / 'sim_lag.png'}")
    else:
        print(f"no {source}: skipped")


if __name__ == "__main__":
    main()

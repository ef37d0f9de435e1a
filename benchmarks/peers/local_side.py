"""N local ``/bin/true`` jobs, side by side: raw asyncio, aiores ``local://``, PSI/J, radical.saga.

Each method runs in a fresh process of its own (aiores and raw asyncio under aiores's
virtualenv: ``local_own.py``; PSI/J's ``local`` executor: ``psij_local.py``;
radical.saga's ``fork://localhost``: ``saga_local.py``, each in the peer's pinned venv
from ``venvs.py``), which measures from after its imports: wall time and its own CPU
(``time.process_time``: all its threads, not the jobs'). Rounds alternate the order of
the methods (reversed every other round); each N is measured ``--rounds`` times.
radical.saga starts a shell per job and takes ~0.4 s each, so it runs only up to
``--saga-max`` jobs. Prints each sample, then medians and spreads, and the load
average before, between sizes and after; writes all to ``--json`` for ``plot.py``::

    python benchmarks/peers/local_side.py [--sizes 100 1000] [--rounds 3]
        [--saga-max 100] [--json benchmarks/plots/local_side.json] [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.peers import results  # noqa: E402
from benchmarks.peers.venvs import peer_python  # noqa: E402

HERE = Path(__file__).resolve().parent
METHODS = ("raw", "aiores", "psij", "saga")


def command(method: str, n: int, venvs: Path) -> list[str]:
    if method in ("raw", "aiores"):
        return [sys.executable, str(HERE / "local_own.py"), method, str(n)]
    worker = {"psij": "psij_local.py", "saga": "saga_local.py"}[method]
    return [str(peer_python(method, venvs)), str(HERE / worker), str(n)]


def run_one(method: str, n: int, venvs: Path, work: Path) -> dict[str, float]:
    """One measured run of ``method`` in a fresh process; its JSON line."""
    state = Path(tempfile.mkdtemp(prefix=f"{method}-", dir=work))
    env = {**os.environ, "AIORES_STATE_DIR": str(state), "HOME": str(state)}
    done = subprocess.run(
        command(method, n, venvs),
        cwd=state,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{method} N={n} failed ({done.returncode}): {done.stderr[-2000:]}")
    out: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    if out["ok"] != n:
        raise RuntimeError(f"{method} N={n}: {out['ok']} of {n} jobs succeeded")
    return out


def main() -> int:
    parser = results.parser(
        __doc__.splitlines()[0], [100, 1000], METHODS, ROOT / "benchmarks/plots/local_side.json"
    )
    parser.add_argument("--saga-max", type=int, default=100)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.rounds, args.saga_max = [10], 1, 10

    out = results.start("local")
    print(results.load_line(out))
    with tempfile.TemporaryDirectory(
        prefix="aiores-peers-local-", ignore_cleanup_errors=True
    ) as tmp:
        for n in args.sizes:
            methods = [m for m in args.methods if m != "saga" or n <= args.saga_max]
            for r in range(args.rounds):
                order = methods if r % 2 == 0 else methods[::-1]
                for method in order:
                    got = run_one(method, n, args.venvs, Path(tmp))
                    sample = results.Sample(method, n, "run", r, got["wall"], got["cpu"])
                    out.samples.append(sample)
                    print(
                        f"N={n} round {r + 1} {method:<7} wall {got['wall']:8.3f} s "
                        f"cpu {got['cpu']:7.3f} s",
                        flush=True,
                    )
            out.note_load()
            print(results.load_line(out))
    summaries = results.summarise(out.samples)
    print(results.table(summaries))
    for n in args.sizes:
        base = results.find(summaries, "raw", n, "run")
        for method in args.methods:
            s = results.find(summaries, method, n, "run")
            if base is not None and s is not None:
                print(
                    f"N={n} {method}: wall {s.wall / base.wall:.2f}x raw, "
                    f"{s.wall / n * 1000:.2f} ms per job"
                )
    results.save(out, args.json)
    print(f"samples in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

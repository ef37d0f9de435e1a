"""SSH fan-out of ``true``, side by side: raw asyncssh, aiores ``ssh://``, parallel-ssh, Fabric.

Starts a sim cloud process of its own (temporary directory) and provisions
max(``--sizes``) sim VMs with one ``fleet.provision`` (``ready=None``: no SSH probe),
with ``benchmarks/fanout.py``'s ``provision``: each VM is an SSH server on its own 127.0.0.1 port,
with the host key the cloud published and the aiores-managed ed25519 key as its login
key. For each N, each method runs in a fresh process of its own (raw asyncssh and
aiores's ``ssh://`` pool under aiores's virtualenv: ``ssh_own.py``; parallel-ssh:
``pssh_fanout.py``; Fabric: ``fabric_fanout.py``, each in the peer's pinned venv from
``venvs.py``) on the first N VMs: ``true`` on all at once with new connections
(cold), then again on the open ones (warm). Each measures from after its set-up:
wall and its own CPU (``time.process_time``, all threads), and the growth of its
resident memory with all N connections open. Rounds alternate the order of the
methods (reversed every other round), with a pause of ``SETTLE`` s before each run
for the cloud to tear the previous connections down. Prints each sample, medians and
spreads, CPU per host, the ratios to raw, and the load average before, between sizes
and after; writes all to ``--json`` for ``plot.py``::

    python benchmarks/peers/ssh_side.py [--sizes 100 500] [--rounds 3]
        [--json benchmarks/plots/ssh_side.json] [--quick]
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from aiores_sim import managed_key, start_cloud, stop_cloud  # noqa: E402
from benchmarks.fanout import provision  # noqa: E402
from benchmarks.peers import results  # noqa: E402
from benchmarks.peers.venvs import peer_python  # noqa: E402

HERE = Path(__file__).resolve().parent
METHODS = ("raw", "aiores", "pssh", "fabric")
SETTLE = 1.0


def command(method: str, venvs: Path, targets: Path) -> list[str]:
    if method in ("raw", "aiores"):
        return [sys.executable, str(HERE / "ssh_own.py"), method, str(targets)]
    worker = {"pssh": "pssh_fanout.py", "fabric": "fabric_fanout.py"}[method]
    return [str(peer_python(method, venvs)), str(HERE / worker), str(targets)]


async def run_one(method: str, n: int, venvs: Path, targets: Path, home: Path) -> dict[str, object]:
    """One measured run of ``method`` in a fresh process; its JSON line."""
    argv = await asyncio.to_thread(command, method, venvs, targets)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(home)},
        cwd=home,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 1800)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{method} N={n} failed ({proc.returncode}): {err.decode()[-2000:]}")
    got: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    if got["ok"] != n:
        raise RuntimeError(f"{method} N={n}: {got['ok']} of {n} hosts ran true")
    return got


async def main() -> int:
    parser = results.parser(
        __doc__.splitlines()[0], [100, 500], METHODS, ROOT / "benchmarks/plots/ssh_side.json"
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.rounds = [10], 1

    out = results.start("ssh")
    print(results.load_line(out))
    rss: dict[str, list[float]] = {}
    work = Path(tempfile.mkdtemp(prefix="aiores-peers-ssh-"))
    os.environ["AIORES_STATE_DIR"] = str(work / "state")
    os.environ["AIORES_SIM_DIR"] = str(work / "sim")
    home = work / "home"
    home.mkdir()
    try:
        await start_cloud(work / "sim")
        key = await asyncio.to_thread(managed_key, work / "state")
        vms = sorted(await provision(key, max(args.sizes)))
        print(f"{len(vms)} sim VMs up", flush=True)
        for n in args.sizes:
            targets = work / f"targets-{n}.json"
            known = work / f"known_hosts-{n}"
            known.write_text("".join(f"[127.0.0.1]:{p} {hk}\n" for p, hk, _ in vms[:n]))
            targets.write_text(
                json.dumps(
                    {
                        "key": str(key),
                        "known_hosts": str(known),
                        "user": vms[0][2],
                        "ports": [p for p, _, _ in vms[:n]],
                    }
                )
            )
            for r in range(args.rounds):
                order = args.methods if r % 2 == 0 else args.methods[::-1]
                for method in order:
                    await asyncio.sleep(SETTLE)
                    got = await run_one(method, n, args.venvs, targets, home)
                    line = f"N={n} round {r + 1} {method:<7}"
                    for mode in ("cold", "warm"):
                        sample = got[mode]
                        assert isinstance(sample, dict)
                        out.samples.append(
                            results.Sample(method, n, mode, r, sample["wall"], sample["cpu"])
                        )
                        line += f" {mode} wall {sample['wall']:7.3f} s cpu {sample['cpu']:6.3f} s"
                    grown = got["rss_delta"]
                    assert isinstance(grown, int)
                    rss.setdefault(f"{method} {n}", []).append(grown / n)
                    print(line + f" rss/conn {grown / n / 1024:6.1f} KiB", flush=True)
            out.note_load()
            print(results.load_line(out))
    finally:
        await stop_cloud(work / "sim")  # ends every VM
        await asyncio.to_thread(shutil.rmtree, work, True)
    summaries = results.summarise(out.samples)
    print(results.table(summaries, per_host=True))
    for s in summaries:
        base = results.find(summaries, "raw", s.n, s.mode)
        if base is not None:
            print(
                f"N={s.n} {s.mode} {s.method}: wall {s.wall / base.wall:.2f}x raw, "
                f"CPU {s.cpu / base.cpu:.2f}x raw, {s.cpu / s.n * 1000:.2f} ms CPU per host"
            )
    out.notes["rss_per_connection"] = {k: statistics.median(v) for k, v in rss.items()}
    for k, v in out.notes["rss_per_connection"].items():
        print(f"resident memory per open connection, {k}: {v / 1024:.1f} KiB (median)")
    results.save(out, args.json)
    print(f"samples in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

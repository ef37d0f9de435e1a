"""N EC2 instances: acquire -> running -> destroy against moto, aiores vs raw aioboto3.

Starts a moto server in its own process on 127.0.0.1 (``aiores_ec2.testing``, which
counts every API call as the server sees it and can give new instances a pending
phase), then, in rounds, each method in a fresh child process (so each has its own
peak RSS) against a freshly reset server:

- ``minimal``: a hand-written aioboto3 script doing the least there is to do: one
  RunInstances for all N (with the same tags and user data as aiores sends: moto's
  cost per instance grows with them), DescribeInstances for all ids (chunks of 1000)
  every ``--interval`` seconds until every instance runs, one TerminateInstances per
  1000;
- ``per-instance``: the same, but polling each instance with its own DescribeInstances
  (what a naive ``await instance.wait_until_running()`` per instance does);
- ``aiores``: a journalled ``aiores.Session``, ``ec2://`` (default rate limits, the
  watcher's floor at ``--interval``), ``acquire_many(desc, N)`` with ``ready=None``,
  ``wait(ACTIVE)`` on all N, ``mgr.destroy(vms)``. Before it, untimed, a session
  launches and destroys one instance: the key pair and security group then exist and
  are remembered in the state directory, as for every session after the first on an
  account (the set-up's calls are printed apart).

The server is reset before every run (moto keeps terminated instances and slows down
with them).

Wall time runs from making the client (or session) to the last instance terminated.
Prints a table of medians and the ratios aiores / minimal (goal: wall <= 1.15, calls
<= 2), and the machine's load average::

    .venv/bin/python benchmarks/ec2_boot.py [--count 1000] [--rounds 3] [--pending 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import aioboto3
from botocore.config import Config

import aiores
from aiores import ComputeDescription, ResourceState
from aiores_ec2._setup import new_host_key, user_data
from aiores_ec2.testing import ACCESS_KEY, SECRET_KEY, MotoServer

REGION = "us-east-1"
IMAGE = "ami-12c6146b"
TYPE = "t3.micro"
METHODS = ("minimal", "per-instance", "aiores")


def _client(endpoint: str) -> Any:
    boto = aioboto3.Session(
        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION
    )
    return boto.client("ec2", endpoint_url=endpoint, config=Config(max_pool_connections=100))


def _same_payload() -> dict[str, Any]:
    """A launch request like aiores's: moto's cost per instance grows with tags and data."""
    key = new_host_key()
    tags = {
        "Name": "aiores t-0123456789abcdef",
        "aiores:managed": "1",
        "aiores:session": "s-0123456789ab",
        "aiores:token": "t-0123456789abcdef",
        "aiores:user": "ec2-user",
        "aiores:hostkey": key.public,
    }
    return {
        "UserData": user_data(key, None, None),
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ],
    }


async def minimal(endpoint: str, count: int, interval: float, per_instance: bool) -> None:
    payload = _same_payload()
    async with _client(endpoint) as ec2:
        answer = await ec2.run_instances(
            ImageId=IMAGE, InstanceType=TYPE, MinCount=count, MaxCount=count, **payload
        )
        ids = [i["InstanceId"] for i in answer["Instances"]]
        waiting = set(ids)
        while True:
            if per_instance:
                answers = await asyncio.gather(
                    *(ec2.describe_instances(InstanceIds=[i]) for i in sorted(waiting))
                )
            else:
                chunks = [ids[i : i + 1000] for i in range(0, len(ids), 1000)]
                answers = await asyncio.gather(
                    *(ec2.describe_instances(InstanceIds=c) for c in chunks)
                )
            for page in answers:
                for reservation in page["Reservations"]:
                    for inst in reservation["Instances"]:
                        if inst["State"]["Name"] == "running":
                            waiting.discard(inst["InstanceId"])
            if not waiting:
                break
            await asyncio.sleep(interval)
        await asyncio.gather(
            *(
                ec2.terminate_instances(InstanceIds=ids[i : i + 1000])
                for i in range(0, len(ids), 1000)
            )
        )


async def with_aiores(endpoint: str, count: int, interval: float) -> None:
    context = aiores.AWSContext(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    async with aiores.Session(contexts=[context]) as session:
        mgr = session.manager(
            f"ec2://{REGION}?endpoint={endpoint}&ssh_cidr=127.0.0.1/32&poll={interval}"
        )
        desc = ComputeDescription(image=IMAGE, template=TYPE, ready=None)
        vms = await mgr.acquire_many(desc, count)
        await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in vms))
        await mgr.destroy(vms)


def child(method: str, endpoint: str, count: int, interval: float) -> None:
    """One method in this process; prints its wall time and peak RSS as JSON."""
    start = time.perf_counter()
    if method == "aiores-prep":
        asyncio.run(with_aiores(endpoint, 1, interval))
    elif method == "aiores":
        asyncio.run(with_aiores(endpoint, count, interval))
    else:
        asyncio.run(minimal(endpoint, count, interval, method == "per-instance"))
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    print(json.dumps({"wall": wall, "rss": rss}))


def _spawn(method: str, server: MotoServer, args: argparse.Namespace, state: str) -> Any:
    env = {**os.environ, "AIORES_STATE_DIR": state, "AWS_EC2_METADATA_DISABLED": "true"}
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            method,
            "--endpoint",
            server.url,
            "--count",
            str(args.count),
            "--interval",
            str(args.interval),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_child(method: str, server: MotoServer, args: argparse.Namespace) -> dict[str, Any]:
    """Run one method in a child process against a freshly reset server; its figures.

    Before an aiores run, an untimed aiores session launches and destroys one
    instance in the same state directory: the key pair and group then exist and are
    remembered, as for any session after the first on an account. Its set-up calls
    are reported as ``setup``.
    """
    server.reset_sync()
    if args.pending:
        server.set_faults_sync(pending=args.pending)
    with tempfile.TemporaryDirectory(prefix="aiores-bench-") as state:
        setup = 0
        if method == "aiores":
            _spawn("aiores-prep", server, args, state)
            setup = sum(
                n
                for action, n in server.calls_sync().items()
                if action not in ("RunInstances", "DescribeInstances", "TerminateInstances")
            )
            server.reset_calls_sync()
        result: dict[str, Any] = _spawn(method, server, args, state)
    calls = server.calls_sync()
    result["calls"] = sum(calls.values())
    result["detail"] = calls
    result["setup"] = setup
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pending", type=float, default=0.0, help="seconds new instances pend")
    parser.add_argument("--interval", type=float, default=0.5, help="polling interval (s)")
    parser.add_argument("--child", choices=(*METHODS, "aiores-prep"), help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.endpoint, args.count, args.interval)
        return
    server = MotoServer()
    server.start()
    if args.pending:
        server.set_faults_sync(pending=args.pending)
    load = [os.getloadavg()[0]]
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    try:
        for round_no in range(args.rounds):
            order = METHODS if round_no % 2 == 0 else tuple(reversed(METHODS))
            for method in order:
                result = run_child(method, server, args)
                results[method].append(result)
                print(
                    f"round {round_no + 1} {method:>12}: {result['wall']:6.2f} s "
                    f"{result['calls']:5d} calls  {json.dumps(result['detail'])}",
                    flush=True,
                )
            load.append(os.getloadavg()[0])
    finally:
        server.stop()
    print()
    print(f"{args.count} instances, pending {args.pending} s, poll interval {args.interval} s")
    print(f"{'method':>12} | {'wall (median)':>13} | {'API calls':>9} | {'peak RSS':>9}")
    print(f"{'-' * 12}-+-{'-' * 13}-+-{'-' * 9}-+-{'-' * 9}")
    med: dict[str, dict[str, float]] = {}
    for method in METHODS:
        rows = results[method]
        med[method] = {
            key: statistics.median(r[key] for r in rows) for key in ("wall", "calls", "rss")
        }
        m = med[method]
        print(f"{method:>12} | {m['wall']:11.2f} s | {m['calls']:9.0f} | {m['rss']:5.0f} MiB")
    wall_ratio = med["aiores"]["wall"] / med["minimal"]["wall"]
    call_ratio = med["aiores"]["calls"] / med["minimal"]["calls"]
    print()
    print(
        f"aiores / minimal: wall {wall_ratio:.2f} (goal <= 1.15), "
        f"calls {call_ratio:.2f} (goal <= 2)"
    )
    setups = [r["setup"] for r in results["aiores"]]
    print(f"aiores first-use set-up (key pair, group; once per account): {max(setups)} calls")
    print(
        f"per-instance / minimal: wall "
        f"{med['per-instance']['wall'] / med['minimal']['wall']:.2f}, calls "
        f"{med['per-instance']['calls'] / med['minimal']['calls']:.0f}"
    )
    print(
        f"load average (1 min) during the run: {min(load):.1f} - {max(load):.1f} "
        f"on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()

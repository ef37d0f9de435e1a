"""The ``aiores`` commands of ``sim://``: ``aiores demo`` and ``aiores sim``.

They reach the ``aiores`` command through the entry point group ``aiores.commands``.
``aiores demo`` boots two tagged groups of simulated VMs at once in a fleet
(``session.fleet()``) with a live progress display, fans a file and a command out to
each group, prints a per-host table, tears everything down and sums up the times.
``aiores sim`` starts, stops and describes the simulated cloud of the state directory.

Their aiores errors reach the ``aiores`` group, which says each in one line on
standard error (exit status 2 for bad input, else 1); the demo checks its options
before it starts anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich import box
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aiores import (
    AioresError,
    BadParameter,
    Compute,
    ComputeDescription,
    FanOutError,
    Fleet,
    Group,
    ResourceState,
    RunResult,
    Session,
    Timeout,
    state_dir,
)
from aiores.adaptor import concurrency, validate

from ._client import CloudClient, cloud_pid, start_cloud, stop_cloud
from ._options import Delay
from ._protocol import cloud_dir

__all__ = ["demo", "sim"]

T = TypeVar("T")

console = Console(highlight=False)


def _run(coro: Awaitable[T]) -> T:
    """Run ``coro`` on a fresh event loop; its aiores error is the ``aiores`` group's
    to say (one line on standard error, and the exit status)."""

    async def main() -> T:
        return await coro

    return asyncio.run(main())


# -- aiores demo --------------------------------------------------------------------------


@dataclasses.dataclass
class _Host:
    group: str
    vm: Compute
    booted: float | None = None
    result: RunResult | None = None
    error: str | None = None


@dataclasses.dataclass
class _Group:
    tag: str
    count: int
    template: str
    file_name: str
    file_text: str
    command: str


GROUPS = (
    _Group(
        "web",
        12,
        "small",
        "index.html",
        "<h1>hello from aiores</h1>\n",
        'echo "index.html $(wc -c < index.html) bytes"',
    ),
    _Group(
        "db",
        8,
        "medium",
        "schema.sql",
        "create table runs (id integer primary key, host text, took real);\n",
        'echo "schema.sql sha256 $(sha256sum schema.sql | cut -c1-8)"',
    ),
)


@click.command()
@click.option("--web", "web_count", default=12, show_default=True, help="VMs tagged web")
@click.option("--db", "db_count", default=8, show_default=True, help="VMs tagged db")
@click.option(
    "--boot-delay",
    default="0.5-2",
    show_default=True,
    help="simulated boot time in seconds: 1.5, 0.5-2 or exp:1",
)
def demo(web_count: int, db_count: int, boot_delay: str) -> None:
    """Boot two tagged groups of simulated VMs, fan out to them, tear them down.

    A group of 0 VMs is left out. Every option is checked before anything starts
    (exit status 2 if one is wrong).
    """
    counts = (
        validate.count(web_count, "--web", min=0, max=validate.MAX_COUNT),
        validate.count(db_count, "--db", min=0, max=validate.MAX_COUNT),
    )
    if not any(counts):
        raise BadParameter("--web and --db are both 0: there is nothing to boot")
    try:
        Delay.parse("boot_delay", validate.text(boot_delay, "--boot-delay"))
    except BadParameter:
        raise BadParameter(
            f"--boot-delay must be seconds (1.5), a range (0.5-2) or an exponential mean "
            f"(exp:1.0), finite and >= 0, not {boot_delay!r}"
        ) from None
    groups = tuple(
        dataclasses.replace(group, count=count)
        for group, count in zip(GROUPS, counts, strict=True)
        if count
    )
    _run(_demo(groups, boot_delay))


async def _timed(fn: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    start = time.perf_counter()
    value = await fn()
    return value, time.perf_counter() - start


#: Seconds the demo's teardown (destroying its VMs, stopping a cloud it started) may take.
CLEANUP_TIMEOUT = 60.0


async def _demo(groups: tuple[_Group, ...], boot_delay: str) -> None:
    """The demo; whatever happens (a failed acquire, Ctrl-C), its VMs are destroyed and a
    cloud it started is stopped."""
    total_start = time.perf_counter()
    directory = cloud_dir(state_dir())
    was_running = await cloud_pid(directory) is not None
    times: dict[str, float] = {}
    hosts: list[_Host] = []
    try:
        # No contexts needed: each sim VM names the aiores-managed key that logs in to it.
        async with Session() as session:
            fleet = session.fleet()
            console.print(
                f"[bold]aiores demo[/]: {sum(g.count for g in groups)} simulated VMs in "
                f"{len(groups)} tagged groups ("
                + ", ".join(f"{g.count} {g.tag}" for g in groups)
                + ")"
            )
            start = time.perf_counter()
            try:
                url = "sim://?" + urllib.parse.urlencode({"boot_delay": boot_delay})
                provisions = [
                    fleet.provision(
                        url, ComputeDescription(template=g.template, tags={g.tag}), g.count
                    )
                    for g in groups
                ]
                # Every group's acquire runs to its end, so none is left unaccounted for.
                acquired = await concurrency.settle(p.result() for p in provisions)
                times["acquire"] = time.perf_counter() - start
                for group, vms in zip(groups, acquired, strict=True):
                    if not isinstance(vms, Exception):
                        hosts.extend(_Host(group.tag, vm) for vm in vms)
                for error in concurrency.errors(acquired):
                    raise error
                _, times["boot (until SSH answers)"] = await _timed(
                    lambda: _boot(fleet, groups, hosts, start)
                )
                _, times["fan-out (file + command)"] = await _timed(
                    lambda: _fan_out(fleet, groups, hosts)
                )
                console.print()
                console.print(_table(hosts))
            finally:
                # The fleet destroys what it provisioned (shielded, bounded).
                if hosts:
                    _, times["teardown"] = await _timed(fleet.aclose)
                else:
                    await fleet.aclose()
    finally:
        # A cloud this demo started goes too, unless another program has VMs there now.
        if not was_running:
            async with concurrency.fail_after(CLEANUP_TIMEOUT, "stopping the sim cloud"):
                stopped = await _stop_unused(directory)
            if stopped is not None:
                times["stopping the sim cloud"] = stopped
    times["total"] = time.perf_counter() - total_start
    console.print(_summary(hosts, times))


async def _stop_unused(directory: Path) -> float | None:
    """Stop the cloud of ``directory`` if no program has VMs there; seconds it took."""
    if await _cloud_in_use(directory):
        return None
    _, took = await _timed(lambda: stop_cloud(directory))
    return took


async def _cloud_in_use(directory: Path) -> bool:
    client = CloudClient(directory)
    try:
        hello = await client.call("hello", start=False)
    except AioresError:
        return False
    finally:
        await client.close()
    return bool(hello.get("vms"))


#: Seconds the VMs may take to boot (until SSH answers).
BOOT_TIMEOUT = 120.0


async def _boot(fleet: Fleet, groups: tuple[_Group, ...], hosts: list[_Host], start: float) -> None:
    """``fleet.wait`` for every VM, showing each group's progress as its VMs come up."""
    progress = Progress(
        TextColumn("{task.description:>4}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
    )
    bars = {g.tag: progress.add_task(g.tag, total=g.count, note="booting") for g in groups}
    failed = dict.fromkeys(bars, 0)

    def show(host: _Host) -> None:
        if host.error is not None:
            failed[host.group] += 1
        progress.update(bars[host.group], advance=1)
        done = progress.tasks[bars[host.group]].completed
        total = progress.tasks[bars[host.group]].total
        note = "ready" if done == total else "booting"
        if failed[host.group]:
            note += f" [red]({failed[host.group]} failed)[/]"
        progress.update(bars[host.group], note=note)

    async def watch(host: _Host) -> None:
        # The display only (when this VM came up): the fleet's wait is the wait.
        try:
            await host.vm.wait(ResourceState.ACTIVE)
            host.booted = time.perf_counter() - start
        except AioresError as exc:
            host.error = f"{type(exc).__name__}: {exc}"
        show(host)

    with Live(progress, console=console, refresh_per_second=12, transient=False):
        async with concurrency.TaskSet("demo-boot") as watching:
            for host in hosts:
                watching.spawn(watch(host), name=f"aiores-demo-boot {host.vm.id}")
            try:
                await fleet.wait(timeout=BOOT_TIMEOUT)
            except Timeout as exc:  # the VMs still booting fail; the others go on
                for host in hosts:
                    if host.vm.state is not ResourceState.ACTIVE and host.error is None:
                        host.error = f"Timeout: {exc}"
                        show(host)
                return  # (leaving the TaskSet stops the watches)
            except FanOutError:
                pass  # each VM that failed says so (watch)
            # Every VM is ACTIVE or failed now: every watch ends at once.
            async for _ in watching.as_completed():
                pass


async def _fan_out(fleet: Fleet, groups: tuple[_Group, ...], hosts: list[_Host]) -> None:
    """Each group's file, then its command, on the group's VMs that came up."""
    by_vm = {id(host.vm): host for host in hosts}

    def failed(result: RunResult) -> bool:
        host = by_vm[id(result.resource)]
        if result.error is not None:
            host.error = f"{type(result.error).__name__}: {result.error}"
        return result.error is not None

    with tempfile.TemporaryDirectory(prefix="aiores-demo-") as tmp:

        async def one(group: _Group) -> None:
            path = Path(tmp) / group.file_name
            await asyncio.to_thread(path.write_text, group.file_text)
            up = Group(vm for vm in fleet.select(group.tag) if by_vm[id(vm)].error is None)
            if not up:
                return
            put = await up.put(path, group.file_name, check=False)
            copied = {id(r.resource) for r in put if not failed(r)}
            ready = Group(vm for vm in up if id(vm) in copied)
            if not ready:
                return
            for result in await ready.run(group.command, timeout=60, check=False):
                if not failed(result):
                    by_vm[id(result.resource)].result = result

        await asyncio.gather(*(one(group) for group in groups))


def _table(hosts: list[_Host]) -> Table:
    table = Table(title="per host", title_justify="left", header_style="bold", box=box.SIMPLE)
    table.add_column("group", no_wrap=True, min_width=5)
    table.add_column("vm", no_wrap=True, min_width=13)
    table.add_column("up after", justify="right", no_wrap=True, min_width=8)
    table.add_column("exit", justify="right", no_wrap=True, min_width=4)
    table.add_column("took", justify="right", no_wrap=True, min_width=6)
    table.add_column("output", no_wrap=True, overflow="ellipsis", ratio=1)
    for host in sorted(hosts, key=lambda h: (h.group, h.booted or 1e9)):
        booted = f"{host.booted:.2f} s" if host.booted is not None else "-"
        if host.result is not None:
            status = host.result.exit_status
            exit_text = "[green]0[/]" if status == 0 else f"[red]{status}[/]"
            took = f"{host.result.elapsed * 1000:.0f} ms"
            output = host.result.stdout.strip().splitlines()[0] if host.result.stdout else ""
        else:
            exit_text, took, output = "[red]-[/]", "-", f"[red]{host.error or 'not run'}[/]"
        table.add_row(host.group, host.vm.native_id, booted, exit_text, took, output)
    return table


def _summary(hosts: list[_Host], times: dict[str, float]) -> Table:
    ok = sum(1 for h in hosts if h.result is not None and h.result.exit_status == 0)
    states: dict[str, int] = {}
    for host in hosts:
        states[host.vm.state.name] = states.get(host.vm.state.name, 0) + 1
    now = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    console.print(f"[bold]summary[/]: {ok}/{len(hosts)} hosts ran their command; now {now}")
    table = Table(show_header=False, box=box.SIMPLE)
    table.add_column("phase", no_wrap=True)
    table.add_column("seconds", justify="right", no_wrap=True)
    for phase, seconds in times.items():
        style = "bold" if phase == "total" else ""
        table.add_row(phase, f"{seconds:.2f} s", style=style)
    return table


# -- aiores sim ---------------------------------------------------------------------------


@click.group()
def sim() -> None:
    """The simulated cloud (sim://) of the state directory."""


def _cloud_dir() -> Path:
    return cloud_dir(state_dir())


@sim.command("start")
def sim_start() -> None:
    """Start the simulated cloud (if it is not running)."""

    async def start() -> int | None:
        await start_cloud(_cloud_dir())
        return await cloud_pid(_cloud_dir())

    pid = _run(start())
    console.print(f"sim cloud running in {_cloud_dir()} (pid {pid})")


@sim.command("stop")
def sim_stop() -> None:
    """Stop the simulated cloud: every VM ends, its processes and disks go."""
    if _run(stop_cloud(_cloud_dir())):
        console.print(f"sim cloud in {_cloud_dir()} stopped")
    else:
        console.print(f"no sim cloud runs in {_cloud_dir()}")


@sim.command("status")
def sim_status() -> None:
    """Say whether the simulated cloud runs, and list its VMs."""

    async def status() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        client = CloudClient(_cloud_dir())
        try:
            hello = await client.call("hello", start=False)
            vms = await client.call("list", {"tags": []}, start=False)
        except AioresError:
            return None
        finally:
            await client.close()
        return hello, vms

    answer = _run(status())
    if answer is None:
        console.print(f"no sim cloud runs in {_cloud_dir()}")
        return
    hello, vms = answer
    console.print(f"sim cloud running in {_cloud_dir()} (pid {hello['pid']}): {len(vms)} VMs")
    if "isolation_detail" in hello:
        console.print(f"isolation: {hello['isolation_detail']}")
    if hello.get("shared"):
        # Paths are copied into other commands: never wrapped.
        console.print(f"shared with every VM: {', '.join(hello['shared'])}", soft_wrap=True)
    if vms:
        table = Table(header_style="bold")
        # Ids and access URLs are copied into other commands: never cut, never wrapped;
        # the other columns fold when the terminal is narrow.
        for name, key in (("vm", "id"), ("access", "access")):
            width = max(len(name), *(len(str(vm[key])) for vm in vms))
            table.add_column(name, no_wrap=True, min_width=width)
        for name in ("state", "detail", "template", "tags"):
            table.add_column(name, overflow="fold")
        for vm in vms:
            table.add_row(
                vm["id"],
                vm["access"],
                vm["state"],
                vm["detail"],
                vm["extra"]["template"],
                ",".join(vm["tags"]),
            )
        console.print(table)

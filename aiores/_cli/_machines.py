"""``aiores provision | ls | run | put | get | deprovision``: machines from the shell.

Machines outlive the command that provisioned them: every command finds them again
through the journal of the state directory (``$AIORES_STATE_DIR``) and a live describe
(:meth:`Session.recover`), and selects them by tag.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from .._concurrency import move_on_after, settle
from .._descriptions import ComputeDescription
from .._exceptions import AioresError, BadParameter, DoesNotExist
from .._group import Group
from .._recover import describe_age, endpoint_of
from .._resource import Compute, Resource
from .._results import GroupResult, RunResult
from .._session import Session
from .._states import ResourceState
from .._url import split_id
from ._common import (
    console,
    emit_json,
    err,
    host_label,
    machines,
    recovered,
    resource_json,
    run,
    select,
)

__all__ = ["deprovision", "get", "ls", "provision", "put", "run_command"]

TAG_HELP = "Select the machines carrying this tag (repeat: all of them)."


# -- provision -------------------------------------------------------------------------------


@click.command()
@click.argument("url")
@click.option("--image", help="The image to boot (see the cloud's images).")
@click.option("--template", help="The size to boot (sim://: tiny, small, medium, large, xlarge).")
@click.option("--count", "-n", default=1, show_default=True, help="How many machines.")
@click.option("--tag", "-t", "tags", multiple=True, help="A tag for them (repeatable).")
@click.option("--wait/--no-wait", default=False, help="Wait until every machine is ACTIVE.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds --wait may take.")
@click.option("--json", "as_json", is_flag=True, help="Print the machines as JSON.")
def provision(
    url: str,
    image: str | None,
    template: str | None,
    count: int,
    tags: tuple[str, ...],
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Acquire COUNT machines at URL and print their ids; they outlive the command.

    \b
    Examples:
      aiores provision sim:// --count 8 --tag web
      aiores provision 'sim://?boot_delay=0.5-2' -n 4 -t db --template medium --wait
      aiores provision ec2://us-east-1 --image ami-0abc --template t3.micro -t batch

    Ctrl-C while acquiring releases what was being acquired; with --wait, Ctrl-C
    releases the machines still booting and keeps those already ACTIVE, and says which.
    """
    desc = ComputeDescription(image=image, template=template, tags=frozenset(tags))
    vms = run(lambda: _provision(url, desc, count, wait, timeout))
    if as_json:
        emit_json([resource_json(vm) for vm in vms])
    else:
        for vm in vms:
            click.echo(vm.id)
    err.print(
        f"provisioned {len(vms)} machines at {url}" + (f" tagged {', '.join(tags)}" if tags else "")
    )


async def _provision(
    url: str, desc: ComputeDescription, count: int, wait: bool, timeout: float
) -> list[Compute]:
    async with Session() as session:
        mgr = session.manager(url)
        vms: list[Compute] = []
        try:
            vms = await mgr.acquire_many(desc, count)
            if wait:
                await _wait_active(vms, timeout)
        except asyncio.CancelledError:
            await _interrupted_provision(session, vms)
            raise
        return vms


async def _wait_active(vms: list[Compute], timeout: float) -> None:
    progress = Progress(
        TextColumn("booting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    bar = progress.add_task("boot", total=len(vms))

    async def one(vm: Compute) -> None:
        await vm.wait(ResourceState.ACTIVE, timeout=timeout)
        progress.update(bar, advance=1)

    with progress:
        outcomes = await settle(one(vm) for vm in vms)
    failed = [(vm, o) for vm, o in zip(vms, outcomes, strict=True) if isinstance(o, Exception)]
    for vm, outcome in failed:
        err.print(f"{vm.id}: {type(outcome).__name__}: {outcome}", style="red")
    if failed:
        raise AioresError(f"{len(failed)} of {len(vms)} machines did not become ACTIVE")


async def _interrupted_provision(session: Session, vms: list[Compute]) -> None:
    """Say what a cancelled provision released and kept (releasing what still boots).

    Cancelled during the acquire, the core has released what the call created (the
    journal's intent, now ``released``, names it); cancelled while waiting, the
    machines still booting are released here (shielded, bounded) and ACTIVE ones kept.
    """
    released = 0
    if not vms and session.journal is not None:
        for intent in await session.journal.intents("released"):
            if intent.session == session.id:
                released += len(intent.ids)
                err.print(f"released {len(intent.ids)} machines being acquired at {intent.url}")
                for native in intent.ids:
                    err.print(f"released [{intent.url}]-[{native}]")
    booting = [vm for vm in vms if vm.state is not ResourceState.ACTIVE and not vm.state.final]
    kept = [vm for vm in vms if vm.state is ResourceState.ACTIVE]
    if booting:
        mgr = booting[0].manager
        await session.shielded(
            lambda: mgr.destroy(booting), what="releasing machines still booting"
        )
        released += len(booting)
        for vm in booting:
            err.print(f"released {vm.id} (still booting)")
    for vm in kept:
        err.print(f"kept {vm.id} (ACTIVE)")
        click.echo(vm.id)
    err.print(f"interrupted: released {released}, kept {len(kept)}")


# -- ls ---------------------------------------------------------------------------------------


@click.command()
@click.option("--tag", "-t", "tags", multiple=True, help=TAG_HELP)
@click.option("--probe", is_flag=True, help="Check that SSH answers on running machines.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds --probe may take.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of objects).")
def ls(tags: tuple[str, ...], probe: bool, timeout: float, as_json: bool) -> None:
    """List the machines earlier commands and programs acquired and that are alive.

    From the journal plus a live describe at each cloud: machine, cloud, state (the
    cloud's own word in brackets), address, tags, age. A machine the cloud says is
    running is PENDING until SSH answers: --probe checks that (ACTIVE once it does).

    \b
    Examples:
      aiores ls
      aiores ls --tag web --probe
      aiores ls --json | jq -r '.[].id'
    """
    rows = run(lambda: _ls(tags, probe, timeout))
    if as_json:
        emit_json(rows)
        return
    table = Table(header_style="bold", box=box.SIMPLE)
    for name in ("machine", "cloud", "state", "address", "tags", "age"):
        table.add_column(name, overflow="fold")
    for row in rows:
        address = row["public_address"] or row["private_address"] or row["access"] or "-"
        table.add_row(
            row["native_id"],
            endpoint_of(row["url"]),
            f"{row['state']} ({row['detail']})" if row["detail"] else row["state"],
            address,
            ",".join(row["tags"]),
            describe_age(row["created"]),
        )
    console.print(table)
    err.print(f"{len(rows)} machines")


async def _ls(tags: Sequence[str], probe: bool, timeout: float) -> list[dict[str, Any]]:
    async with Session() as session:
        found = await recovered(session)
        chosen = select(found, tags)
        if probe:
            running = [r for r in chosen if r.state is ResourceState.PENDING]
            async with move_on_after(timeout):
                await settle(r.wait(ResourceState.ACTIVE) for r in running)
        assert session.journal is not None
        journal_rows = {o["id"]: o for o in await session.journal.objects("resource")}
        return [resource_json(r, journal_rows.get(r.id)) for r in chosen]


# -- run --------------------------------------------------------------------------------------


@click.command("run")
@click.option("--tag", "-t", "tags", multiple=True, required=True, help=TAG_HELP)
@click.option("--grouped", is_flag=True, help="Each host's output together under a header.")
@click.option("--timeout", type=float, help="Seconds each host's command may take.")
@click.option("--limit", type=int, help="The most hosts to run on at once.")
@click.option("--json", "as_json", is_flag=True, help="Print every host's result as JSON.")
@click.argument("command", nargs=-1, required=True)
def run_command(
    tags: tuple[str, ...],
    grouped: bool,
    timeout: float | None,
    limit: int | None,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND on every machine carrying the tags, at once.

    Output lines carry a [host] prefix (pssh style), or come per host with --grouped;
    a summary of exit statuses follows on standard error. The exit status is 0 only
    if the command exited 0 on every host. One word is a shell command; several are a
    program and its arguments.

    \b
    Examples:
      aiores run --tag web -- uname -a
      aiores run -t web -t eu --grouped -- 'df -h /; uptime'
      aiores run -t db --json -- systemctl is-active postgresql

    Ctrl-C stops the command on every host still running it and says where.
    """
    cmd: str | list[str] = command[0] if len(command) == 1 else list(command)
    results = run(lambda: _run(tags, cmd, grouped, timeout, limit, as_json))
    if as_json:
        emit_json([_result_json(r) for r in results])
    _summary(results, "command")
    if not results.ok:
        raise SystemExit(1)


async def _group(session: Session, tags: Sequence[str]) -> Group:
    found = await recovered(session)
    chosen = machines(found, tags)
    if not chosen:
        raise DoesNotExist(f"no live machine carries the tags {', '.join(tags)}")
    return Group(chosen)


async def _run(
    tags: Sequence[str],
    cmd: str | list[str],
    grouped: bool,
    timeout: float | None,
    limit: int | None,
    quiet: bool,
) -> GroupResult:
    async with Session() as session:
        group = await _group(session, tags)
        done: list[RunResult] = []
        try:
            async with contextlib.aclosing(
                group.run_stream(cmd, timeout=timeout, limit=limit)
            ) as stream:
                async for result in stream:
                    done.append(result)
                    if not quiet:
                        _print_result(result, grouped)
        except asyncio.CancelledError:
            ran = {id(r.resource) for r in done}
            stopped = [vm for vm in group if id(vm) not in ran]
            for vm in stopped:
                err.print(f"stopped the command on {host_label(vm)}")
            err.print(f"interrupted: {len(done)} hosts finished, stopped on {len(stopped)}")
            raise
        order = {id(vm): i for i, vm in enumerate(group)}
        return GroupResult(sorted(done, key=lambda r: order.get(id(r.resource), 0)))


def _print_result(result: RunResult, grouped: bool) -> None:
    host = host_label(result.resource)
    if grouped:
        status = _status(result)
        style = "green" if result.ok else "red"
        console.print(Text.assemble((f"── {host} ", "bold"), (status, style)))
        if result.stdout:
            click.echo(result.stdout, nl=not result.stdout.endswith("\n"))
        if result.stderr:
            click.echo(result.stderr, nl=not result.stderr.endswith("\n"), err=True)
        return
    for line in result.stdout.splitlines():
        click.echo(f"[{host}] {line}")
    for line in result.stderr.splitlines():
        click.echo(f"[{host}] {line}", err=True)
    if not result.ok:
        click.echo(f"[{host}] {_status(result)}", err=True)


def _status(result: RunResult) -> str:
    if result.error is not None:
        return f"{type(result.error).__name__}: {result.error}"
    if result.exit_signal is not None:
        return f"killed by signal {result.exit_signal}"
    return f"exit {result.exit_status}"


def _result_json(result: RunResult) -> dict[str, Any]:
    return {
        "id": result.resource.id if result.resource is not None else None,
        "host": host_label(result.resource),
        "exit_status": result.exit_status,
        "exit_signal": result.exit_signal,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}",
        "elapsed": round(result.elapsed, 3),
    }


def _summary(results: GroupResult, what: str) -> None:
    failed = results.failed
    line = f"{len(results)} hosts: {len(results) - len(failed)} ok, {len(failed)} failed"
    if failed:
        line += ": " + ", ".join(f"{host_label(r.resource)} ({_status(r)})" for r in failed[:10])
        if len(failed) > 10:
            line += f" and {len(failed) - 10} more"
    err.print(f"{what}: {line}", style="red" if failed else "green")


# -- put / get --------------------------------------------------------------------------------


@click.command()
@click.option("--tag", "-t", "tags", multiple=True, required=True, help=TAG_HELP)
@click.option("--timeout", type=float, help="Seconds each host's copy may take.")
@click.argument("local", type=click.Path(exists=True, path_type=Path))
@click.argument("remote")
def put(tags: tuple[str, ...], timeout: float | None, local: Path, remote: str) -> None:
    """Copy the local file or directory LOCAL to REMOTE on every tagged machine.

    \b
    Examples:
      aiores put --tag web index.html /var/www/index.html
      aiores put -t batch ./inputs inputs

    The exit status is 0 only if every copy completed. Ctrl-C stops every transfer.
    """

    async def go() -> GroupResult:
        async with Session() as session:
            group = await _group(session, tags)
            return await group.put(local, remote, check=False, timeout=timeout)

    results = run(go)
    for result in results:
        click.echo(f"[{host_label(result.resource)}] {'ok' if result.ok else _status(result)}")
    _summary(results, "put")
    if not results.ok:
        raise SystemExit(1)


@click.command()
@click.option("--tag", "-t", "tags", multiple=True, required=True, help=TAG_HELP)
@click.option("--timeout", type=float, help="Seconds each host's copy may take.")
@click.argument("remote")
@click.argument("local", type=click.Path(path_type=Path))
def get(tags: tuple[str, ...], timeout: float | None, remote: str, local: Path) -> None:
    """Copy REMOTE from every tagged machine to LOCAL.

    With one machine the copy goes to LOCAL; with several, to LOCAL.<cloud>-<id>
    for each (the output says where each went).

    \b
    Examples:
      aiores get --tag web /var/log/syslog logs/syslog
      aiores get -t batch results results

    The exit status is 0 only if every copy completed. Ctrl-C stops every transfer.
    """

    async def go() -> tuple[GroupResult, dict[str, Path]]:
        async with Session() as session:
            group = await _group(session, tags)
            where = {vm.id: group.local_path(local, vm) for vm in group}
            return await group.get(remote, local, check=False, timeout=timeout), where

    results, where = run(go)
    for result in results:
        host = host_label(result.resource)
        target = where.get(result.resource.id) if result.resource is not None else None
        click.echo(f"[{host}] " + (f"-> {target}" if result.ok else _status(result)))
    _summary(results, "get")
    if not results.ok:
        raise SystemExit(1)


# -- deprovision ------------------------------------------------------------------------------


@click.command()
@click.option("--tag", "-t", "tags", multiple=True, help=TAG_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the released ids as JSON.")
@click.argument("ids", nargs=-1)
def deprovision(tags: tuple[str, ...], as_json: bool, ids: tuple[str, ...]) -> None:
    """Release machines: those carrying the tags, or those named by id.

    \b
    Examples:
      aiores deprovision --tag web
      aiores deprovision '[sim://]-[vm-4f2a0c1d9e]'
      aiores ls --json | jq -r '.[].id' | xargs aiores deprovision
    """
    if not tags and not ids:
        raise click.UsageError("name the machines: --tag TAG or their ids")
    released = run(lambda: _deprovision(tags, ids))
    if as_json:
        emit_json(released)
    else:
        for rid in released:
            click.echo(rid)
    err.print(f"released {len(released)} machines")


async def _deprovision(tags: Sequence[str], ids: Sequence[str]) -> list[str]:
    async with Session() as session:
        found = await recovered(session)
        chosen: list[Resource] = select(found, tags, ids)
        known = {r.id for r in chosen} | {r.native_id for r in chosen}
        unknown = [i for i in ids if i not in known]
        by_url: dict[str, list[Resource | str]] = {}
        for resource in chosen:
            by_url.setdefault(str(resource.manager.url), []).append(resource)
        for rid in unknown:  # not recorded: an explicit id of another program's resource
            parts = split_id(rid)
            if parts is None:
                raise BadParameter(f"no live machine has the id {rid!r} in the journal")
            by_url.setdefault(parts[0], []).append(rid)
        released: list[str] = []
        for url, targets in by_url.items():
            await session.manager(url).destroy(targets)
            released.extend(t.id if isinstance(t, Resource) else t for t in targets)
        return released

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

from .. import _shell
from .. import _validate as validate
from .._concurrency import move_on_after, settle
from .._descriptions import ComputeDescription
from .._exceptions import DoesNotExist, NoSuccess
from .._group import Group
from .._recover import describe_age, endpoint_of
from .._resource import Compute, Resource
from .._results import GroupResult, RunResult
from .._session import Session
from .._states import ResourceState
from .._url import split_id
from ._common import (
    EXIT_FAILED,
    check_ids,
    check_name,
    check_tags,
    check_url,
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

    Every option is checked before anything is acquired (exit status 2 if one is
    wrong). With --wait, the machines that did not become ACTIVE within --timeout
    (or failed to boot) are released and those ACTIVE are kept: their ids are
    printed, the command says how to release them, and it exits with status 1.
    Ctrl-C while acquiring releases what was being acquired; with --wait, Ctrl-C
    releases the machines still booting and keeps those already ACTIVE, and says which.
    """
    desc = ComputeDescription(
        image=check_name(image, "--image"),
        template=check_name(template, "--template"),
        tags=frozenset(tags),
    )
    check_tags(tags)  # what the description lets through: control characters
    count = validate.count(count, "count")
    seconds = validate.timeout(timeout, "timeout")
    check_url(url)
    vms = run(lambda: _provision(url, desc, count, wait, seconds))
    if as_json:
        emit_json([resource_json(vm) for vm in vms])
    else:
        for vm in vms:
            click.echo(vm.id)
    err.print(
        f"provisioned {len(vms)} machines at {url}" + (f" tagged {', '.join(tags)}" if tags else "")
    )


async def _provision(
    url: str, desc: ComputeDescription, count: int, wait: bool, timeout: float | None
) -> list[Compute]:
    async with Session() as session:
        mgr = session.manager(url)
        vms: list[Compute] = []
        try:
            vms = await mgr.acquire_many(desc, count)
            if wait:
                failed = await _wait_active(vms, timeout)
                for vm, exc in failed:
                    err.print(f"{vm.id}: did not become ACTIVE: {_error(exc)}", style="red")
                if failed:
                    await _failed_provision(session, vms, [vm for vm, _ in failed])
        except asyncio.CancelledError:
            await _interrupted_provision(session, vms)
            raise
        return vms


async def _wait_active(
    vms: Sequence[Compute], timeout: float | None, label: str = "booting"
) -> list[tuple[Compute, Exception]]:
    """Wait for every machine to be ACTIVE (a progress bar on a terminal).

    Returns each machine that did not become ACTIVE with why (a failed boot, a
    timeout).
    """
    progress = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    bar = progress.add_task(label, total=len(vms))

    async def one(vm: Compute) -> None:
        await vm.wait(ResourceState.ACTIVE, timeout=timeout)
        progress.update(bar, advance=1)

    with progress:
        outcomes = await settle(one(vm) for vm in vms)
    return [(vm, o) for vm, o in zip(vms, outcomes, strict=True) if isinstance(o, Exception)]


async def _failed_provision(session: Session, vms: list[Compute], failed: list[Compute]) -> None:
    """Release the machines that did not become ACTIVE, keep the others; raise NoSuccess."""
    left = await _release(session, failed, "did not become ACTIVE")
    kept = [vm for vm in vms if vm not in failed]
    for vm in kept:
        err.print(f"kept {vm.id} (ACTIVE)")
        click.echo(vm.id)
    _how_to_release(kept + left)
    raise NoSuccess(
        f"{len(failed)} of {len(vms)} machines did not become ACTIVE: released "
        f"{len(failed) - len(left)}, kept {len(kept)} ACTIVE"
    )


async def _release(session: Session, vms: Sequence[Compute], why: str) -> list[Compute]:
    """Release ``vms`` (shielded, bounded) and say so; those that could not be."""
    if not vms:
        return []
    mgr = vms[0].manager
    problem: list[BaseException] = []

    async def destroy() -> None:
        try:
            await mgr.destroy(vms)
        except Exception as exc:  # said below, with how to release them by hand
            problem.append(exc)

    await session.shielded(destroy, what=f"releasing machines that {why}")
    if not problem:
        for vm in vms:
            err.print(f"released {vm.id} ({why})")
        return []
    err.print(f"could not release them: {_error(problem[0])}", style="red")
    return list(vms)


def _how_to_release(vms: Sequence[Compute]) -> None:
    """Say which machines are left and the command that releases them."""
    if vms:
        ids = _shell.join((vm.id for vm in vms), "id")
        err.print(f"left {len(vms)} machines: release them with: aiores deprovision {ids}")


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
    left = await _release(session, booting, "still booting")
    released += len(booting) - len(left)
    for vm in kept:
        err.print(f"kept {vm.id} (ACTIVE)")
        click.echo(vm.id)
    _how_to_release(left)
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
    tags = check_tags(tags)
    seconds = validate.timeout(timeout, "timeout")
    rows = run(lambda: _ls(tags, probe, seconds))
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


async def _ls(tags: Sequence[str], probe: bool, timeout: float | None) -> list[dict[str, Any]]:
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
@click.option(
    "--timeout", type=float, help="Seconds each host's command (and the boot wait) may take."
)
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

    Output lines are printed as they arrive with a [host] prefix (pssh style), a
    host's standard error lines on standard error; with --grouped, each host's output
    comes together under a header once that host is done. A summary of exit statuses
    follows on standard error. The exit status is 0 only if the command exited 0 on
    every host. One word is a shell command; several are a program and its arguments.

    \b
    Examples:
      aiores run --tag web -- uname -a
      aiores run -t web -t eu --grouped -- 'df -h /; uptime'
      aiores run -t db --json -- systemctl is-active postgresql

    Machines still booting (provisioned without --wait) are waited for first, up to
    --timeout seconds (300 without it), with a line saying how many; one that does
    not boot is reported as failed, and the command runs on the others. --timeout
    then bounds each host's command.

    Ctrl-C stops the command on every host still running it and says where; the
    lines printed so far stay (a last line with no newline yet included).
    """
    cmd: str | list[str] = command[0] if len(command) == 1 else list(command)
    tags, (seconds, limit) = check_tags(tags), _fan_out_options(timeout, limit)
    results = run(lambda: _run(tags, cmd, grouped, seconds, limit, as_json))
    if as_json:
        emit_json([_result_json(r) for r in results])
    _summary(results, "command")
    if not results.ok:
        raise SystemExit(EXIT_FAILED)


def _fan_out_options(timeout: float | None, limit: int | None) -> tuple[float | None, int | None]:
    """--timeout and --limit of run, put and get, checked before anything is done."""
    return validate.timeout(timeout, "timeout"), (
        None if limit is None else validate.count(limit, "limit")
    )


#: Seconds run, put and get wait for machines still booting, unless --timeout says.
BOOT_TIMEOUT = 300.0
#: Seconds to find out quietly whether machines the cloud runs answer SSH already
#: (a later command sees them PENDING until they do) before saying "waiting".
BOOT_GRACE = 1.0


async def _ready_group(
    session: Session, tags: Sequence[str], timeout: float | None
) -> tuple[Group, list[RunResult]]:
    """The tagged machines once ACTIVE, and a failed result for each that did not boot.

    Machines still coming up (provisioned without --wait) are waited for, up to
    ``timeout`` (else :data:`BOOT_TIMEOUT`) seconds, saying so on standard error.
    """
    found = await recovered(session)
    chosen = machines(found, tags)
    if not chosen:
        raise DoesNotExist(f"no live machine carries the tags {', '.join(tags)}")
    bound = BOOT_TIMEOUT if timeout is None else timeout
    loop = asyncio.get_running_loop()
    due = loop.time() + bound
    coming = [vm for vm in chosen if vm.state in (ResourceState.NEW, ResourceState.PENDING)]
    if coming:  # cancelling a wait changes nothing: those not ACTIVE yet are waited for below
        async with move_on_after(min(BOOT_GRACE, bound)):
            await settle(vm.wait(ResourceState.ACTIVE) for vm in coming)
    booting = [vm for vm in coming if vm.state is not ResourceState.ACTIVE]
    failed: dict[int, Exception] = {}
    if booting:
        err.print(f"waiting for {len(booting)} machines to boot")
        left = max(0.0, due - loop.time())
        failed = {id(vm): exc for vm, exc in await _wait_active(booting, left)}
    for vm in chosen:
        if vm.state.final:  # a failed boot another command waited for, or a machine that died
            failed[id(vm)] = NoSuccess(f"it is {vm.state.name} ({vm.state_detail})")
    results = [
        RunResult(
            exit_status=None,
            resource=vm,
            error=NoSuccess(f"{vm.id} did not boot: {_error(failed[id(vm)])}"),
        )
        for vm in chosen
        if id(vm) in failed
    ]
    return Group(vm for vm in chosen if id(vm) not in failed), results


async def _run(
    tags: Sequence[str],
    cmd: str | list[str],
    grouped: bool,
    timeout: float | None,
    limit: int | None,
    quiet: bool,
) -> GroupResult:
    """Run ``cmd`` on the tagged machines; unless ``quiet``, print as it goes: each
    line as it arrives (not ``grouped``), or each host's output once it is done."""
    async with Session() as session:
        group, done = await _ready_group(session, tags, timeout)
        if not quiet:
            for result in done:
                _print_result(result, grouped)
        on_line = None if quiet or grouped else _print_line
        try:
            async with contextlib.aclosing(
                group.run_stream(cmd, timeout=timeout, limit=limit, on_line=on_line)
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
        return _in_order(done, group)


def _in_order(results: Sequence[RunResult], group: Group, what: str = "command") -> GroupResult:
    """``results`` as a GroupResult: machines that did not boot first, then the group's order."""
    order = {id(vm): i for i, vm in enumerate(group)}
    return GroupResult(sorted(results, key=lambda r: order.get(id(r.resource), -1)), what)


def _print_line(resource: Compute, stream: str, line: str) -> None:
    """One line of a host's output as it arrives, prefixed with the host."""
    click.echo(f"[{host_label(resource)}] {line}", err=stream == "stderr")


def _print_result(result: RunResult, grouped: bool) -> None:
    """A host's end: its status if it failed (its lines came as they arrived), or,
    ``grouped``, its output under a header."""
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
    if not result.ok:
        click.echo(f"[{host}] {_status(result)}", err=True)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _status(result: RunResult) -> str:
    if result.error is not None:
        return _error(result.error)
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
@click.option(
    "--timeout", type=float, help="Seconds each host's copy (and the boot wait) may take."
)
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

    tags, (seconds, _) = check_tags(tags), _fan_out_options(timeout, None)

    async def go() -> GroupResult:
        async with Session() as session:
            group, failed = await _ready_group(session, tags, seconds)
            done = await group.put(local, remote, check=False, timeout=seconds)
            return _in_order([*failed, *done], group, "put")

    results = run(go)
    for result in results:
        click.echo(f"[{host_label(result.resource)}] {'ok' if result.ok else _status(result)}")
    _summary(results, "put")
    if not results.ok:
        raise SystemExit(EXIT_FAILED)


@click.command()
@click.option("--tag", "-t", "tags", multiple=True, required=True, help=TAG_HELP)
@click.option(
    "--timeout", type=float, help="Seconds each host's copy (and the boot wait) may take."
)
@click.argument("remote")
@click.argument("local", type=click.Path(path_type=Path))
def get(tags: tuple[str, ...], timeout: float | None, remote: str, local: Path) -> None:
    """Copy REMOTE from every tagged machine to LOCAL.

    Into an existing directory LOCAL, each machine's copy goes to
    LOCAL/<cloud>-<id>/<name of REMOTE>, however many machines (as Ansible's fetch
    does). Otherwise, with one machine the copy goes to LOCAL; with several, to
    LOCAL.<cloud>-<id> for each. The output says where each went.

    \b
    Examples:
      aiores get --tag web /var/log/syslog logs/syslog
      mkdir results && aiores get -t batch out.csv results   # results/sim-vm-.../out.csv

    Machines still booting are waited for first, as for run. The exit status is 0
    only if every copy completed. Ctrl-C stops every transfer.
    """
    tags, (seconds, _) = check_tags(tags), _fan_out_options(timeout, None)

    async def go() -> tuple[GroupResult, dict[int, Path]]:
        async with Session() as session:
            group, failed = await _ready_group(session, tags, seconds)
            paths = await asyncio.to_thread(group.local_paths, local, remote)
            where = {id(vm): path for vm, path in zip(group, paths, strict=True)}
            done = await group.get(remote, local, check=False, timeout=seconds)
            return _in_order([*failed, *done], group, "get"), where

    results, where = run(go)
    for result in results:
        target = where.get(id(result.resource))
        ok = result.ok and target is not None
        click.echo(
            f"[{host_label(result.resource)}] " + (f"-> {target}" if ok else _status(result))
        )
    _summary(results, "get")
    if not results.ok:
        raise SystemExit(EXIT_FAILED)


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
    tags = check_tags(tags)
    ids = check_ids(ids, "machine", "[sim://]-[vm-4f2a0c1d9e]")
    released, missing = run(lambda: _deprovision(tags, ids))
    if as_json:
        emit_json(released)
    else:
        for rid in released:
            click.echo(rid)
    for rid, why in missing:
        err.print(f"aiores: {rid}: {why}", style="red", soft_wrap=True)
    err.print(
        f"released {len(released)} machines" + (f"; {len(missing)} not found" if missing else "")
    )
    if missing:
        raise SystemExit(EXIT_FAILED)


async def _deprovision(
    tags: Sequence[str], ids: Sequence[str]
) -> tuple[list[str], list[tuple[str, str]]]:
    """The ids released, and the ids named that were not live machines (with why)."""
    async with Session() as session:
        found = await recovered(session)
        chosen: list[Resource] = select(found, tags, ids)
        known = {r.id for r in chosen} | {r.native_id for r in chosen}
        missing: list[tuple[str, str]] = []
        for rid in ids:
            if rid in known:
                continue
            # Not live in the journal: another program's machine, or none at all.
            url, _ = split_id(rid) or ("", "")
            try:
                resource = await session.manager(url).get(rid)
            except DoesNotExist:
                missing.append((rid, f"{url} has no such machine"))
                continue
            if resource.state.final:
                missing.append((rid, f"already ended ({resource.state.name})"))
            elif tags and not set(tags) <= resource.tags:
                missing.append((rid, f"does not carry the tags {', '.join(tags)}"))
            else:
                chosen.append(resource)
        by_url: dict[str, list[Resource]] = {}
        for resource in chosen:
            by_url.setdefault(str(resource.manager.url), []).append(resource)
        released: list[str] = []
        for url, targets in by_url.items():
            await session.manager(url).destroy(targets)
            released.extend(t.id for t in targets)
        return released, missing

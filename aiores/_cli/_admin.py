"""``aiores jobs ... | recover | gc``: jobs from the shell, and the journal's housekeeping."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import click
from rich import box
from rich.table import Table

from .. import _validate as validate
from .._descriptions import JobDescription
from .._exceptions import BadParameter, IncorrectState
from .._jobs import Job
from .._jobsession import check_name
from .._journal import loads_data
from .._recover import Leak, Reaped, describe_age, describe_lease
from .._session import Session
from .._states import JobState
from .._url import split_id
from ._common import (
    EXIT_FAILED,
    check_ids,
    check_url,
    console,
    emit_json,
    err,
    recovered,
    resource_json,
    run,
    show_problems,
)

__all__ = ["gc", "jobs", "recover"]


def _job_json(job: Job, row: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job as JSON (``row``: its journal record, for when it was submitted)."""
    return {
        "id": job.id,
        "native_id": job.native_id,
        "url": str(job.service.url),
        "state": job.state.name,
        "detail": job.state_detail,
        "exit_code": job.exit_code,
        "created": row.get("created") if row else None,
    }


def _row_json(row: dict[str, Any]) -> dict[str, Any]:
    """A job no service answers for any more, as JSON, from its journal record.

    DONE means exit code 0 on every backend; another final state's exit code is
    shown where the journal recorded one.
    """
    data = row.get("data")
    exit_code = (loads_data(data) if isinstance(data, str) else data or {}).get("exit_code")
    if exit_code is None and row["state"] == JobState.DONE.name:
        exit_code = 0
    return {
        "id": row["id"],
        "native_id": row["native_id"],
        "url": row["url"],
        "state": row["state"],
        "detail": row["detail"],
        "exit_code": exit_code,
        "created": row["created"],
    }


# -- jobs -------------------------------------------------------------------------------------


@click.group()
def jobs() -> None:
    """Submit, list, wait for and cancel jobs (local://, ssh://user@host, a VM's access URL,
    or a DRMAA2 job session by name: --session NAME)."""


@jobs.command("submit")
@click.option("--wait", "wait_", is_flag=True, help="Wait for it; print its output.")
@click.option("--timeout", type=float, help="Seconds --wait may take.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
@click.option(
    "--session",
    "session_name",
    metavar="NAME",
    help="Submit into the job session NAME (created at URL, or reopened: then URL may go).",
)
@click.argument("args", nargs=-1, required=True, metavar="[URL] COMMAND...")
def jobs_submit(
    wait_: bool,
    timeout: float | None,
    as_json: bool,
    session_name: str | None,
    args: tuple[str, ...],
) -> None:
    """Submit COMMAND (a program and its arguments) as a job at URL; print its id.

    With --session NAME the job joins the DRMAA2 job session NAME (created at URL if
    it does not exist; an existing one needs no URL, and refuses another). The job
    runs on after the command ends. With --wait the exit status is the job's exit
    code (1 if it did not end DONE).

    \b
    Examples:
      aiores jobs submit --wait local:// -- /bin/echo hello
      aiores jobs submit ssh://me@login.example.org -- ./simulate --steps 1000
      aiores jobs submit --session nightly ssh://me@login.example.org -- ./simulate
      aiores jobs submit --session nightly -- ./simulate --steps 10
    """
    url, command = _url_and_command(args, session_name)
    desc = JobDescription(executable=command[0], arguments=list(command[1:]))
    timeout = validate.timeout(timeout, "timeout")

    async def go() -> dict[str, Any]:
        async with Session() as session:
            await recovered(session)  # the host keys of machines aiores booted
            if session_name is not None:
                js = await session.job_session(session_name, url)
                job = await js.submit(desc)
            else:
                assert url is not None
                job = await session.job_service(url).submit(desc)
            if not wait_:
                return _job_json(job)
            try:
                await job.wait(timeout=timeout)
            except asyncio.CancelledError:
                await session.shielded(job.cancel, what=f"cancelling {job.id}")
                err.print(f"interrupted: cancelled {job.id}")
                raise
            data = _job_json(job)
            data["stdout"], data["stderr"] = job.stdout, job.stderr
            return data

    data = run(go)
    if as_json:
        emit_json(data)
    else:
        click.echo(data["id"])
        if wait_:
            if data.get("stdout"):
                click.echo(data["stdout"], nl=False)
            if data.get("stderr"):
                click.echo(data["stderr"], nl=False, err=True)
    if wait_:
        err.print(f"{data['id']}: {data['state']}, exit code {data['exit_code']}")
        if data["state"] != JobState.DONE.name:
            raise SystemExit(data["exit_code"] or 1)


def _url_and_command(
    args: tuple[str, ...], session_name: str | None
) -> tuple[str | None, tuple[str, ...]]:
    """``[URL] COMMAND...``: the URL may be left out only for a job session (a first
    argument holding ``://`` is a URL)."""
    if session_name is not None:
        check_name(session_name)
    if session_name is None or "://" in args[0]:
        url, command = check_url(args[0]), args[1:]
    else:
        url, command = None, args
    if not command:
        raise BadParameter("COMMAND is missing: give a program (and its arguments) after URL")
    return url, command


@jobs.command("ls")
@click.option("--all", "show_all", is_flag=True, help="Also jobs that ended.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of objects).")
@click.option("--session", "session_name", metavar="NAME", help="Only the job session NAME's.")
@click.argument("url", required=False)
def jobs_ls(show_all: bool, as_json: bool, session_name: str | None, url: str | None) -> None:
    """List the jobs recorded in the journal (at URL, or of the job session NAME, if
    given), with their state now.

    \b
    Examples:
      aiores jobs ls
      aiores jobs ls --all ssh://me@login.example.org --json
      aiores jobs ls --all --session nightly
    """
    if url is not None:
        check_url(url)
    if session_name is not None:
        check_name(session_name)

    async def go() -> list[dict[str, Any]]:
        async with Session() as session:
            found = await recovered(session)
            assert session.journal is not None
            rows = {o["id"]: o for o in await session.journal.objects("job")}
            if session_name is not None:
                js = await session.job_session(session_name)
                members = await js.jobs()
                out = [
                    _job_json(job, rows.get(job.id))
                    for job in members
                    if show_all or not job.state.final
                ]
            else:
                live = {job.id: _job_json(job, rows.get(job.id)) for job in found.jobs}
                out = list(live.values())
                if show_all:
                    out.extend(_row_json(row) for rid, row in rows.items() if rid not in live)
            return [j for j in out if url is None or j["url"] == url]

    listed = run(go)
    if as_json:
        emit_json(listed)
        return
    table = Table(header_style="bold", box=box.SIMPLE)
    for name in ("id", "state", "exit", "age"):
        table.add_column(name, no_wrap=True)
    for job in listed:
        exit_code = "-" if job["exit_code"] is None else str(job["exit_code"])
        table.add_row(job["id"], job["state"], exit_code, describe_age(job["created"]))
    console.print(table)
    err.print(f"{len(listed)} jobs")


@jobs.command("sessions")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list of objects).")
def jobs_sessions(as_json: bool) -> None:
    """List the DRMAA2 job sessions in the journal: name, URL, jobs joined, age.

    \b
    Examples:
      aiores jobs sessions
      aiores jobs sessions --json | jq -r '.[].name'
    """

    async def go() -> list[dict[str, Any]]:
        async with Session() as session:
            assert session.journal is not None
            return [
                {"name": r.name, "url": r.url, "jobs": r.jobs, "created": r.created}
                for r in await session.journal.job_sessions()
            ]

    listed = run(go)
    if as_json:
        emit_json(listed)
        return
    table = Table(header_style="bold", box=box.SIMPLE)
    for name in ("name", "url", "jobs", "age"):
        table.add_column(name, no_wrap=True)
    for row in listed:
        table.add_row(row["name"], row["url"], str(row["jobs"]), describe_age(row["created"]))
    console.print(table)
    err.print(f"{len(listed)} job sessions")


#: An example of a job id, for the message about one that is not.
JOB_ID = "[local://]-[1234]"


async def _find_jobs(session: Session, ids: Sequence[str]) -> list[Job]:
    """The jobs ``ids`` name (checked with :func:`check_ids` before)."""
    await recovered(session)  # the host keys of machines aiores booted
    found = []
    for job_id in ids:
        parts = split_id(job_id)
        assert parts is not None  # check_ids saw to it
        found.append(await session.job_service(parts[0]).get(job_id))
    return found


@jobs.command("wait")
@click.option("--timeout", type=float, help="Seconds to wait at most.")
@click.argument("ids", nargs=-1, required=True)
def jobs_wait(timeout: float | None, ids: tuple[str, ...]) -> None:
    """Wait until the jobs IDS end; print each one's state and exit code.

    The exit status is 0 only if every job ended DONE. Ctrl-C stops waiting (the
    jobs run on).

    \b
    Examples:
      aiores jobs wait '[ssh://me@login]-[a1b2c3]'
    """
    timeout = validate.timeout(timeout, "timeout")
    ids = check_ids(ids, "job", JOB_ID)

    async def go() -> list[dict[str, Any]]:
        async with Session() as session:
            found = await _find_jobs(session, ids)
            await asyncio.gather(*(job.wait(timeout=timeout) for job in found))
            return [_job_json(job) for job in found]

    ended = run(go)
    for job in ended:
        click.echo(f"{job['id']} {job['state']} {job['exit_code']}")
    if any(job["state"] != JobState.DONE.name for job in ended):
        raise SystemExit(1)


@jobs.command("cancel")
@click.argument("ids", nargs=-1, required=True)
def jobs_cancel(ids: tuple[str, ...]) -> None:
    """Cancel the jobs IDS (TERM, then KILL after the backend's grace period).

    The exit status is 0 only if every job was cancelled: a job that had already
    ended cannot be, and is said so (exit status 1).

    \b
    Examples:
      aiores jobs cancel '[ssh://me@login]-[a1b2c3]'
    """
    ids = check_ids(ids, "job", JOB_ID)

    async def go() -> tuple[list[str], list[str]]:
        async with Session() as session:
            found = await _find_jobs(session, ids)
            cancelled, refused = [], []
            for job in found:
                try:
                    await job.cancel()
                    cancelled.append(job.id)
                except IncorrectState as exc:
                    refused.append(f"{job.id}: {exc}")
            return cancelled, refused

    cancelled, refused = run(go)
    for job_id in cancelled:
        click.echo(f"{job_id} cancelled")
    for line in refused:
        err.print(f"aiores: {line}", style="red", soft_wrap=True)
    if refused:
        raise SystemExit(EXIT_FAILED)


# -- recover ----------------------------------------------------------------------------------


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def recover(as_json: bool) -> None:
    """Reconnect to what earlier programs left alive and say what it is now.

    Reads the journal of the state directory, asks every cloud and job service
    about what it recorded, records what changed meanwhile, and lists it, with what
    could not be reached and the calls a killed program left unfinished (see gc).

    \b
    Examples:
      aiores recover
      aiores recover --json | jq '.jobs[] | select(.state == "DONE")'
    """

    async def go() -> dict[str, Any]:
        async with Session() as session:
            found = await session.recover()
            assert session.journal is not None
            rows = {o["id"]: o for o in await session.journal.objects()}
            return {
                "resources": [resource_json(r, rows.get(r.id)) for r in found.resources],
                "jobs": [_job_json(j, rows.get(j.id)) for j in found.jobs],
                "gone": found.gone,
                "expired": found.expired,
                "ending": [
                    {"id": r.id, "expires_at": getattr(r, "expires_at", None)} for r in found.ending
                ],
                "problems": [dataclasses.asdict(p) for p in found.problems],
                "in_flight": [
                    {"token": i.token, "session": i.session, "op": i.op, "url": i.url}
                    for i in found.in_flight
                ],
            }

    data = run(go)
    if as_json:
        emit_json(data)
        return
    for r in data["resources"]:
        click.echo(f"resource {r['id']} {r['state']} ({r['detail']}) {','.join(r['tags'])}")
    for j in data["jobs"]:
        click.echo(f"job {j['id']} {j['state']} exit {j['exit_code']}")
    for rid in data["gone"]:
        click.echo(f"gone {rid}")
    for rid in data["expired"]:
        click.echo(f"expired {rid} (its lease ended)")
    for r in data["ending"]:
        click.echo(f"ending {r['id']} ({describe_lease(r['expires_at'])})")
    for problem in data["problems"]:
        err.print(f"problem {problem['id'] or problem['url']}: {problem['error']}", style="yellow")
    for intent in data["in_flight"]:
        click.echo(f"unfinished {intent['op']} at {intent['url']} ({intent['token']})")
    err.print(
        f"recovered {len(data['resources'])} resources and {len(data['jobs'])} jobs; "
        f"{len(data['gone'])} gone, {len(data['expired'])} expired, "
        f"{len(data['ending'])} ending, {len(data['in_flight'])} calls unfinished"
    )


# -- gc ---------------------------------------------------------------------------------------


@click.command()
@click.option("--yes", "-y", is_flag=True, help="Release without asking (for scripts).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON; without --yes, only list.")
def gc(yes: bool, as_json: bool) -> None:
    """Release resources that killed programs leaked, after confirmation.

    Leaked: created by a call that never completed (the program died during it),
    or acquired by a program that died without closing its session and never
    released. Jobs whose submit never completed are cancelled likewise. Resources
    of programs that ended normally are theirs to keep; anything the journal does
    not name is never touched.

    \b
    Examples:
      aiores gc               # lists the leaks, asks, releases
      aiores gc --yes         # releases without asking
      aiores gc --json        # lists only (a dry run for scripts)
    """

    def show(leaks: Sequence[Leak]) -> None:
        table = Table(header_style="bold", box=box.SIMPLE, title="leaked")
        for name in ("id", "state", "tags", "why"):
            table.add_column(name, overflow="fold")
        for leak in leaks:
            lease = describe_lease(leak.expires_at)
            why = f"{leak.reason}; {lease}" if lease else leak.reason
            table.add_row(leak.id, leak.state, ",".join(leak.tags), why)
        console.print(table)

    def reap(confirm: Callable[[Sequence[Leak]], bool]) -> Reaped:
        async def go() -> Reaped:
            async with Session() as session:
                return await session.reap(confirm=confirm)

        return run(go)

    if yes or as_json:

        def decided(leaks: Sequence[Leak]) -> bool:
            if not as_json:
                show(leaks)
            return yes

        reaped = reap(decided)
    else:
        # Asked between two runs, with no event loop waiting on the terminal (a
        # prompt in a thread would outlive a Ctrl-C); the second run releases only
        # if it finds exactly what was confirmed.
        found = reap(lambda leaks: False)
        if found.leaks:
            show(found.leaks)
            if not click.confirm(f"release these {len(found.leaks)} resources?", default=False):
                reaped = found
            else:
                confirmed = {leak.id for leak in found.leaks}

                def same(leaks: Sequence[Leak]) -> bool:
                    if {leak.id for leak in leaks} <= confirmed:
                        return True
                    err.print("the leaks changed meanwhile: run aiores gc again", style="red")
                    return False

                reaped = reap(same)
        else:
            reaped = found
    show_problems(reaped.problems)
    if as_json:
        emit_json(
            {
                "leaks": [dataclasses.asdict(leak) for leak in reaped.leaks],
                "released": reaped.released,
                "kept": [leak.id for leak in reaped.kept],
                "closed": reaped.closed,
                "skipped": [i.token for i in reaped.skipped],
                "problems": [dataclasses.asdict(p) for p in reaped.problems],
            }
        )
    else:
        for rid in reaped.released:
            click.echo(f"released {rid}")
        for leak in reaped.kept:
            click.echo(f"kept {leak.id}")
    err.print(
        f"gc: {len(reaped.leaks)} leaked, {len(reaped.released)} released, "
        f"{len(reaped.kept)} kept, {len(reaped.closed)} unfinished calls closed"
        + (f", {len(reaped.skipped)} left to programs still running" if reaped.skipped else "")
    )
    if reaped.problems or (reaped.kept and yes):
        raise SystemExit(1)

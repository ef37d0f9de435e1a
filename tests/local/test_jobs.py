"""The local:// job adaptor against real processes, signals and files."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import psutil
import pytest

from aiores._descriptions import JobDescription
from aiores._exceptions import (
    DoesNotExist,
    IncorrectState,
    IncorrectURL,
    NoSuccess,
    PermissionDenied,
)
from aiores._states import JobState
from aiores.adaptor import JobInfo
from aiores_local import LocalJobAdaptor

from .conftest import Factory, FakeEnv, Fifo, Published, group_members, wait_until

S = JobState
sh = JobDescription.shell
ALIVE = (psutil.STATUS_RUNNING, psutil.STATUS_SLEEPING)


async def run_to_end(
    jobs: LocalJobAdaptor, published: Published, desc: JobDescription
) -> tuple[str, JobInfo]:
    info = await jobs.submit(desc, "tok", hold=False)
    assert info.state is S.RUNNING
    return info.id, await published.final(info.id)


# -- exit codes, output, input ------------------------------------------------------------
@pytest.mark.asyncio
async def test_exit_zero_is_done_with_captured_output(
    jobs: LocalJobAdaptor, published: Published
) -> None:
    info = await jobs.submit(sh("echo out; echo err >&2"), "tok", hold=False)
    assert info.state is S.RUNNING
    assert isinstance(info.extra["pid"], int)
    final = await published.final(info.id)
    assert final.state is S.DONE
    assert final.exit_code == 0
    assert (final.stdout, final.stderr) == (b"out\n", b"err\n")
    assert final.state_detail == "exited 0"
    assert (await jobs.describe([info.id, "j-unknown"])) == {info.id: final}


@pytest.mark.asyncio
async def test_nonzero_exit_is_failed(jobs: LocalJobAdaptor, published: Published) -> None:
    _, final = await run_to_end(jobs, published, sh("exit 3"))
    assert final.state is S.FAILED
    assert final.exit_code == 3


@pytest.mark.asyncio
async def test_killed_by_signal_is_failed_with_negative_code(
    jobs: LocalJobAdaptor, published: Published
) -> None:
    _, final = await run_to_end(jobs, published, sh("kill -USR1 $$"))
    assert final.state is S.FAILED
    assert final.exit_code == -signal.SIGUSR1
    assert "SIGUSR1" in final.state_detail


@pytest.mark.asyncio
async def test_arguments_are_not_shell_parsed(jobs: LocalJobAdaptor, published: Published) -> None:
    desc = JobDescription(executable="echo", arguments=["$HOME", "a b", ";", "*"])
    _, final = await run_to_end(jobs, published, desc)
    assert final.stdout == b"$HOME a b ; *\n"


@pytest.mark.asyncio
async def test_capture_limit_truncates_with_marker_and_drains(
    jobs: LocalJobAdaptor, published: Published
) -> None:
    # 1 MiB written, far past the pipe buffer: the job must not block on a full pipe.
    desc = sh("head -c 1048576 /dev/zero | tr '\\0' x; echo tail >&2", capture_limit=10)
    _, final = await run_to_end(jobs, published, desc)
    assert final.state is S.DONE
    out = final.stdout
    assert out is not None
    assert out.startswith(b"x" * 10 + b"\n[aiores: output truncated after 10 bytes")
    assert b"1048566 more bytes discarded" in out
    assert final.stderr == b"tail\n"


@pytest.mark.asyncio
async def test_zero_capture_limit_keeps_nothing(
    jobs: LocalJobAdaptor, published: Published
) -> None:
    _, final = await run_to_end(jobs, published, sh("echo hello", capture_limit=0))
    assert (final.stdout or b"").startswith(b"\n[aiores: output truncated after 0 bytes")


@pytest.mark.asyncio
async def test_stdin_is_written_then_closed(jobs: LocalJobAdaptor, published: Published) -> None:
    big = os.urandom(300_000)  # past the pipe buffer: written as the job reads
    _, final = await run_to_end(jobs, published, JobDescription(executable="cat", stdin=big))
    assert final.stdout == big
    _, final = await run_to_end(jobs, published, JobDescription(executable="cat", stdin="héllo"))
    assert final.stdout == "héllo".encode()


@pytest.mark.asyncio
async def test_no_stdin_reads_dev_null(jobs: LocalJobAdaptor, published: Published) -> None:
    _, final = await run_to_end(jobs, published, JobDescription(executable="cat"))
    assert final.state is S.DONE
    assert final.stdout == b""


@pytest.mark.asyncio
async def test_stdin_not_read_is_not_an_error(jobs: LocalJobAdaptor, published: Published) -> None:
    _, final = await run_to_end(jobs, published, sh("exit 0", stdin=os.urandom(200_000)))
    assert final.state is S.DONE


@pytest.mark.asyncio
async def test_job_starts_with_default_signal_handling(
    jobs: LocalJobAdaptor, published: Published
) -> None:
    # What the keeper ignores or catches for itself must not reach the job.
    _, final = await run_to_end(jobs, published, sh("grep SigIgn /proc/$$/status"))
    ignored = int((final.stdout or b"").split()[-1], 16)
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (signum - 1)), signum.name


@pytest.mark.asyncio
async def test_environment_is_added(jobs: LocalJobAdaptor, published: Published) -> None:
    desc = sh('echo "$AIORES_X:${PATH:+has-path}"', environment={"AIORES_X": "a b"})
    _, final = await run_to_end(jobs, published, desc)
    assert final.stdout == b"a b:has-path\n"


@pytest.mark.asyncio
async def test_working_directory(
    jobs: LocalJobAdaptor, published: Published, tmp_path: Path
) -> None:
    here = tmp_path / "wd"
    here.mkdir()
    (here / "here.txt").write_text("x")
    _, final = await run_to_end(jobs, published, sh("pwd; ls", working_directory=str(here)))
    assert (final.stdout or b"").decode().split() == [str(here), "here.txt"]


@pytest.mark.asyncio
async def test_output_to_files(jobs: LocalJobAdaptor, published: Published, tmp_path: Path) -> None:
    (tmp_path / "old.out").write_text("previous content, longer than the new one\n")
    desc = sh(
        "echo out; echo err >&2",
        working_directory=str(tmp_path),
        stdout="old.out",  # relative to the working directory
        stderr=str(tmp_path / "job.err"),
    )
    _, final = await run_to_end(jobs, published, desc)
    assert final.state is S.DONE
    assert (final.stdout, final.stderr) == (None, None)
    assert (tmp_path / "old.out").read_text() == "out\n"  # truncated, not appended
    assert (tmp_path / "job.err").read_text() == "err\n"


@pytest.mark.asyncio
async def test_stdout_and_stderr_to_one_file(
    jobs: LocalJobAdaptor, published: Published, tmp_path: Path
) -> None:
    out = str(tmp_path / "both.log")
    desc = sh("echo one; echo two >&2; echo three", stdout=out, stderr=out)
    await run_to_end(jobs, published, desc)
    assert await asyncio.to_thread(Path(out).read_text) == "one\ntwo\nthree\n"


@pytest.mark.asyncio
async def test_output_file_in_missing_directory(jobs: LocalJobAdaptor, tmp_path: Path) -> None:
    bad = str(tmp_path / "nope" / "x.out")
    with pytest.raises(DoesNotExist, match=r"stdout file .*nope.*directory does not exist"):
        await jobs.submit(sh("true", stdout=bad), "tok", hold=False)
    assert await jobs.list() == []


@pytest.mark.asyncio
async def test_output_fifo_without_reader_fails_at_once_and_blocks_nothing(
    jobs: LocalJobAdaptor, published: Published, tmp_path: Path
) -> None:
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)  # opening it to write would wait for a reader
    with pytest.raises(NoSuccess, match=r"stdout file .*out\.fifo.* cannot be opened"):
        await jobs.submit(sh("true", stdout=str(fifo)), "tok", hold=False)
    assert await jobs.list() == []
    _, final = await run_to_end(jobs, published, sh("echo next"))  # the keeper goes on
    assert final.stdout == b"next\n"


@pytest.mark.asyncio
async def test_background_child_holding_stdout_does_not_keep_job_alive(
    jobs: LocalJobAdaptor, published: Published
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    _, final = await run_to_end(jobs, published, sh("sleep 30 & echo hi"))
    assert final.state is S.DONE
    assert final.stdout == b"hi\n"
    assert loop.time() - started < 5  # the drain after exit is bounded (1 s)


# -- bad input -----------------------------------------------------------------------------
@pytest.mark.asyncio
@pytest.mark.parametrize("hold", [False, True])
async def test_missing_executable(jobs: LocalJobAdaptor, tmp_path: Path, hold: bool) -> None:
    path = str(tmp_path / "no-such-program")
    with pytest.raises(DoesNotExist, match=r"no-such-program.*does not exist"):
        await jobs.submit(JobDescription(executable=path), "tok", hold=hold)
    with pytest.raises(DoesNotExist, match="'no-such-prog-xyz' was not found in PATH"):
        await jobs.submit(JobDescription(executable="no-such-prog-xyz"), "tok", hold=hold)
    assert await jobs.list() == []


@pytest.mark.asyncio
@pytest.mark.parametrize("hold", [False, True])
async def test_not_executable(jobs: LocalJobAdaptor, tmp_path: Path, hold: bool) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(PermissionDenied, match=r"script\.sh.*not an executable.*chmod \+x"):
        await jobs.submit(JobDescription(executable=str(script)), "tok", hold=hold)
    with pytest.raises(PermissionDenied, match="not an executable"):
        await jobs.submit(JobDescription(executable=str(tmp_path)), "tok", hold=hold)


@pytest.mark.asyncio
@pytest.mark.parametrize("hold", [False, True])
async def test_bad_working_directory(jobs: LocalJobAdaptor, tmp_path: Path, hold: bool) -> None:
    missing = str(tmp_path / "gone")
    with pytest.raises(
        DoesNotExist, match=re.escape(f"working directory '{missing}' does not exist")
    ):
        await jobs.submit(sh("true", working_directory=missing), "tok", hold=hold)
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(DoesNotExist, match=r"working directory .*afile' is not a directory"):
        await jobs.submit(sh("true", working_directory=str(afile)), "tok", hold=hold)


def test_bad_url_options(env: FakeEnv) -> None:
    from aiores.adaptor import URL

    for url, match in [
        ("local://?grace=-1", "grace must be a finite number of seconds >= 0"),
        ("local://?max_running=0", "max_running must be an int >= 1"),
        ("local://?max_runing=2", "unknown option.*max_runing.*knows grace, max_running"),
        ("local://otherhost", "this host only"),
    ]:
        with pytest.raises(IncorrectURL, match=match):
            LocalJobAdaptor(URL.parse(url), env)


# -- cancel -------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_cancel_sends_term(jobs: LocalJobAdaptor, published: Published, fifo: Fifo) -> None:
    info = await jobs.submit(sh(f"echo ready > {fifo.path}; exec sleep 30"), "tok", hold=False)
    assert await fifo.readline() == b"ready"
    await jobs.cancel(info.id)
    final = await published.final(info.id)
    assert final.state is S.CANCELED
    assert final.exit_code == -signal.SIGTERM
    assert final.state_detail == "canceled: killed by SIGTERM"
    assert group_members(info.extra["pid"]) == []
    with pytest.raises(IncorrectState, match=r"already ended.*CANCELED"):
        await jobs.cancel(info.id)


@pytest.mark.asyncio
async def test_cancel_kills_a_group_that_ignores_term_after_grace(
    jobs: LocalJobAdaptor, published: Published, fifo: Fifo
) -> None:
    # The shell and its child both ignore SIGTERM (an ignored signal stays ignored
    # across fork and exec): only SIGKILL, after the 0.5 s grace, ends them.
    script = f"trap '' TERM; sleep 30 & echo $! > {fifo.path}; wait; wait"
    info = await jobs.submit(sh(script), "tok", hold=False)
    pgid = info.extra["pid"]
    grandchild = int(await fifo.readline())
    assert {p.pid for p in group_members(pgid)} == {pgid, grandchild}
    loop = asyncio.get_running_loop()
    start = loop.time()
    await jobs.cancel(info.id)
    await asyncio.sleep(0.2)  # well inside the grace period: both must still be alive
    assert {p.pid for p in group_members(pgid)} == {pgid, grandchild}
    final = await published.final(info.id)
    assert loop.time() - start >= 0.5
    assert final.state is S.CANCELED
    assert final.exit_code == -signal.SIGKILL
    assert final.state_detail == "canceled: killed by SIGKILL after the 0.5 s grace period"
    await wait_until(lambda: group_members(pgid) == [], "the whole group is gone")


@pytest.mark.asyncio
async def test_cancel_with_zero_grace_kills_at_once(
    make_jobs: Factory, published: Published, fifo: Fifo
) -> None:
    jobs = await make_jobs("local://", grace=0)
    info = await jobs.submit(
        sh(f"trap '' TERM; echo ready > {fifo.path}; sleep 30"), "t", hold=False
    )
    await fifo.readline()
    await jobs.cancel(info.id)
    final = await published.final(info.id)
    assert (final.state, final.exit_code) == (S.CANCELED, -signal.SIGKILL)


@pytest.mark.asyncio
async def test_cancel_job_that_exits_cleanly_on_term(
    jobs: LocalJobAdaptor, published: Published, fifo: Fifo
) -> None:
    script = f"trap 'exit 0' TERM; echo ready > {fifo.path}; while :; do sleep 0.05; done"
    info = await jobs.submit(sh(script), "tok", hold=False)
    await fifo.readline()
    await jobs.cancel(info.id)
    final = await published.final(info.id)
    assert (final.state, final.exit_code) == (S.CANCELED, 0)
    assert final.state_detail == "canceled: exited 0 after SIGTERM"


# -- suspend and resume ----------------------------------------------------------------------
@pytest.mark.asyncio
async def test_suspend_and_resume(jobs: LocalJobAdaptor, published: Published, fifo: Fifo) -> None:
    info = await jobs.submit(sh(f"echo ready > {fifo.path}; exec sleep 30"), "tok", hold=False)
    await fifo.readline()
    proc = psutil.Process(info.extra["pid"])
    await jobs.suspend(info.id)
    assert (await published.next(info.id)).state is S.SUSPENDED
    await wait_until(lambda: proc.status() == psutil.STATUS_STOPPED, "stopped (T)")
    with pytest.raises(IncorrectState, match=r"cannot suspend.*SUSPENDED, not RUNNING"):
        await jobs.suspend(info.id)
    await jobs.resume(info.id)
    assert (await published.next(info.id)).state is S.RUNNING
    await wait_until(lambda: proc.status() in ALIVE, "running again")
    with pytest.raises(IncorrectState, match=r"cannot resume.*RUNNING, not SUSPENDED"):
        await jobs.resume(info.id)
    # a suspended job can still be cancelled: it is continued so that it sees SIGTERM
    await jobs.suspend(info.id)
    await jobs.cancel(info.id)
    final = await published.final(info.id)
    assert (final.state, final.exit_code) == (S.CANCELED, -signal.SIGTERM)
    assert published.states(info.id) == [
        S.SUSPENDED,
        S.RUNNING,
        S.SUSPENDED,
        S.CANCELED,
    ]


@pytest.mark.asyncio
async def test_control_of_ended_job_is_incorrect_state(
    jobs: LocalJobAdaptor, published: Published
) -> None:
    id, _ = await run_to_end(jobs, published, sh("true"))
    for control in (jobs.cancel, jobs.suspend, jobs.resume, jobs.hold, jobs.release):
        with pytest.raises(IncorrectState, match=id):
            await control(id)
    with pytest.raises(DoesNotExist, match="no job 'j-nope'"):
        await jobs.cancel("j-nope")


# -- hold, release, max_running -----------------------------------------------------------
@pytest.mark.asyncio
async def test_hold_and_release(jobs: LocalJobAdaptor, published: Published) -> None:
    info = await jobs.submit(sh("echo released"), "tok", hold=True)
    assert info.state is S.HELD
    assert "pid" not in info.extra
    with pytest.raises(IncorrectState, match="cannot suspend"):
        await jobs.suspend(info.id)
    await jobs.hold(info.id)  # already held: nothing to do
    await jobs.release(info.id)
    assert (await published.next(info.id)).state is S.QUEUED
    running = await published.next(info.id)
    assert running.state is S.RUNNING
    assert isinstance(running.extra["pid"], int)
    final = await published.final(info.id)
    assert (final.state, final.stdout) == (S.DONE, b"released\n")


@pytest.mark.asyncio
async def test_cancel_held_job(jobs: LocalJobAdaptor, published: Published) -> None:
    info = await jobs.submit(sh("echo never"), "tok", hold=True)
    await jobs.cancel(info.id)
    final = await published.final(info.id)
    assert final.state is S.CANCELED
    assert final.state_detail == "canceled before it started (HELD)"
    assert final.exit_code is None


@pytest.mark.asyncio
async def test_max_running_queues_and_starts_on_free_slot(
    make_jobs: Factory, published: Published, fifo: Fifo
) -> None:
    jobs = await make_jobs("local://?max_running=1&grace=0.5")
    first = await jobs.submit(sh(f"echo ready > {fifo.path}; exec sleep 30"), "t", hold=False)
    second = await jobs.submit(sh("echo second"), "t", hold=False)
    third = await jobs.submit(sh("echo third"), "t", hold=False)
    assert (first.state, second.state, third.state) == (S.RUNNING, S.QUEUED, S.QUEUED)
    assert "max_running" in second.state_detail
    await fifo.readline()
    await jobs.hold(third.id)
    assert (await published.next(third.id)).state is S.HELD
    await jobs.cancel(first.id)
    assert (await published.final(first.id)).state is S.CANCELED
    assert (await published.next(second.id)).state is S.RUNNING
    assert (await published.final(second.id)).stdout == b"second\n"
    # a free slot does not start a held job
    assert (await jobs.describe([third.id]))[third.id].state is S.HELD
    await jobs.release(third.id)
    assert [(await published.next(third.id)).state for _ in range(2)] == [S.QUEUED, S.RUNNING]
    assert (await published.final(third.id)).stdout == b"third\n"


@pytest.mark.asyncio
async def test_max_running_bounds_concurrency(
    make_jobs: Factory, published: Published, tmp_path: Path
) -> None:
    jobs = await make_jobs("local://?max_running=2")
    # Each job records how many jobs run at its start, from a shared directory.
    script = (
        f"touch {tmp_path}/$$; ls {tmp_path} | grep -c '^[0-9]' >> {tmp_path}/counts.txt;"
        f" sleep 0.05; rm {tmp_path}/$$"
    )
    infos = await asyncio.gather(*(jobs.submit(sh(script), "t", hold=False) for _ in range(6)))
    assert [i.state for i in infos].count(S.RUNNING) == 2
    for info in infos:
        assert (await published.final(info.id)).state is S.DONE
    counts = [int(n) for n in (tmp_path / "counts.txt").read_text().split()]
    assert len(counts) == 6
    assert max(counts) <= 2


@pytest.mark.asyncio
async def test_queued_job_with_bad_executable_fails_at_submit(
    make_jobs: Factory, fifo: Fifo
) -> None:
    jobs = await make_jobs("local://?max_running=1&grace=0.1")
    await jobs.submit(sh(f"echo ready > {fifo.path}; exec sleep 30"), "t", hold=False)
    with pytest.raises(DoesNotExist, match="not-here"):
        await jobs.submit(JobDescription(executable="/not-here"), "t", hold=False)


@pytest.mark.asyncio
async def test_held_job_whose_executable_vanishes_fails(
    jobs: LocalJobAdaptor, published: Published, tmp_path: Path
) -> None:
    program = tmp_path / "prog"
    program.write_text("#!/bin/sh\necho hi\n")
    program.chmod(0o755)
    info = await jobs.submit(JobDescription(executable=str(program)), "t", hold=True)
    program.unlink()
    await jobs.release(info.id)
    final = await published.final(info.id)
    assert final.state is S.FAILED
    assert final.state_detail.startswith("could not start: executable")
    assert "prog" in final.state_detail


# -- find, list, reap, watcher tasks --------------------------------------------------------
@pytest.mark.asyncio
async def test_find_list_reap(jobs: LocalJobAdaptor, published: Published, env: FakeEnv) -> None:
    a = await jobs.submit(sh("true"), "token-a", hold=False)
    b = await jobs.submit(sh("true"), "token-b", hold=True)
    assert [i.id for i in await jobs.find("token-a")] == [a.id]
    assert [i.id for i in await jobs.find("token-b")] == [b.id]
    assert await jobs.find("token-c") == []
    assert {i.id for i in await jobs.list()} == {a.id, b.id}
    assert env.spawned == 2  # one watcher task per job
    with pytest.raises(IncorrectState, match="still HELD"):
        await jobs.reap(b.id)
    await published.final(a.id)
    await jobs.reap(a.id)
    assert await jobs.find("token-a") == []
    assert await jobs.describe([a.id]) == {}
    assert [i.id for i in await jobs.list()] == [b.id]
    with pytest.raises(DoesNotExist):
        await jobs.reap(a.id)


@pytest.mark.asyncio
async def test_many_jobs_share_nothing_but_the_loop(
    jobs: LocalJobAdaptor, published: Published
) -> None:
    infos = await asyncio.gather(
        *(jobs.submit(sh(f"echo {n}; exit {n % 3}"), "t", hold=False) for n in range(100))
    )
    assert len({i.id for i in infos}) == 100
    for n, info in enumerate(infos):
        final = await published.final(info.id)
        assert final.exit_code == n % 3
        assert final.stdout == f"{n}\n".encode()


@pytest.mark.asyncio
async def test_exit_watched_by_a_thread_without_pidfd(
    jobs: LocalJobAdaptor, published: Published, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pidfd(pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    _, final = await run_to_end(jobs, published, sh("echo fallback; exit 4"))
    assert (final.exit_code, final.stdout) == (4, b"fallback\n")


# -- closing --------------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_aclose_leaves_running_jobs_running(
    make_jobs: Factory, published: Published, fifo: Fifo
) -> None:
    jobs = await make_jobs()
    running = await jobs.submit(sh(f"echo ready > {fifo.path}; exec sleep 30"), "t", hold=False)
    held = await jobs.submit(sh("true"), "t", hold=True)
    await fifo.readline()
    await jobs.aclose()
    final = await published.final(held.id)
    assert final.state is S.CANCELED
    assert "session closed" in final.state_detail
    info = (await jobs.describe([running.id]))[running.id]
    assert info.state is S.RUNNING
    assert "no longer watched" in info.state_detail
    proc = psutil.Process(running.extra["pid"])
    assert proc.status() in ALIVE  # not signalled
    proc.kill()
    # a daemon thread reaps it: no zombie is left behind
    await wait_until(lambda: not psutil.pid_exists(proc.pid), "reaped")
    with pytest.raises(IncorrectState, match="closed"):
        await jobs.submit(sh("true"), "t", hold=False)


@pytest.mark.asyncio
async def test_session_task_group_cancellation_detaches(
    tmp_path: Path, published: Published, fifo: Fifo
) -> None:
    from aiores.adaptor import URL

    from .conftest import kill_group

    pid = 0
    with pytest.raises(ExceptionGroup):  # noqa: PT012 - the group closes with the error
        async with asyncio.TaskGroup() as tg:
            env = FakeEnv(tg, tmp_path / "aiores-state")
            jobs = LocalJobAdaptor(URL.parse("local://"), env)
            jobs.set_listener(published)
            info = await jobs.submit(
                sh(f"echo ready > {fifo.path}; exec sleep 30"), "t", hold=False
            )
            pid = info.extra["pid"]
            await fifo.readline()
            raise RuntimeError("the session ends")  # cancels the watcher tasks
    try:
        assert psutil.Process(pid).status() in ALIVE
        assert "no longer watched" in (await jobs.describe([info.id]))[info.id].state_detail
    finally:
        kill_group(pid)
    await jobs.aclose()


@pytest.mark.asyncio
async def test_walltime_stops_the_job_as_failed(
    jobs: LocalJobAdaptor, published: Published
) -> None:
    _, final = await run_to_end(jobs, published, sh("exec sleep 30", walltime=0.2))
    assert final.state is S.FAILED
    assert final.exit_code == -signal.SIGTERM
    assert final.state_detail == "walltime of 0.2 s exceeded: killed by SIGTERM"
    _, final = await run_to_end(jobs, published, sh("echo in time", walltime=10))
    assert final.state is S.DONE

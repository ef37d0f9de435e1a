"""Arbitrary text through every field that reaches a shell, on any backend.

Each check sends one text through a job (arguments, an environment value, an
environment name, the working directory, a stdout/stderr file) or a command (its
arguments, an environment value) and asserts that the text arrives verbatim, or is
refused with BadParameter, and that a canary file which the text tries to create
through ``$(...)``, backticks, quotes or newlines never appears.

The texts mix hypothesis's arbitrary text (quotes, newlines, NUL, surrogates) with
fragments that would create the canary if any shell ever read them as code.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import aiores
from aiores import BadParameter, DoesNotExist, JobDescription, JobState, RunResult

#: Seconds a job or a command of these checks may take.
STEP = 30.0

#: Run on every backend's checks: few examples, as each is a real job.
SETTINGS = settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)

_FRAGMENTS = (
    "$(touch {c})",
    "`touch {c}`",
    "'$(touch {c})'",
    '"$(touch {c})"',
    "'; touch {c}; '",
    '"; touch {c}; "',
    "\ntouch {c}\n",
    "\\$(touch {c})",
    "$(touch${{IFS}}{c})",
    "${{x:-$(touch {c})}}",
    "'",
    '"',
    "\\",
    "\n",
    "\r",
    "$HOME",
    "*",
    "~",
    "-n",
    "--",
    "%s%n",
    "\x00",
    "\ud800",
    "é✓",
)


class Canary:
    """A world-writable directory holding the file the texts try to create (in
    ``parent``: by default, the system's temporary directory)."""

    def __init__(self, parent: Path | None = None) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="aiores-canary-", dir=parent))
        self.directory.chmod(0o777)
        self.path = self.directory / "canary"

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def texts(self) -> st.SearchStrategy[str]:
        fragments = st.sampled_from([f.format(c=self.path) for f in _FRAGMENTS])
        return st.lists(st.one_of(st.text(max_size=12), fragments), max_size=4).map("".join)

    def assert_untouched(self, text: str) -> None:
        assert not self.path.exists(), f"a shell ran part of {text!r}"

    def dir_for(self, prefix: str, text: str) -> Path:
        """A directory of this canary's whose name holds ``text`` (less what no file
        name can hold), made for every user."""
        name = prefix + text.replace("/", "_").replace("\0", "_")[:60]
        path = self.directory / name
        path.mkdir(mode=0o777, exist_ok=True)
        path.chmod(0o777)
        return path


def carried(text: str) -> bool:
    """Whether a command line can carry ``text`` at all (no NUL, valid Unicode)."""
    if "\0" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _echo_both(text: str) -> list[str]:
    """A program that prints its argument on stdout and $V on stderr, then its cwd."""
    return ["/bin/sh", "-c", 'printf "%s" "$1"; printf "%s" "$V" >&2; pwd', "sh", text]


async def check_job(js: aiores.JobService, box: Canary, text: str) -> None:
    """``text`` as an argument, an environment value, in the working directory's name
    and in the stderr file's name; then as the working directory itself and as an
    environment variable's name."""
    workdir = box.dir_for("w", text) if carried(text) else box.directory
    errfile = box.directory / ("e" + secrets.token_hex(4))
    try:
        desc = JobDescription(
            executable="/bin/sh",
            arguments=_echo_both(text)[1:],
            environment={"V": text},
            working_directory=str(workdir),
            stderr=str(errfile),
            name=text,
        )
        job = await js.submit(desc)
    except BadParameter:
        assert not carried(text), f"{text!r} was refused"
    else:
        assert carried(text), f"{text!r} was accepted, but cannot reach a program"
        async with asyncio.timeout(STEP):
            assert await job.wait() is JobState.DONE, (text, job.state_detail)
        assert job.stdout == text + str(workdir) + "\n"
        assert errfile.read_bytes() == text.encode()
    box.assert_untouched(text)

    # The text as the working directory (relative ones start from the login directory).
    try:
        job = await js.submit(JobDescription(executable="/bin/true", working_directory=text or "x"))
    except BadParameter:
        assert not carried(text), f"{text!r} was refused as a working directory"
    except DoesNotExist:
        pass  # checked at submit where the backend can (local://)
    else:
        async with asyncio.timeout(STEP):
            await job.wait()
    box.assert_untouched(text)

    # The text as an environment variable's name: a portable name or refused.
    try:
        job = await js.submit(
            JobDescription(executable="/usr/bin/env", environment={text or "x": "1"})
        )
    except BadParameter:
        pass
    else:
        async with asyncio.timeout(STEP):
            assert await job.wait() is JobState.DONE
        assert f"{text or 'x'}=1\n" in (job.stdout or "")
    box.assert_untouched(text)


Run = Callable[[Sequence[str], dict[str, str]], Awaitable[RunResult]]


async def check_run(run: Run, box: Canary, text: str) -> None:
    """``text`` as a command's argument and as an environment value."""
    try:
        async with asyncio.timeout(STEP):
            result = await run(_echo_both(text), {"V": text})
    except BadParameter:
        assert not carried(text), f"{text!r} was refused"
    else:
        assert carried(text), f"{text!r} was accepted, but cannot reach a program"
        assert result.exit_status == 0, result
        assert result.stdout.startswith(text)
        assert result.stderr == text
    box.assert_untouched(text)


__all__ = ["SETTINGS", "Canary", "check_job", "check_run"]

"""local:// applies the rules every backend applies: refused before anything starts."""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import aiores
from aiores.adaptor import URL
from aiores_local import LocalCommandRunner

from .conftest import FakeEnv


@pytest_asyncio.fixture
async def runner(env: FakeEnv) -> AsyncIterator[LocalCommandRunner]:
    runner = LocalCommandRunner(URL.parse("local://?grace=0.5"), env)
    await runner.open()
    yield runner
    await runner.aclose()


CASES: list[tuple[str, dict[str, Any], str]] = [
    ("env-space", {"env": {"A B": "1"}}, "'A B'"),
    ("env-semicolon", {"env": {"A;touch x": "1"}}, "'A;touch x'"),
    ("env-digit", {"env": {"1A": "1"}}, "'1A'"),
    ("env-int", {"env": {"A": 5}}, "env['A']"),
    ("env-nul", {"env": {"A": "a\0b"}}, "env['A']"),
    ("env-surrogate", {"env": {"A": "\ud800"}}, "env['A']"),
    ("arg-nul", {"args": ["a\0b"]}, "command[2]"),
    ("arg-surrogate", {"args": ["\udcff"]}, "command[2]"),
    ("stdin", {"stdin": 5}, "stdin"),
    ("timeout-nan", {"timeout": math.nan}, "timeout"),
    ("timeout-inf", {"timeout": math.inf}, "timeout"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("kwargs", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_runner_refuses(
    runner: LocalCommandRunner, tmp_path: Path, kwargs: dict[str, Any], field: str
) -> None:
    canary = tmp_path / "canary"
    args = kwargs.pop("args", [])
    with pytest.raises(aiores.BadParameter, match=re.escape(field)):
        await runner.run(["touch", str(canary), *args], **kwargs)
    assert not canary.exists()  # nothing ran


@pytest.mark.asyncio
@pytest.mark.parametrize("command", ["", "  ", None, [], ["", "x"], "true \0"])
async def test_runner_refuses_commands(runner: LocalCommandRunner, command: Any) -> None:
    with pytest.raises(aiores.BadParameter, match="command"):
        await runner.run(command)


@pytest.mark.asyncio
async def test_runner_accepts_edges(runner: LocalCommandRunner) -> None:
    with pytest.raises(aiores.Timeout):  # timeout=0 is "now or never", as for wait()
        await runner.run(["sleep", "5"], timeout=0)
    result = await runner.run(
        'printf %s "$_A1"',
        env={"_A1": ""},
        timeout=datetime.timedelta(seconds=10),  # type: ignore[arg-type]
    )
    assert result.ok
    assert result.stdout == ""


@pytest.mark.parametrize("grace", [math.nan, math.inf, -1, "x", True])
def test_runner_grace(env: FakeEnv, grace: Any) -> None:
    with pytest.raises(aiores.BadParameter, match="grace"):
        LocalCommandRunner(URL.parse("local://"), env, grace=grace)

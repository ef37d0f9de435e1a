"""ssh:// applies the rules every backend applies: refused before anything is sent."""

from __future__ import annotations

import datetime
import math
import re
from typing import Any

import pytest

import aiores

from .conftest import Adaptors
from .servers import Sshd

CASES: list[tuple[str, dict[str, Any], str]] = [
    ("empty", {"command": ""}, "command"),
    ("blank", {"command": "  "}, "command"),
    ("none", {"command": None}, "command"),
    ("empty-seq", {"command": []}, "command"),
    ("empty-program", {"command": ["", "x"]}, "command[0]"),
    ("arg-int", {"command": ["echo", 5]}, "command[1]"),
    ("arg-nul", {"command": ["echo", "a\0b"]}, "command[1]"),
    ("surrogate", {"command": "echo \ud800"}, "command"),
    ("env-space", {"env": {"A B": "1"}}, "'A B'"),
    ("env-semicolon", {"env": {"A;touch x": "1"}}, "'A;touch x'"),
    ("env-int", {"env": {"A": 5}}, "env['A']"),
    ("env-nul", {"env": {"A": "\0"}}, "env['A']"),
    ("stdin", {"stdin": 5}, "stdin"),
    ("timeout-nan", {"timeout": math.nan}, "timeout"),
    ("timeout-inf", {"timeout": math.inf}, "timeout"),
    ("timeout-negative", {"timeout": -1}, "timeout"),
]


@pytest.mark.asyncio
async def test_runner_refuses(adaptors: Adaptors, sshd: Sshd) -> None:
    runner = await adaptors.runner(sshd.url())
    for name, kwargs, field in CASES:
        kwargs = {"command": "true", **kwargs}
        command = kwargs.pop("command")
        with pytest.raises(aiores.BadParameter, match=re.escape(field)):
            await runner.run(command, **kwargs)
        assert runner.pool.connects == 0, name  # refused before anything was sent


@pytest.mark.asyncio
async def test_runner_accepts_edges(adaptors: Adaptors, sshd: Sshd) -> None:
    runner = await adaptors.runner(sshd.url())
    with pytest.raises(aiores.Timeout):  # timeout=0 is "now or never", as for wait()
        await runner.run("sleep 5", timeout=0)
    result = await runner.run("true", timeout=datetime.timedelta(seconds=20))  # type: ignore[arg-type]
    assert result.ok

"""sim:// applies the rules every backend applies: refused before anything is sent."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

import aiores

from .conftest import booted


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("sim://\n", "control character"),
        ("sim://?boot_delay=nan", "boot_delay"),
        ("sim://?die_after=inf", "die_after"),
        ("sim://?boot_failure=nan", "boot_failure"),
    ],
)
async def test_urls_refuse(url: str, field: str) -> None:
    async with aiores.Session(journal=None) as session:
        with pytest.raises(aiores.IncorrectURL, match=field):
            await session.manager(url).list_templates()


@pytest.mark.asyncio
async def test_runs_refuse(state_dir: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"env": {"A B": "1"}}, "'A B'"),
        ({"env": {"A;touch x": "1"}}, "'A;touch x'"),
        ({"env": {"A": 5}}, "env['A']"),
        ({"env": {"A": "\0"}}, "env['A']"),
        ({"command": ["touch", f"{canary}\0"]}, "command[1]"),
        ({"command": ["touch", f"{canary}\ud800"]}, "command[1]"),
        ({"command": ""}, "command"),
        ({"stdin": 5}, "stdin"),
        ({"timeout": math.nan}, "timeout"),
    ]
    async with booted(1, state_dir=state_dir) as (_, (vm,)):
        for kwargs, field in cases:
            kwargs = {"command": ["touch", str(canary)], **kwargs}
            command = kwargs.pop("command")
            with pytest.raises(aiores.BadParameter, match=re.escape(field)):
                await vm.run(command, **kwargs)
        assert not canary.exists()
        assert (await vm.run(["true"], timeout=20)).ok

"""examples/sim_demo.py: what it leaves behind when a group cannot be acquired."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import aiores
from aiores_sim import cloud_pid

EXAMPLE = Path(__file__).parents[2] / "examples" / "sim_demo.py"


def _example(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example, its db group asking for a template the cloud does not have."""
    spec = importlib.util.spec_from_file_location("sim_demo_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def description(**fields: Any) -> aiores.ComputeDescription:
        if "db" in fields.get("tags", ()):
            fields["template"] = "huge"
        return aiores.ComputeDescription(**fields)

    monkeypatch.setattr(module, "ComputeDescription", description)
    return module


@pytest.mark.asyncio
async def test_example_destroys_the_group_it_got(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(aiores.DoesNotExist, match="huge"):
        await _example(monkeypatch).main()
    async with aiores.Session() as session:
        assert await session.manager("sim://").list(tags="web") == []


@pytest.mark.asyncio
async def test_example_stops_the_cloud_it_started(
    own_cloud: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(aiores.DoesNotExist):
        await _example(monkeypatch).main()
    assert await cloud_pid(own_cloud) is None

"""ec2:// against moto: large answers are parsed off the event loop, small ones on it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores_ec2 import _parsing
from aiores_ec2.testing import MotoServer

from .conftest import IMAGE, STEP, ec2_url

pytestmark = pytest.mark.asyncio


async def test_large_answers_parsed_in_a_thread(
    moto: MotoServer, session: aiores.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[tuple[str, int, bool]] = []  # (answer's shape, length, on the loop thread)
    loop_thread = threading.get_ident()
    plain = _parsing._OffLoopEC2QueryParser._do_parse

    def recording(self: Any, response: dict[str, Any], shape: Any) -> Any:
        action = shape.name.removesuffix("Result") if shape is not None else "?"
        parsed.append((action, len(response["body"]), threading.get_ident() == loop_thread))
        return plain(self, response, shape)

    monkeypatch.setattr(_parsing._OffLoopEC2QueryParser, "_do_parse", recording)
    mgr = session.manager(ec2_url(moto))
    desc = ComputeDescription(image=IMAGE, template="t3.micro", ready=None)
    vms = await mgr.acquire_many(desc, 40)
    async with asyncio.timeout(STEP):
        await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in vms))
    # Parsed right, whichever thread parsed it.
    assert len({vm.id for vm in vms}) == 40
    assert all(vm.state_detail == "running" for vm in vms)
    big = [p for p in parsed if p[1] >= _parsing.OFF_LOOP_BYTES]
    small = [p for p in parsed if p[1] < _parsing.OFF_LOOP_BYTES]
    # 40 instances' launch (its answer's shape is a Reservation) and description are
    # each past the threshold.
    assert {p[0] for p in big} >= {"Reservation", "DescribeInstances"}, parsed
    assert not any(on_loop for _, _, on_loop in big), big
    # Small answers (the key pair and group look-ups, ...) stay on the loop.
    assert small, parsed
    assert all(on_loop for _, _, on_loop in small), small
    await mgr.destroy(vms)

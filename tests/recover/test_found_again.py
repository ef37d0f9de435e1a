"""Found again from another program: descriptions, readiness, ids that name their URL.

Every case is two programs: this test's, and a fresh interpreter it starts with the
same ``$AIORES_STATE_DIR`` (journal and sim cloud), which finds what the first made.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import aiores
from aiores import ComputeDescription, JobDescription, JobState, ResourceState

from .conftest import STEP, in_another_program

pytestmark = pytest.mark.asyncio

URL = "sim://?boot_delay=0.05"


async def test_a_machine_comes_back_by_its_id_alone_with_its_description_and_active() -> None:
    desc = ComputeDescription(template="tiny", tags={"again"}, user_data="#!/bin/sh\ntrue\n")
    async with aiores.Session() as first:
        vm = await first.manager(URL).acquire(desc)
        await vm.wait(ResourceState.ACTIVE, timeout=STEP)
    try:
        seen = await in_another_program(f"""
            vm = await session.get({vm.id!r})  # no manager: the id names its URL
            state = vm.state.name  # before anything probed it
            described = await vm.manager.get_description(vm.id)
            assert described == vm.description
            return [state, vm.id, vm.description.template, sorted(vm.description.tags),
                    vm.description.user_data, vm.description.ready]
        """)
        # Readiness confirmed once is journalled: ACTIVE at once, no probe; the
        # description is back, without its user data (never journalled).
        assert seen == ["ACTIVE", vm.id, "tiny", ["again"], None, "ssh"]
    finally:
        async with aiores.Session(journal=None) as other:
            await other.manager(URL).destroy(vm.id)


async def test_a_machine_never_reached_is_pending_until_probed_then_active_for_all() -> None:
    async with aiores.Session() as first:
        vm = await first.manager(URL).acquire(ComputeDescription(template="tiny"))
    # Booted and reached by a program that keeps no journal: nobody journalled that.
    async with aiores.Session(journal=None) as unjournalled:
        reached = await unjournalled.manager(URL).get(vm.id)
        await reached.wait(ResourceState.ACTIVE, timeout=STEP)
    try:
        seen = await in_another_program(f"""
            vm = await session.get({vm.id!r})
            before = [vm.state.name, vm.state_detail]
            probed = await session.get({vm.id!r}, probe=True)
            assert probed is vm
            return before + [vm.state.name]
        """)
        assert seen == ["PENDING", "running", "ACTIVE"]
        # The probe's answer was journalled: later programs see ACTIVE at once.
        assert (
            await in_another_program(f"""
            return (await session.manager("sim://").get({vm.id!r})).state.name
        """)
            == "ACTIVE"
        )
        async with aiores.Session() as listing:
            (listed,) = [r for r in await listing.manager(URL).list() if r.id == vm.id]
            assert listed.state is ResourceState.ACTIVE
            assert listed.description == ComputeDescription(template="tiny")
    finally:
        async with aiores.Session(journal=None) as other:
            await other.manager(URL).destroy(vm.id)


async def test_a_job_on_a_machine_is_found_by_its_id_then_reaped_and_forgotten() -> None:
    async with aiores.Session() as first:
        vm = await first.manager(URL).acquire(ComputeDescription(template="tiny"))
        await vm.wait(ResourceState.ACTIVE, timeout=STEP)
        js = vm.job_service()
        job = await js.submit(JobDescription(executable="/bin/sleep", arguments=["30"]))
        quick = await js.submit(JobDescription(executable="/bin/true"))
        assert await quick.wait(timeout=STEP) is JobState.DONE
    try:
        # Another program finds the job by its id alone (the machine's host keys
        # come from the journal), cancels it; both jobs' ends are journalled.
        seen = await in_another_program(f"""
            job = await session.job({job.id!r})
            running = job.state.name
            await job.cancel()
            await job.wait()
            return [running, job.state.name]
        """)
        assert seen == ["RUNNING", "CANCELED"]
        async with aiores.Session() as second:
            assert second.journal is not None
            rows = {r["id"]: r for r in await second.journal.objects("job")}
            assert json.loads(rows[quick.id]["data"])["exit_code"] == 0
            found = await second.get(quick.id)
            assert isinstance(found, aiores.Job)
            assert found.state is JobState.DONE
            await found.reap()
            with pytest.raises(aiores.DoesNotExist):
                await found.service.get(quick.id)
            with pytest.raises(aiores.DoesNotExist):
                await second.job(quick.id)
        # Reaped is forgotten in every later program too.
        assert (
            await in_another_program(f"""
            try:
                await session.job({quick.id!r})
            except aiores.DoesNotExist:
                return "forgotten"
            return "found"
        """)
            == "forgotten"
        )
    finally:
        async with aiores.Session(journal=None) as other:
            await other.manager(URL).destroy(vm.id)


async def test_ids_that_name_no_url_or_nothing() -> None:
    async with aiores.Session() as session:
        with pytest.raises(aiores.BadParameter, match="not an aiores id"):
            await session.get("vm-1")
        with pytest.raises(aiores.BadParameter, match="not an aiores id"):
            await session.job("12")
        with pytest.raises(aiores.IncorrectURL):
            await session.get("[nope://]-[vm-1]")
        with pytest.raises(aiores.DoesNotExist):
            await session.get("[sim://]-[vm-nope]")


async def test_an_acquire_refused_for_want_of_credentials_leaves_no_intent_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    desc = ComputeDescription(image="ami-12c6146b", template="t2.micro", ready=None)
    async with aiores.Session() as first:
        mgr = first.manager("ec2://us-east-1?endpoint=http://127.0.0.1:1")  # never reached
        with (
            caplog.at_level(logging.WARNING, logger="aiores"),
            pytest.raises(aiores.AuthenticationFailed),
        ):
            await mgr.acquire(desc)
    assert not caplog.records, caplog.text
    seen = await in_another_program("""
        found = await session.recover()
        reaped = await session.reap()
        return [len(found.in_flight), len(reaped.leaks), len(reaped.skipped),
                [i.status for i in await session.journal.intents()]]
    """)
    assert seen == [0, 0, 0, ["failed"]]

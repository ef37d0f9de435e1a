"""ec2:// leases: the self-destruct at boot (user data, shutdown behaviour, tag) against
moto, and renew: the tag update against moto, the timer's script run by a shell.

moto boots nothing, so no instance of it runs the script that renew sends over SSH:
in the moto test that one step is recorded instead of sent, and the script itself is
run here by ``/bin/sh`` with stand-ins for ``shutdown`` and ``cloud-init`` (the only
commands on its PATH, so the machine's own ``shutdown`` is never reached).
"""

from __future__ import annotations

import datetime
import os
import subprocess
import time
from pathlib import Path

import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores.adaptor import CommandRunner
from aiores_ec2 import _adaptor, _lease
from aiores_ec2.testing import MotoServer

from .conftest import IMAGE, STEP, aws_context, cloud_config, ec2_url, raw_client


def vm_desc(**fields: object) -> ComputeDescription:
    return ComputeDescription(image=IMAGE, template="t3.micro", ready=None, **fields)  # type: ignore[arg-type]


async def _instance(moto: MotoServer, instance_id: str) -> tuple[str, dict[str, str], str]:
    """Its user data, tags and shutdown behaviour, as EC2 answers."""
    async with raw_client(moto) as client:
        data = await client.describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData"
        )
        behaviour = await client.describe_instance_attribute(
            InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior"
        )
        answer = await client.describe_instances(InstanceIds=[instance_id])
    inst = answer["Reservations"][0]["Instances"][0]
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    return data["UserData"]["Value"], tags, behaviour["InstanceInitiatedShutdownBehavior"]["Value"]


@pytest.mark.asyncio
async def test_a_lease_is_a_self_destruct_at_boot_and_a_tag(
    moto: MotoServer, session: aiores.Session
) -> None:
    mgr = session.manager(ec2_url(moto))
    before = time.time()
    vm = await mgr.acquire(vm_desc(duration=150))
    data, tags, behaviour = await _instance(moto, vm.native_id)
    _, config = cloud_config(data)
    # 150 s rounded up to whole minutes: it shuts down (and so terminates) itself.
    assert config["power_state"]["delay"] == "+3"
    assert config["power_state"]["mode"] == "poweroff"
    assert behaviour == "terminate"
    assert vm.expires_at is not None
    assert before + 149 <= vm.expires_at <= time.time() + 151
    assert _lease.expires_at(tags) == vm.expires_at
    # No lease, no timer: it runs until destroyed (a shutdown inside stops it only).
    plain = await mgr.acquire(vm_desc())
    data, tags, behaviour = await _instance(moto, plain.native_id)
    assert "power_state" not in cloud_config(data)[1]
    assert behaviour == "stop"
    assert _lease.EXPIRES_TAG not in tags
    assert plain.expires_at is None
    await mgr.destroy([vm, plain])


@pytest.mark.asyncio
async def test_renew_rearms_the_timer_over_ssh_and_updates_the_tag(
    moto: MotoServer, session: aiores.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[str, float]] = []

    async def recorded(runner: CommandRunner, seconds: float) -> None:
        sent.append((str(runner.url), seconds))

    monkeypatch.setattr(_adaptor, "rearm", recorded)
    mgr = session.manager(ec2_url(moto))
    vm = await mgr.acquire(vm_desc(duration=600))
    await vm.wait(ResourceState.ACTIVE, timeout=STEP)
    first = vm.expires_at
    assert first is not None
    before = time.time()
    await vm.renew(3600)
    # Over the instance's own SSH access, then the tag.
    assert sent == [(vm.access, 3600)]
    assert vm.expires_at is not None
    assert before + 3600 <= vm.expires_at <= time.time() + 3600
    _, tags, _ = await _instance(moto, vm.native_id)
    tagged = _lease.expires_at(tags)
    assert tagged is not None
    assert abs(tagged - vm.expires_at) <= 1  # the tag holds whole seconds
    # Found again from the tag, as another program would.
    async with aiores.Session(journal=None, contexts=[aws_context()]) as other:
        again = await other.manager(ec2_url(moto)).get(vm.native_id)
        assert isinstance(again, aiores.Compute)
        assert again.expires_at == tagged
    # Without a lease, or once ended, nothing is sent.
    plain = await mgr.acquire(vm_desc())
    await plain.wait(ResourceState.ACTIVE, timeout=STEP)
    with pytest.raises(aiores.IncorrectState, match="no lease"):
        await plain.renew(60)
    await mgr.destroy([vm, plain])
    with pytest.raises(aiores.IncorrectState):
        await vm.renew(60)
    assert len(sent) == 1


def test_the_renew_script_cancels_the_timer_and_arms_a_new_one(tmp_path: Path) -> None:
    log = tmp_path / "log"
    for name in ("shutdown", "cloud-init"):
        stand_in = tmp_path / name
        stand_in.write_text(f'#!/bin/sh\nprintf "%s|" {name} "$@" >> {log}\necho >> {log}\n')
        stand_in.chmod(0o755)
    script = _lease.rearm_script(61)
    done = subprocess.run(
        ["/bin/sh", "-s"],
        input=script.encode(),
        env={"PATH": str(tmp_path)},
        capture_output=True,
        timeout=STEP,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        "cloud-init|status|--wait|",  # cloud-init's own timer is set first
        "shutdown|-c|",
        f"shutdown|-h|+2|{_lease.MESSAGE}|",  # 61 s: the next whole minute after
    ]
    assert os.access(tmp_path / "shutdown", os.X_OK)


def test_lease_minutes_and_tags() -> None:
    assert [_lease.lease_minutes(s) for s in (0.5, 60, 60.1, 3600)] == [1, 1, 2, 60]
    ends = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC).timestamp()
    assert _lease.expiry_tag(ends) == "2030-01-02T03:04:05+00:00"
    assert _lease.expires_at({_lease.EXPIRES_TAG: _lease.expiry_tag(ends)}) == ends
    assert _lease.expires_at({_lease.EXPIRES_TAG: "2030-01-02T03:04:05"}) == ends  # naive: UTC
    assert _lease.expires_at({_lease.EXPIRES_TAG: "soon"}) is None
    assert _lease.expires_at({}) is None

"""Existing machines in a fleet (``fleet.add``): a real OpenSSH sshd next to sim VMs."""

from __future__ import annotations

from pathlib import Path

import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from tests.ssh.servers import USER, Sshd

from .conftest import FAST, STEP


@pytest.mark.asyncio
async def test_an_existing_host_runs_with_sim_vms(sshd: Sshd, tmp_path: Path, mark: str) -> None:
    payload = tmp_path / "payload.txt"
    payload.write_text("to the host\n")
    script = tmp_path / "script.sh"
    script.write_text('#!/bin/sh\necho "$(id -un) $1"\n')
    remote = f"aiores-fleet-{mark}.txt"
    async with aiores.Session(journal=None, contexts=[sshd.context()]) as session:
        async with session.fleet() as fleet:
            host = await fleet.add(sshd.url(), tags={"login"})
            assert host.state is ResourceState.ACTIVE  # at once, no probe
            assert host.access == sshd.url()
            assert fleet.tags_of(host) == {"login", "hosts", "0"}
            assert await fleet.add(sshd.url(), tags="edge") is host  # same machine
            assert fleet.tags_of(host) == {"login", "edge", "hosts", "0"}
            vms = fleet.provision(FAST, ComputeDescription(), count=2, tags="vm")
            group = await fleet.wait(timeout=STEP)
            assert group.resources == [host, *await vms]
            assert fleet.tags_of(group[1]) == {"vm", "sim", "1"}
            assert group.public_hostnames == ["127.0.0.1"] * 3

            # One run reaches the sshd host and both VMs.
            result = await group.run("echo hi")
            assert [r.stdout for r in result] == ["hi\n"] * 3
            login = fleet.select("login")
            assert (await login.run("id -un"))[0].stdout == f"{USER}\n"

            # Files and scripts on the real host.
            try:
                await login.put(payload, remote)
                assert (await login.run(["cat", remote]))[0].stdout == "to the host\n"
                await login.get(remote, tmp_path / "back.txt")
                assert (tmp_path / "back.txt").read_text() == "to the host\n"
            finally:
                await login.run(["rm", "-f", remote], check=False)
            scripted = await login.copy_and_run(script, ["x y"])
            assert scripted[0].stdout == f"{USER} x y\n"

            # user= logs in under another name on the same host: sshd refuses root.
            as_root = await login.run("true", user="root", check=False)
            assert isinstance(as_root[0].error, aiores.AuthenticationFailed)
            assert as_root[0].exit_status is None
            assert (await login.run("id -un", user=USER))[0].stdout == f"{USER}\n"

            await fleet.deprovision("login")
            assert fleet.list("login") == []
            assert len(fleet.list()) == 2
        # Deprovisioned or not, an added host is only forgotten; the VMs are destroyed.
        assert host.state is ResourceState.ACTIVE
        assert (await host.run("echo still")).stdout == "still\n"
        assert all(vm.state is ResourceState.CANCELED for vm in group[1:])


@pytest.mark.asyncio
async def test_add_checks_the_url() -> None:
    async with aiores.Session(journal=None) as session:
        fleet = session.fleet()
        with pytest.raises(aiores.IncorrectURL):
            await fleet.add("not a url")
        with pytest.raises(aiores.IncorrectURL):
            await fleet.add("ssh://")
        with pytest.raises(aiores.IncorrectURL):
            await fleet.add("hosts://somewhere")
        with pytest.raises(aiores.BadParameter):
            await fleet.add("ssh://me@host", tags={""})
        local = await fleet.add("local://")
        assert (await fleet.select("hosts").run("echo local"))[0].stdout == "local\n"
        assert local.state is ResourceState.ACTIVE
        await fleet.aclose()
        assert local.state is ResourceState.ACTIVE

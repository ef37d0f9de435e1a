"""sim:// VMs name themselves by their ids and know their users, as real machines do."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

import aiores
from aiores import Group
from aiores.adaptor import URL

from .conftest import booted

USERS_URL = "sim://?boot_delay=0.05&users=wf,ops"


def _login_name(vm: aiores.Compute) -> str:
    """The user that acquired ``vm`` (its access URL's)."""
    assert vm.access is not None
    user = URL.parse(vm.access).user
    assert user
    return user


@pytest.mark.asyncio
async def test_each_vm_is_named_by_its_id(state_dir: Path) -> None:
    async with booted(2, state_dir=state_dir) as (_, vms):
        names = []
        for vm in vms:
            result = await vm.run("hostname; uname -n; hostname -s; uname -s; uname -a")
            hostname, node, short, kernel, everything = result.stdout.splitlines()
            assert hostname == node == short == vm.native_id
            assert kernel == (await _host_uname("-s"))
            assert vm.native_id in everything.split()
            if socket.gethostname() != vm.native_id:
                assert socket.gethostname() not in everything.split()
            names.append(hostname)
        assert len(set(names)) == 2


async def _host_uname(option: str) -> str:
    proc = await asyncio.create_subprocess_exec("uname", option, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return out.decode().strip()


@pytest.mark.asyncio
async def test_known_users_log_in_to_homes_of_their_own(state_dir: Path, tmp_path: Path) -> None:
    async with booted(1, USERS_URL, state_dir=state_dir) as (_, [vm]):
        disk = Path(vm.extra["disk"])
        owner = _login_name(vm)
        assert set(vm.extra["users"]) == {owner, "root", "wf", "ops"}
        group = Group([vm])
        script = 'whoami; id -un; id -u; id; echo "$HOME"; pwd; echo "$USER"; hostname'
        expected = {
            "wf": (1001, disk / "home" / "wf"),
            "ops": (1002, disk / "home" / "ops"),
            owner: (0 if owner == "root" else 1000, disk),
            "root": (0, disk if owner == "root" else disk / "root"),
        }
        for user, (uid, home) in expected.items():
            [result] = await group.run(script, user=user, check=True)
            assert result.stdout.splitlines() == [
                user,
                user,
                str(uid),
                f"uid={uid}({user}) gid={uid}({user}) groups={uid}({user})",
                str(home),
                str(home),
                user,
                vm.native_id,
            ]
        # Files: relative paths start in the login's home, as over sshd.
        note = tmp_path / "note.txt"
        note.write_text("for wf\n")
        await group.put(note, "note.txt", user="wf")
        assert (disk / "home" / "wf" / "note.txt").read_text() == "for wf\n"
        [result] = await group.run("cat note.txt", user="wf", check=True)
        assert result.stdout == "for wf\n"
        [result] = await group.run("cat home/wf/note.txt", check=True)  # the owner's home: /
        assert result.stdout == "for wf\n"
        await group.get("note.txt", tmp_path / "back", user="wf")
        assert (tmp_path / "back").read_text() == "for wf\n"


@pytest.mark.asyncio
async def test_unknown_users_are_refused_like_sshd_does(state_dir: Path) -> None:
    async with booted(1, state_dir=state_dir) as (session, [vm]):
        assert vm.access is not None
        # No users= option: the VM knows root and its owner only (and, isolated, the
        # accounts of its own /etc/passwd: no "ghost" there).
        for user in ("wf", "ghost"):
            access = str(URL.parse(vm.access).replace(user=user))
            runner = await session.command_runner(access)  # connects on first use
            with pytest.raises(aiores.AuthenticationFailed, match="refused"):
                await runner.run("whoami")
        with pytest.raises(aiores.FanOutError) as caught:
            await Group([vm]).run("whoami", user="wf", check=True)
        [error] = caught.value.exceptions
        assert isinstance(error, aiores.AuthenticationFailed)
        # The owner still gets in.
        assert (await vm.run("whoami")).stdout == f"{_login_name(vm)}\n"


@pytest.mark.asyncio
async def test_users_option_is_checked() -> None:
    async with aiores.Session() as session:
        for bad in ("Wf", "wf,9x", "a.b", "-x", "x" * 33):
            with pytest.raises(aiores.IncorrectURL, match="login name"):
                session.manager(f"sim://?users={bad}")

"""ec2:// host key rotation: the key sent in the user data stops mattering at ACTIVE.

End to end against moto and the stand-in for cloud-init and sshd (fake_instance):
the instance is reached with the injected key, makes a new one itself, sshd
switches to it, and from then on the injected private key (which botocore's DEBUG
log of RunInstances shows) authenticates the host to nobody.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import asyncssh
import pytest

import aiores
from aiores import ComputeDescription, ResourceState
from aiores_ec2 import MANAGED_KEY
from aiores_ec2.testing import MotoServer

from .conftest import IMAGE, STEP, aws_context, cloud_config, ec2_url, raw_client
from .fake_instance import FAIL_RELOAD, FakeInstance, serve_instance

pytestmark = pytest.mark.asyncio


async def _user_data(server: MotoServer, instance_id: str) -> tuple[str, dict[str, Any]]:
    async with raw_client(server) as client:
        attr = await client.describe_instance_attribute(
            InstanceId=instance_id, Attribute="userData"
        )
    encoded = attr["UserData"]["Value"]
    return encoded, cloud_config(encoded)[1]


async def _shows(address: str, trusted_public: str) -> bool:
    """Whether a plain SSH client trusting only ``trusted_public`` accepts the server."""
    known = asyncssh.import_known_hosts(f"{address} {trusted_public}\n")
    client_key = aiores.state_dir() / MANAGED_KEY
    try:
        async with asyncssh.connect(
            address, 22, known_hosts=known, client_keys=[str(client_key)], username="ec2-user"
        ) as conn:
            await conn.run("true", check=True)
    except asyncssh.HostKeyNotVerifiable:
        return False
    return True


async def _serve(vm: aiores.Compute, config: dict[str, Any]) -> FakeInstance:
    assert vm.public_address is not None
    authorized = (aiores.state_dir() / MANAGED_KEY).with_suffix(".pub").read_text()
    return await serve_instance(vm.public_address, config, authorized)


async def test_the_injected_host_key_is_replaced_before_active(
    moto: MotoServer, session: aiores.Session, caplog: pytest.LogCaptureFixture
) -> None:
    url = ec2_url(moto)
    mgr = session.manager(url)
    with caplog.at_level(logging.DEBUG, logger="botocore"):
        vm = await mgr.acquire(ComputeDescription(image=IMAGE, template="t3.micro"))
    encoded, config = await _user_data(moto, vm.native_id)
    boot_private = config["ssh_keys"]["ed25519_private"]
    boot_public = config["ssh_keys"]["ed25519_public"]
    # The premise: a DEBUG log of the launch holds the injected private key.
    assert encoded in caplog.text
    assert json.dumps(boot_private) in base64.b64decode(encoded).decode()
    assert vm.host_keys == (boot_public,)
    assert vm.public_address is not None
    address = vm.public_address
    instance = await _serve(vm, config)
    try:
        async with asyncio.timeout(STEP):
            await vm.wait(ResourceState.ACTIVE)
        # aiores pins the key the instance made, and only that one.
        (new,) = vm.host_keys
        assert new != boot_public
        assert new.startswith("ssh-ed25519 ")
        assert session.pinned_host_keys(address, 22) == (new,)
        # On the instance: the injected key is gone from sshd's key file, replaced by
        # one made there (no private key crossed the wire), and sshd reloaded once.
        text = instance.host_key_file.read_text()
        assert boot_private.strip() not in text
        assert asyncssh.import_private_key(text).export_public_key().decode().startswith(new)
        assert instance.reloads == 1
        assert not list(instance.host_key_file.parent.glob("*aiores-next*"))
        # The server now shows the new key: a client trusting the injected one refuses it,
        # so whoever read the user data (or the log) cannot pass for this host.
        assert await _shows(address, new)
        assert not await _shows(address, boot_public)
        # Recorded in the state directory, 0600, for later sessions.
        record = aiores.state_dir() / "ec2" / "hostkeys" / vm.native_id
        assert stat.S_IMODE(record.stat().st_mode) == 0o600
        assert json.loads(record.read_text()) == {"boot": boot_public, "new": new, "rotated": True}
        async with aiores.Session(contexts=[aws_context()]) as other:
            again = await other.manager(url).get(vm.id)
            assert isinstance(again, aiores.Compute)
            assert again.host_keys == (new,)
            async with asyncio.timeout(STEP):
                await again.wait(ResourceState.ACTIVE)
                assert (await again.run("echo again")).stdout == "again\n"
        assert instance.reloads == 1  # nothing rotated twice
    finally:
        instance.close()
        await instance.wait_closed()
    # An impostor holding the injected private key (from the log) at the address.
    impostor = await serve_instance(
        address, config, (aiores.state_dir() / MANAGED_KEY).with_suffix(".pub").read_text()
    )
    try:
        async with aiores.Session(contexts=[aws_context()]) as other:
            again = await other.manager(url).get(vm.id)
            assert isinstance(again, aiores.Compute)
            with pytest.raises(aiores.HostKeyError):
                async with asyncio.timeout(STEP):
                    await again.run("true")
    finally:
        impostor.close()
        await impostor.wait_closed()
        await mgr.destroy(vm)
    assert not record.exists()  # forgotten with the instance


async def test_a_switch_cut_short_is_completed_by_the_next_attempt(
    moto: MotoServer, session: aiores.Session
) -> None:
    mgr = session.manager(ec2_url(moto))
    vm = await mgr.acquire(ComputeDescription(image=IMAGE, template="t3.micro"))
    _, config = await _user_data(moto, vm.native_id)
    boot_public = config["ssh_keys"]["ed25519_public"]
    instance = await _serve(vm, config)
    # The first switch replaces the key file but sshd's reload fails: the instance
    # has the new key on disk and still serves the injected one.
    (instance.root / FAIL_RELOAD).touch()
    try:
        async with asyncio.timeout(STEP):
            await vm.wait(ResourceState.ACTIVE)
        (new,) = vm.host_keys
        assert new != boot_public
        assert not (instance.root / FAIL_RELOAD).exists()  # the failure did happen
        assert instance.reloads == 1
        assert vm.public_address is not None
        assert await _shows(vm.public_address, new)
        assert not await _shows(vm.public_address, boot_public)
    finally:
        instance.close()
        await instance.wait_closed()
        await mgr.destroy(vm)


def _modes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
        for p in root.rglob("*")
        if p.is_file()
    }


async def test_state_files_are_0600_in_a_0755_state_dir(moto: MotoServer, state_dir: Path) -> None:
    old = os.umask(0o022)
    try:
        await asyncio.to_thread(state_dir.mkdir)
        os.chmod(state_dir, 0o755)
        async with aiores.Session(contexts=[aws_context()]) as session:
            mgr = session.manager(ec2_url(moto))
            vm = await mgr.acquire(ComputeDescription(image=IMAGE, template="t3.micro"))
            _, config = await _user_data(moto, vm.native_id)
            instance = await _serve(vm, config)
            try:
                async with asyncio.timeout(STEP):
                    await vm.wait(ResourceState.ACTIVE)
                assert session.journal is not None
                await session.journal.flush()
                files = await asyncio.to_thread(_modes, state_dir)
            finally:
                instance.close()
                await instance.wait_closed()
                await mgr.destroy(vm)
    finally:
        os.umask(old)
    assert {
        "journal.sqlite",
        "journal.sqlite-wal",
        "ec2/setup.json",
        "keys/ec2_ed25519",
        "keys/ec2_ed25519.pub",
        f"ec2/hostkeys/{vm.native_id}",
    } <= set(files)
    assert {name: mode for name, mode in files.items() if mode != 0o600} == {}

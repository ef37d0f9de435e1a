"""The local host as a resource, local files, and the local:// plugin itself."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from aiores._descriptions import ComputeDescription, StorageDescription
from aiores._exceptions import (
    BadParameter,
    DoesNotExist,
    IncorrectState,
    IncorrectURL,
    NotSupported,
)
from aiores._registry import registry
from aiores._states import ResourceState
from aiores.adaptor import URL
from aiores_local import (
    LocalCommandRunner,
    LocalFileAdaptor,
    LocalJobAdaptor,
    LocalResourceAdaptor,
    plugin,
)

from .conftest import FakeEnv, Published


# -- resources ---------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_acquire_leases_of_this_host(env: FakeEnv, published: Published) -> None:
    mgr = LocalResourceAdaptor(URL.parse("local://"), env)
    mgr.set_listener(published)
    await mgr.open()
    desc = ComputeDescription(tags=frozenset({"web", "test"}), template="localhost", ready=None)
    leases = await mgr.acquire(desc, 3, "tok-1")
    assert len({lease.id for lease in leases}) == 3
    for lease in leases:
        assert lease.id.startswith("localhost-")
        assert lease.state is ResourceState.ACTIVE
        assert lease.access == "local://"
        assert lease.public_address == lease.private_address == "127.0.0.1"
        assert lease.tags == {"web", "test"}
        assert lease.token == "tok-1"
    other = await mgr.acquire(ComputeDescription(tags=frozenset({"db"})), 1, "tok-2")
    assert {r.id for r in await mgr.find("tok-1")} == {r.id for r in leases}
    assert {r.id for r in await mgr.list(frozenset({"web"}))} == {r.id for r in leases}
    assert len(await mgr.list()) == 4
    await mgr.destroy([leases[0].id, "localhost-unknown"])
    ended = await published.next(leases[0].id)
    assert ended.state is ResourceState.CANCELED
    assert (await mgr.describe([leases[0].id]))[leases[0].id] == ended
    assert leases[0].id not in {r.id for r in await mgr.list()}
    assert len(await mgr.find("tok-1")) == 2
    await mgr.destroy([leases[0].id])  # already ended: nothing published
    assert published.states(leases[0].id) == [ResourceState.CANCELED]
    assert (await mgr.describe([other[0].id]))[other[0].id].state is ResourceState.ACTIVE


@pytest.mark.asyncio
async def test_templates_and_images_describe_this_host(env: FakeEnv) -> None:
    mgr = LocalResourceAdaptor(URL.parse("local://"), env)
    await mgr.open()
    [template] = await mgr.list_templates()
    assert template.name == "localhost"
    assert template.cpus == os.cpu_count()
    meminfo = await asyncio.to_thread(Path("/proc/meminfo").read_text)
    total_kib = int(meminfo.split("MemTotal:")[1].split()[0])
    assert template.memory == total_kib // 1024
    assert [image.name for image in await mgr.list_images()] == ["localhost"]


@pytest.mark.asyncio
async def test_acquire_refuses_what_this_host_cannot_be(env: FakeEnv) -> None:
    mgr = LocalResourceAdaptor(URL.parse("local://"), env)
    with pytest.raises(DoesNotExist, match="no image 'ubuntu'; its only image is 'localhost'"):
        await mgr.acquire(ComputeDescription(image="ubuntu"), 1, "t")
    with pytest.raises(DoesNotExist, match="no template 'large'"):
        await mgr.acquire(ComputeDescription(template="large"), 1, "t")
    with pytest.raises(BadParameter, match="CPUs"):
        await mgr.acquire(ComputeDescription(cpus=100_000), 1, "t")
    with pytest.raises(NotSupported, match="no storage"):
        await mgr.acquire(StorageDescription(), 1, "t")
    with pytest.raises(BadParameter, match="count"):
        await mgr.acquire(ComputeDescription(), 0, "t")
    assert await mgr.list() == []
    await mgr.aclose()
    with pytest.raises(IncorrectState, match="closed"):
        await mgr.acquire(ComputeDescription(), 1, "t")


# -- files -------------------------------------------------------------------------------
def make_tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "data.txt").write_text("data")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "sub" / "secret").write_text("s")
    (root / "link").symlink_to("data.txt")
    (root / "run.sh").chmod(0o755)
    (root / "sub" / "secret").chmod(0o600)
    (root / "sub").chmod(0o750)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.asyncio
async def test_put_and_get_directory_keeps_modes(env: FakeEnv, tmp_path: Path) -> None:
    files = LocalFileAdaptor(URL.parse("local://"), env)
    src = tmp_path / "src"
    make_tree(src)
    await files.put(src, str(tmp_path / "copy"))  # a new path: copied to it
    copy = tmp_path / "copy"
    assert (copy / "data.txt").read_text() == "data"
    assert (copy / "sub" / "secret").read_text() == "s"
    assert mode(copy / "run.sh") == 0o755
    assert mode(copy / "sub" / "secret") == 0o600
    assert mode(copy / "sub") == 0o750
    assert os.readlink(copy / "link") == "data.txt"
    dest = tmp_path / "dest"
    dest.mkdir()
    await files.get(str(copy), dest)  # an existing directory: copied into it
    assert mode(dest / "copy" / "run.sh") == 0o755
    assert await files.list(str(dest / "copy")) == ["data.txt", "link", "run.sh", "sub"]


@pytest.mark.asyncio
async def test_put_file_and_remove(env: FakeEnv, tmp_path: Path) -> None:
    files = LocalFileAdaptor(URL.parse("local://"), env)
    src = tmp_path / "one.txt"
    src.write_text("1")
    src.chmod(0o640)
    (tmp_path / "into").mkdir()
    await files.put(str(src), str(tmp_path / "into"))
    assert mode(tmp_path / "into" / "one.txt") == 0o640
    with pytest.raises(IncorrectState, match="not empty"):
        await files.remove(str(tmp_path / "into"))
    await files.remove(str(tmp_path / "into" / "one.txt"))
    await files.remove(str(tmp_path / "into"))
    assert not (tmp_path / "into").exists()


@pytest.mark.asyncio
async def test_file_errors_name_the_path(env: FakeEnv, tmp_path: Path) -> None:
    files = LocalFileAdaptor(URL.parse("local://"), env)
    missing = str(tmp_path / "missing")
    with pytest.raises(DoesNotExist, match="missing"):
        await files.put(missing, str(tmp_path / "x"))
    with pytest.raises(DoesNotExist, match="missing"):
        await files.list(missing)
    with pytest.raises(DoesNotExist, match="missing"):
        await files.remove(missing)
    (tmp_path / "f").write_text("")
    with pytest.raises(BadParameter, match="Not a directory"):
        await files.list(str(tmp_path / "f"))


# -- the plugin ----------------------------------------------------------------------------
def test_plugin_accepts_local_and_any_localhost() -> None:
    assert plugin.name == "local"
    assert plugin.schemes == {"local"}
    for url in ("local://", "any://", "any://localhost", "local://?max_running=2"):
        assert plugin.accepts(URL.parse(url)), url
    for url in ("any://example.org", "ssh://localhost", "sim://"):
        assert not plugin.accepts(URL.parse(url)), url
    assert registry.plugin_for(URL.parse("local://")) is plugin


def test_endpoint_keeps_options() -> None:
    key = plugin.endpoint
    assert key(URL.parse("local://")) == key(URL.parse("any://localhost")) == "local://"
    assert key(URL.parse("local://?grace=1&max_running=2")) == key(
        URL.parse("local://?max_running=2&grace=1")
    )
    assert key(URL.parse("local://?max_running=2")) != key(URL.parse("local://"))
    with pytest.raises(IncorrectURL, match="unknown option"):
        key(URL.parse("local://?color=red"))


def test_factories(env: FakeEnv) -> None:
    url = URL.parse("local://?grace=2&max_running=3")
    jobs = plugin.job_adaptor(url, env)
    assert isinstance(jobs, LocalJobAdaptor)
    assert (jobs.grace, jobs.max_running, jobs.poll) == (2.0, 3, None)
    assert jobs.supports_hold
    assert isinstance(plugin.command_runner(url, env), LocalCommandRunner)
    assert isinstance(plugin.resource_adaptor(url, env), LocalResourceAdaptor)
    assert isinstance(plugin.file_adaptor(url, env), LocalFileAdaptor)
    tuned = LocalJobAdaptor(url, env, grace=0.25, max_running=1)
    assert (tuned.grace, tuned.max_running) == (0.25, 1)
    with pytest.raises(BadParameter, match="grace"):
        LocalJobAdaptor(url, env, grace=-1)

"""sim:// VMs as machines of their own: namespaces, an overlay root, their own users.

Each test runs a cloud of its own (``own_cloud``) started by the code under test
with ``AIORES_SIM_ISOLATION`` set, as a user would: a real cloud process, real
namespaces and overlay mounts (the suite runs as root in CI).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import shutil
import socket
import tempfile
from pathlib import Path

import asyncssh
import psutil
import pytest
from click.testing import CliRunner

import aiores
from aiores import ComputeDescription, Group, ResourceState
from aiores._cli import main
from aiores_sim import MANAGED_KEY, CloudClient
from aiores_sim._isolation import SHARED_ENV, VM_TOOLS, choose, requested, shared_paths

from .conftest import STEP

URL = "sim://?boot_delay=0.05"
#: The host's files a VM's bootstrap writes to (inside the VM).
HOST_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow")


def _namespaces_here() -> bool:
    try:
        return choose("auto").on
    except aiores.AioresError:
        return False


pytestmark = pytest.mark.skipif(
    not _namespaces_here(), reason="this host cannot make namespaces (the fallback is tested)"
)


@pytest.fixture
def isolated(own_cloud: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AIORES_SIM_ISOLATION", "namespaces")
    return own_cloud


def _exists(path: str | Path) -> bool:
    return os.path.exists(path)


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _host_processes(mark: str) -> list[int]:
    """Host pids of live processes whose command line has ``mark``."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(mark in arg for arg in proc.info["cmdline"] or ()):
            found.append(proc.pid)
    return found


async def _up(mgr: aiores.Manager, count: int = 1) -> list[aiores.Compute]:
    vms = await mgr.acquire_many(ComputeDescription(), count)
    async with asyncio.timeout(STEP):
        await asyncio.gather(*(vm.wait(ResourceState.ACTIVE) for vm in vms))
    return [vm for vm in vms if isinstance(vm, aiores.Compute)]


@pytest.mark.asyncio
async def test_a_bootstrap_changes_the_vm_not_the_host(isolated: Path) -> None:
    before = {path: _digest(path) for path in HOST_FILES}
    async with aiores.Session() as session:
        [vm] = await _up(session.manager(URL))
        group = Group([vm])
        # Before the bootstrap, the VM has no user wf: refused as sshd refuses.
        with pytest.raises(aiores.FanOutError) as caught:
            await group.run("true", user="wf", check=True)
        [error] = caught.value.exceptions
        assert isinstance(error, aiores.AuthenticationFailed)
        bootstrap = (
            "useradd -m -s /bin/sh wf"
            " && echo from-the-vm > /etc/aiores-sim-probe"
            " && mkdir -p /opt/aiores-sim-probe && echo x > /opt/aiores-sim-probe/file"
            " && rm -rf /opt/aiores-sim-probe"
            " && mkdir /opt/kept && echo kept > /opt/kept/file"
        )
        result = await vm.run(bootstrap)
        assert result.exit_status == 0, result.stderr
        # The host is untouched ...
        assert {path: _digest(path) for path in HOST_FILES} == before
        assert not _exists("/etc/aiores-sim-probe")
        assert not _exists("/opt/kept")
        # ... the VM has it all, and its upper layer holds the changes.
        seen = await vm.run("cat /etc/aiores-sim-probe /opt/kept/file; grep -c ^wf: /etc/passwd")
        assert seen.stdout.split() == ["from-the-vm", "kept", "1"]
        upper = Path(vm.extra["disk"]) / ".sim" / "upper"
        assert (upper / "etc" / "aiores-sim-probe").read_text() == "from-the-vm\n"
        # Now wf logs in, and its commands run as wf (the VM's own uid for it).
        [as_wf] = await group.run(
            "/usr/bin/id -un; /usr/bin/id -u; echo $HOME; pwd; touch mine; stat -c %U mine",
            user="wf",
            check=True,
        )
        name, uid, home, cwd, owner = as_wf.stdout.split()
        wf_uid = (await vm.run("grep ^wf: /etc/passwd | cut -d: -f3")).stdout.strip()
        assert (name, uid, home, cwd, owner) == ("wf", wf_uid, "/home/wf", "/home/wf", "wf")
        assert int(uid) != os.geteuid()
        # Its home is on the VM's disk, where file transfers reach it.
        assert (Path(vm.extra["disk"]) / "home" / "wf" / "mine").exists()
        await vm.destroy()
    assert {path: _digest(path) for path in HOST_FILES} == before


@pytest.mark.asyncio
async def test_two_vms_see_their_own_names_processes_and_files(isolated: Path) -> None:
    async with aiores.Session() as session:
        first, second = await _up(session.manager(URL), 2)
        names = []
        for vm in (first, second):
            # The kernel's own hostname (no stand-in tool): the VM's id.
            out = (await vm.run("cat /proc/sys/kernel/hostname")).stdout.strip()
            assert out == vm.native_id
            names.append(out)
        assert names[0] != names[1] != socket.gethostname()
        started = await first.run(
            "nohup sleep 300.6161 >/dev/null 2>&1 & echo only-first > /tmp/note;"
            " echo only-first > /opt/note; exit 0"
        )
        assert started.exit_status == 0
        async with asyncio.timeout(STEP):
            while not _host_processes("300.6161"):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        # The first sees its process and files; the second sees neither.
        mine = await first.run("ps -eo args; cat /tmp/note /opt/note")
        assert "sleep 300.6161" in mine.stdout
        assert mine.stdout.count("only-first") == 2
        theirs = await second.run("ps -eo args; ls /tmp/note /opt/note 2>&1; true")
        assert "300.6161" not in theirs.stdout
        assert theirs.stdout.count("No such file") == 2
        # A VM's own processes only: none of the host's (the cloud is not there).
        pids = (await second.run("ls /proc | grep -c '^[0-9]'")).stdout.strip()
        assert int(pids) < 10
        await session.manager(URL).destroy([first, second])


@pytest.mark.asyncio
async def test_destroy_ends_every_process_and_removes_the_upper_layer(isolated: Path) -> None:
    async with aiores.Session() as session:
        [vm] = await _up(session.manager(URL))
        disk = Path(vm.extra["disk"])
        # Jobs that hide: their own session, no marker, out of the disk, parent gone.
        hide = (
            "(cd / && setsid env -i sleep 300.7171 >/dev/null 2>&1 </dev/null &);"
            " nohup env -i sleep 300.7272 >/dev/null 2>&1 & echo x > /etc/x; exit 0"
        )
        assert (await vm.run(hide)).exit_status == 0
        async with asyncio.timeout(STEP):
            while len(_host_processes("300.7")) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert (disk / ".sim" / "upper" / "etc" / "x").exists()
        await vm.destroy()
        assert vm.state is ResourceState.CANCELED
        assert _host_processes("300.7") == []
        assert not _exists(disk)


@pytest.mark.asyncio
async def test_preemption_and_injected_death_end_an_isolated_vm(isolated: Path) -> None:
    async with aiores.Session() as session:
        mgr = session.manager("sim://?boot_delay=0.05&preempt_after=0.5&preempt_notice=0.3")
        [vm] = await _up(mgr)
        assert (await vm.run("nohup sleep 300.8181 >/dev/null 2>&1 & exit 0")).exit_status == 0
        async with asyncio.timeout(STEP):
            assert await vm.wait(ResourceState.EXPIRED) is ResourceState.EXPIRED
            while _host_processes("300.8181"):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert vm.state_detail == "preempted"
        dying = session.manager("sim://?boot_delay=0.05&die_after=0.5")
        [doomed] = await _up(dying)
        async with asyncio.timeout(STEP):
            assert await doomed.wait(ResourceState.FAILED) is ResourceState.FAILED


@pytest.mark.asyncio
async def test_the_cloud_says_which_isolation_it_has(isolated: Path) -> None:
    async with aiores.Session() as session:
        await _up(session.manager(URL))  # starts the cloud
        client = CloudClient(isolated)
        try:
            hello = await client.call("hello", start=False)
        finally:
            await client.close()
        assert hello["isolation"] == "namespaces"
        assert "overlay root" in hello["isolation_detail"]


@pytest.mark.asyncio
async def test_forced_off_vms_run_on_the_host(
    own_cloud: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIORES_SIM_ISOLATION", "none")
    async with aiores.Session() as session:
        [vm] = await _up(session.manager(URL))
        kernel_name = (await vm.run("cat /proc/sys/kernel/hostname")).stdout.strip()
        assert kernel_name == socket.gethostname()
        host_pid = (await vm.run("echo $$")).stdout.strip()
        assert int(host_pid) > 1
        client = CloudClient(own_cloud)
        try:
            hello = await client.call("hello", start=False)
        finally:
            await client.close()
        assert hello["isolation"] == "none"
        assert "on the host" in hello["isolation_detail"]
        # No VM account to switch to: the user names a VM knows are its own.
        with pytest.raises(aiores.FanOutError):
            await Group([vm]).run("true", user="daemon", check=True)
        await vm.destroy()


def test_isolation_modes_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(aiores.BadParameter, match="isolation must be one of"):
        choose("yes")
    monkeypatch.setenv("AIORES_SIM_ISOLATION", "on")
    with pytest.raises(aiores.BadParameter, match="isolation must be one of"):
        choose(None)
    monkeypatch.setenv("AIORES_SIM_ISOLATION", "none")
    assert not choose(None).on
    assert choose("auto").on  # this host can (the module is skipped where not)
    monkeypatch.delenv("AIORES_SIM_ISOLATION")
    assert requested(None) == "auto"  # the default
    assert choose(None).on


def test_sim_status_shows_the_isolation(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(SHARED_ENV, str(tmp_path))
    runner = CliRunner()
    started = runner.invoke(main, ["sim", "start"])
    assert started.exit_code == 0, started.output
    status = runner.invoke(main, ["sim", "status"])
    assert "isolation: namespaces (mount, UTS, PID; overlay root)" in status.output
    assert f"shared with every VM: {tmp_path}" in status.output
    assert runner.invoke(main, ["sim", "stop"]).exit_code == 0


@pytest.mark.asyncio
async def test_a_shared_directory_is_the_same_in_every_vm_and_on_the_host(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir()
    private.mkdir()
    (private / "file").write_text("host only\n")
    monkeypatch.setenv(SHARED_ENV, str(shared))
    async with aiores.Session() as session:
        first, second = await _up(session.manager(URL), 2)
        wrote = await first.run(f"echo from-{first.native_id} > {shared}/note")
        assert wrote.exit_status == 0, wrote.stderr
        assert (shared / "note").read_text() == f"from-{first.native_id}\n"
        (shared / "back").write_text("from the host\n")
        seen = await second.run(f"cat {shared}/note {shared}/back; ls {private} 2>&1; true")
        assert seen.stdout.splitlines()[:2] == [f"from-{first.native_id}", "from the host"]
        assert "No such file" in seen.stdout  # the rest of the host's /tmp is not the VM's
        await session.manager(URL).destroy([first, second])
    assert (shared / "note").exists()  # a VM's end leaves the shared directory alone


def test_shared_directories_are_checked(tmp_path: Path) -> None:
    assert shared_paths([str(tmp_path)]) == (str(tmp_path),)
    for bad in (["relative"], [str(tmp_path / "missing")], ["/x\0y"], [""], str(tmp_path), [3]):
        with pytest.raises(aiores.BadParameter, match="shared"):
            shared_paths(bad)


async def _login(vm: aiores.Compute, user: str, key: asyncssh.SSHKey | str) -> str:
    """``id -un`` over a connection of its own as ``user`` with ``key`` (raises if refused)."""
    assert vm.access is not None
    port = int(vm.access.rsplit(":", 1)[1])
    known = asyncssh.import_known_hosts(f"[127.0.0.1]:{port} {vm.host_keys[0]}\n")
    async with asyncssh.connect(
        "127.0.0.1", port, username=user, client_keys=[key], known_hosts=known, config=None
    ) as conn:
        done = await conn.run("/usr/bin/id -un", check=True)
        return str(done.stdout).strip()


@pytest.mark.asyncio
async def test_the_vms_own_authorized_keys_decide_logins(isolated: Path, state_dir: Path) -> None:
    session_key = str(state_dir / MANAGED_KEY)
    other = asyncssh.generate_private_key("ssh-ed25519")
    other_public = other.export_public_key().decode().strip()
    async with aiores.Session() as session:
        [vm] = await _up(session.manager(URL))
        owner = aiores.adaptor.URL.parse(vm.access or "").user or ""
        # The acquire installed the session's key for the acquiring user, as EC2 does.
        installed = (await vm.run("cat ~/.ssh/authorized_keys")).stdout
        session_public = (await asyncio.to_thread(Path(session_key + ".pub").read_text)).split()[1]
        assert session_public in installed
        # A user the bootstrap gives a key of its own logs in with that key alone.
        bootstrap = (
            "useradd -m -s /bin/sh wf && mkdir -p /home/wf/.ssh"
            f" && printf '%s\\n' 'not a key' '{other_public}' > /home/wf/.ssh/authorized_keys"
        )
        assert (await vm.run(bootstrap)).exit_status == 0
        assert await _login(vm, "wf", other) == "wf"
        with pytest.raises(asyncssh.PermissionDenied):
            await _login(vm, "wf", session_key)
        # The acquiring user's file, changed in the VM, decides its next logins.
        assert await _login(vm, owner, session_key) == owner
        replaced = await vm.run(f"printf '%s\\n' '{other_public}' > ~/.ssh/authorized_keys")
        assert replaced.exit_status == 0
        with pytest.raises(asyncssh.PermissionDenied):
            await _login(vm, owner, session_key)
        assert await _login(vm, owner, other) == owner
        # A file others may write decides nothing but a refusal (as sshd's StrictModes).
        assert (await vm.run("chmod 666 ~/.ssh/authorized_keys")).exit_status == 0
        with pytest.raises(asyncssh.PermissionDenied):
            await _login(vm, owner, other)
        assert (await vm.run("chmod 600 ~/.ssh/authorized_keys")).exit_status == 0
        assert await _login(vm, owner, other) == owner
        # No file: the keys of the acquire decide (a VM user without one, as before).
        assert (await vm.run("rm ~/.ssh/authorized_keys")).exit_status == 0
        assert await _login(vm, owner, session_key) == owner
        await vm.destroy()


@pytest.mark.asyncio
async def test_an_orphan_that_ends_in_a_vm_leaves_no_zombie(isolated: Path) -> None:
    async with aiores.Session() as session:
        [vm] = await _up(session.manager(URL))
        # Its parent gone at once, the job becomes the VM's PID 1's child, then ends.
        orphan = "(sleep 0.2919 >/dev/null 2>&1 </dev/null &) ; exit 0"
        assert (await vm.run(orphan)).exit_status == 0
        table = "ps -eo pid=,ppid=,stat=,args="
        async with asyncio.timeout(STEP):
            while "0.2919" in (await vm.run(table)).stdout:  # noqa: ASYNC110 (polled in the VM)
                await asyncio.sleep(0.05)
        rows = [line.split(None, 3) for line in (await vm.run(table)).stdout.splitlines()]
        # PID 1 reaps nothing itself: the kernel does (it ignores SIGCHLD).
        assert not [row for row in rows if row[2].startswith("Z")], rows
        assert [row[3] for row in rows if row[0] == "1"] == ["/bin/sleep 2147483647"]
        await vm.destroy()


@pytest.mark.asyncio
async def test_the_vms_tools_are_bound_where_every_vm_sees_them(isolated: Path) -> None:
    """whoami and id of a user the cloud gave the VM come from the cloud's stand-ins,
    bound at one path inside every VM: aiores itself may be installed where a VM sees
    nothing of the host (under /tmp or /home)."""
    async with aiores.Session() as session:
        [vm] = await _up(session.manager(f"{URL}&users=wf"))
        [result] = await Group([vm]).run(
            'echo "$PATH"; command -v whoami; whoami; id -un', user="wf", check=True
        )
    path, found, whoami, name = result.stdout.splitlines()
    assert path.split(":")[0] == VM_TOOLS
    assert found == f"{VM_TOOLS}/whoami"
    assert whoami == name == "wf"


@pytest.mark.asyncio
async def test_a_vms_command_holds_no_descriptor_of_the_cloud(isolated: Path) -> None:
    async with aiores.Session() as session:
        [vm] = await _up(session.manager(URL))
        # The fork server's socket passed on to a VM's programs would let them read
        # the cloud's requests or send their own (a command outside the VM).
        listing = await vm.run("ls -l /proc/$$/fd")
        assert listing.exit_status == 0
        assert "socket:" not in listing.stdout, listing.stdout
        fds = sorted(int(line.split()[-3]) for line in listing.stdout.splitlines()[1:])
        assert fds == [0, 1, 2], listing.stdout
        await vm.destroy()


def _server_children(cloud_dir: Path) -> list[psutil.Process]:
    """The live children of the cloud's fork server (VMs' PID 1s and their commands)."""
    cloud = psutil.Process(int((cloud_dir / "cloud.pid").read_text().strip()))
    servers = [p for p in cloud.children() if "_forkserver.py" in " ".join(p.cmdline())]
    assert len(servers) == 1
    return [p for p in servers[0].children() if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.asyncio
async def test_runs_cancelled_at_drawn_points_leave_no_process(isolated: Path) -> None:
    """Runs and fan-outs on isolated VMs cancelled after a drawn delay (before the
    command started, while it starts, while it runs): none of their processes lives
    on, and the fork server has no child left but the VMs' PID 1s."""
    rng = random.Random(4242)
    mark = f"{rng.randrange(10**6)}"
    async with aiores.Session() as session:
        vms = await _up(session.manager(URL), 2)
        group = Group(vms)
        assert all(r.ok for r in await group.run("true"))
        inits = {p.pid for p in _server_children(isolated)}
        for trial in range(12):
            command = f"sleep 300.{trial}{mark}"
            # A lone run, or a fan-out over both VMs.
            run = asyncio.ensure_future(group.run(command) if trial % 2 else vms[0].run(command))
            await asyncio.sleep(rng.uniform(0.0, 0.15))
            run.cancel()
            with pytest.raises(asyncio.CancelledError):
                await run
        async with asyncio.timeout(STEP):
            while _host_processes(mark):  # noqa: ASYNC110 (host processes: nothing to await)
                await asyncio.sleep(0.05)
            while {p.pid for p in _server_children(isolated)} != inits:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert [r.stdout for r in await group.run("echo still")] == ["still\n"] * 2
        await session.manager(URL).destroy(vms)


@pytest.mark.asyncio
async def test_a_vms_key_file_is_read_in_the_vm_not_through_its_links_on_the_host(
    isolated: Path, state_dir: Path
) -> None:
    """A VM user's ``~/.ssh`` made a link to an absolute path: the path is the VM's,
    as sshd in the VM would read it, never the host's file at that path."""
    session_key = str(state_dir / MANAGED_KEY)
    other = asyncssh.generate_private_key("ssh-ed25519")
    # A host directory the VM does not have (a VM's /tmp is its own).
    host_dir = Path(tempfile.mkdtemp(prefix="aiores-host-keys-", dir="/tmp"))
    (host_dir / "authorized_keys").write_text(other.export_public_key().decode())
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(shutil.rmtree, host_dir)
        session = await stack.enter_async_context(aiores.Session())
        [vm] = await _up(session.manager(URL))
        owner = aiores.adaptor.URL.parse(vm.access or "").user or ""
        linked = await vm.run(f"rm -rf ~/.ssh && ln -s {host_dir} ~/.ssh && ls {host_dir}; true")
        assert "No such file" in linked.stderr  # not in the VM
        # Not in the VM: no file, the keys of the acquire decide (the host's are not read).
        with pytest.raises(asyncssh.PermissionDenied):
            await _login(vm, owner, other)
        assert await _login(vm, owner, session_key) == owner
        # A link to a file in the VM is followed as in the VM.
        in_vm = await vm.run(
            f"mkdir -p /opt/keys && printf '%s\\n' '{other.export_public_key().decode().strip()}'"
            " > /opt/keys/authorized_keys && rm ~/.ssh && ln -s /opt/keys ~/.ssh"
        )
        assert in_vm.exit_status == 0, in_vm.stderr
        assert await _login(vm, owner, other) == owner
        await vm.destroy()


@pytest.mark.asyncio
async def test_vms_destroyed_at_drawn_points_of_their_boot_leave_no_machine(
    isolated: Path,
) -> None:
    """VMs destroyed after a drawn delay (waiting to boot, while their machine is
    made, once up): the fork server is left with no child, no VM's disk is left."""
    rng = random.Random(777)
    async with aiores.Session() as session:
        mgr = session.manager("sim://?boot_delay=0.01")
        await _up(mgr)  # the cloud and its fork server are up
        vms: list[aiores.Resource] = []
        for _ in range(6):
            made = await mgr.acquire_many(ComputeDescription(), 2)
            vms.extend(made)
            await asyncio.sleep(rng.uniform(0.0, 0.2))
            await mgr.destroy(made)
        assert all(vm.state is ResourceState.CANCELED for vm in vms)
        left = {vm.native_id for vm in await mgr.list()}
        async with asyncio.timeout(STEP):
            while len(_server_children(isolated)) != len(left):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        disks = [Path(vm.extra["disk"]) for vm in vms if vm.extra.get("disk")]
        assert disks
        assert not [d for d in disks if await asyncio.to_thread(_exists, d)]

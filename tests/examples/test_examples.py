"""Each program in ``examples/`` runs as its docstring says and prints what it should."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from .conftest import PROGRAM_TIMEOUT, Examples

#: An aiores id of a sim VM: ``[sim://...]-[vm-...]``; group 1 is the VM's own id.
SIM_ID = r"\[sim://[^\]]*\]-\[(vm-[0-9a-f]+)\]"
FAST = "sim://?boot_delay=0.1"


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_local_jobs(examples: Examples) -> None:
    out = ok(examples("local_jobs.py"))
    assert re.search(r"\]: DONE -> 'hello from a job\\n'$", out, re.M), out
    assert "array: 20/20 DONE, indices 0..19" in out
    assert re.search(r"\]: CANCELED$", out, re.M), out


def test_sim_demo(examples: Examples) -> None:
    out = ok(examples("sim_demo.py"))
    assert "20 VMs up" in out
    web = re.findall(r"^web  (vm-[0-9a-f]+)  exit 0  27$", out, re.M)
    db = re.findall(r"^db   (vm-[0-9a-f]+)  exit 0  Linux$", out, re.M)
    assert (len(web), len(db), len(set(web + db))) == (12, 8, 20), out
    assert "all 20 destroyed" in out


def test_fleet(examples: Examples) -> None:
    out = ok(examples("fleet.py", FAST))
    assert out.startswith("5 machines ACTIVE"), out
    # The file put to the web group is there on each of its machines (27 bytes);
    # each db machine ran its own command.
    web = re.findall(rf"^web  {SIM_ID}  exit 0  27$", out, re.M)
    db = re.findall(rf"^db   {SIM_ID}  exit 0  Linux$", out, re.M)
    assert (len(web), len(db), len(set(web + db))) == (3, 2, 5), out
    assert "web  3/3 ok" in out
    assert "db   2/2 ok" in out
    assert "all destroyed" in out


def test_reconnect(examples: Examples) -> None:
    vm_id = ok(examples("reconnect.py", "start", FAST)).strip()
    match = re.fullmatch(SIM_ID, vm_id)
    assert match, vm_id
    native = match[1]
    try:
        # The program that acquired it has ended; the VM lives on.
        (vm,) = examples.vms("reconnect")
        assert (vm["id"], vm["state"]) == (native, "ACTIVE")

        # A second program finds it by its id and runs a command on that very VM
        # (its disk is its home directory); it ends with the command's exit status.
        command = "echo hello from $PWD; echo bye >&2; exit 7"
        run = examples("reconnect.py", "run", vm_id, "--", "sh", "-c", command)
        said = (run.returncode, run.stdout, run.stderr)
        assert said == (7, f"hello from {vm['extra']['disk']}\n", "bye\n")
    finally:
        stop = examples("reconnect.py", "stop", vm_id)
    assert ok(stop) == f"destroyed [sim://]-[{native}]\n"
    assert not examples.vms()

    again = examples("reconnect.py", "stop", vm_id)
    assert again.returncode == 2
    assert "has ended already (CANCELED)" in again.stderr
    unknown = examples("reconnect.py", "run", "[sim://]-[vm-0000000000]", "--", "true")
    assert unknown.returncode == 2
    assert "has no resource" in unknown.stderr
    assert "Traceback" not in again.stderr + unknown.stderr


def test_experiment(examples: Examples, tmp_path: Path) -> None:
    results = tmp_path / "results"
    out = ok(examples("experiment.py", str(results), "--cloud", FAST))
    assert out.startswith("4 machines ACTIVE"), out
    assert "bootstrapped" in out
    assert "4 machines destroyed" in out

    # Each worker's result file was fetched from that worker (it names its disk).
    workers = sorted(results.glob("worker.txt.sim-vm-*"))
    assert len(workers) == 3, sorted(p.name for p in results.iterdir())
    worker_ids = []
    for path in workers:
        native = path.name.removeprefix("worker.txt.sim-")
        lines = path.read_text().splitlines()
        assert lines[0] == "sum 300000"
        assert re.fullmatch(rf"in /.*/vms/{native}/experiment", lines[1]), lines
        assert re.search(rf"^  worker       {SIM_ID}  {path.name}: sum 300000; in ", out, re.M)
        worker_ids.append(native)

    # The coordinator's names every worker.
    text = (results / "coordinator.txt").read_text()
    named = re.findall(SIM_ID, text)
    assert text.startswith("coordinating "), text
    assert sorted(named) == sorted(worker_ids), text
    assert re.search(rf"^  coordinator  {SIM_ID}  coordinator.txt: coordinating ", out, re.M)


def test_experiment_failed(examples: Examples, tmp_path: Path) -> None:
    """Machines that fail to boot end the experiment in one line; none is left."""
    done = examples("experiment.py", str(tmp_path), "--cloud", FAST + "&boot_failure=1")
    assert done.returncode == 1, f"{done.stdout}\n{done.stderr}"
    assert done.stderr.startswith("experiment failed: 4 machine(s) of 4 selected failed to boot")
    assert "Traceback" not in done.stderr


def test_experiment_interrupted(examples: Examples, tmp_path: Path) -> None:
    """Ctrl-C while the machines boot: every one is destroyed before the program ends."""
    slow = "sim://?boot_delay=3"
    program = subprocess.Popen(
        examples.argv("experiment.py", str(tmp_path), "--cloud", slow),
        env=examples.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + PROGRAM_TIMEOUT
        while len(examples.vms()) < 4 and program.poll() is None:
            assert time.monotonic() < deadline, "the machines were never acquired"
            time.sleep(0.05)
        program.send_signal(signal.SIGINT)
        out, err = program.communicate(timeout=PROGRAM_TIMEOUT)
    finally:
        if program.poll() is None:
            program.kill()
            program.communicate()
    assert program.returncode == 130, f"{out}\n{err}"
    assert "interrupted" in err
    assert "ACTIVE" not in out
    # The fleet's teardown finished before the program did.
    assert not examples.vms()


def member_lines(out: str) -> list[tuple[int, str, int, int]]:
    return [
        (int(i), state, int(code), int(square))
        for i, state, code, j, square in re.findall(
            r"^  member (\d+): (\w+) +exit (\d+)  square of (\d+) is (\d+)$", out, re.M
        )
        if i == j
    ]


def expected_members() -> list[tuple[int, str, int, int]]:
    return [(i, "FAILED" if i % 4 == 3 else "DONE", int(i % 4 == 3), i * i) for i in range(8)]


def test_bulk_jobs_local(examples: Examples) -> None:
    out = ok(examples("bulk_jobs.py"))
    assert out.startswith("submitted 8 jobs to local://, at most 3 at once"), out
    assert member_lines(out) == expected_members(), out
    assert "6 DONE, 2 FAILED" in out
    assert "reaped; the job service still knows 0 of them" in out


def test_bulk_jobs_ssh(examples: Examples, tmp_path: Path) -> None:
    """The same array on a sim VM over ssh://, with the usual ~/.ssh credentials."""
    vm_id = ok(examples("reconnect.py", "start", FAST)).strip()
    try:
        (vm,) = examples.vms("reconnect")
        # A home of its own: the key the VM authorizes, and the VM's host key.
        ssh = tmp_path / "home" / ".ssh"
        ssh.mkdir(mode=0o700, parents=True)
        (ssh / "id_ed25519").write_bytes((examples.state / "keys" / "id_ed25519").read_bytes())
        (ssh / "id_ed25519").chmod(0o600)
        port = vm["extra"]["port"]
        (ssh / "known_hosts").write_text(f"[127.0.0.1]:{port} {vm['host_key']}\n")
        env = examples.env(HOME=str(tmp_path / "home"))
        env.pop("SSH_AUTH_SOCK", None)

        out = ok(examples("bulk_jobs.py", vm["access"], env=env))
        assert out.startswith(f"submitted 8 jobs to {vm['access']}, at most 3 at once"), out
        assert member_lines(out) == expected_members(), out
        assert "reaped; the job service still knows 0 of them" in out
        # Reaping removed each job's directory on the VM.
        assert not list((Path(vm["extra"]["disk"]) / ".aiores" / "jobs").iterdir())
    finally:
        ok(examples("reconnect.py", "stop", vm_id))

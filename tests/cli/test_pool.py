"""``aiores pool run``: commands of a file or of standard input on an elastic sim pool."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import threading
from pathlib import Path

from .conftest import COMMAND_TIMEOUT, Cli
from .test_streaming import first_line

URL = "sim://?boot_delay=0.05"
#: A result line: line number, status, machine, output.
RESULT = re.compile(r"line (\d+): (exit -?\d+|[A-Za-z]+: .*?) on (vm-[0-9a-f]+|\?)(?:: (.*))?$")


def _commands(path: Path) -> dict[int, str]:
    """20 commands, the 12th failing, between comments and blank lines: line -> expected."""
    lines = ["# twenty commands, one failing", ""]
    expected: dict[int, str] = {}
    for i in range(20):
        if i == 11:
            lines.append("echo broken >&2; exit 3")
            expected[len(lines)] = "exit 3"
        else:
            lines.append(f"sleep 0.05; echo out {i}")
            expected[len(lines)] = f"out {i}"
        if i % 5 == 4:
            lines.append("   # indented comment")
            lines.append("   ")
    path.write_text("\n".join(lines) + "\n")
    return expected


def test_a_file_with_one_failing_command_exits_1_and_names_it(cli: Cli, tmp_path: Path) -> None:
    file = tmp_path / "commands.txt"
    expected = _commands(file)
    done = cli(
        "pool", "run", URL, str(file), "--max", "4", "-t", "pool-file", "--idle-timeout", "0"
    )
    assert done.returncode == 1, done.stderr
    seen: dict[int, tuple[str, str, str | None]] = {}
    for text in done.stdout.splitlines():
        match = RESULT.fullmatch(text)
        assert match, text
        seen[int(match[1])] = (match[2], match[3], match[4])
    assert sorted(seen) == sorted(expected)  # every command once, by its line number
    machines = {machine for _, machine, _ in seen.values()}
    assert 1 <= len(machines) <= 4
    (failing,) = (line for line, want in expected.items() if want == "exit 3")
    for line, (status, _, output) in seen.items():
        if line == failing:
            assert (status, output) == ("exit 3", "broken")  # its standard error, stdout empty
        else:
            assert (status, output) == ("exit 0", expected[line])
    assert f"pool: 20 commands of FILE {str(file)!r}: 19 ok, 1 failed: line {failing} (exit 3)" in (
        done.stderr
    )
    assert "released every machine of the pool" in done.stderr
    assert cli.live("pool-file") == []


def test_commands_from_standard_input_as_json(cli: Cli) -> None:
    commands = "echo one\n\n# skipped\nprintf 'two\\nlines'\n"
    done = cli("pool", "run", URL, "--json", "--max", "2", "-t", "pool-stdin", input=commands)
    assert done.returncode == 0, done.stderr
    objects = sorted((json.loads(line) for line in done.stdout.splitlines()), key=str)
    by_line = {o["line"]: o for o in objects}
    assert sorted(by_line) == [1, 4]
    assert by_line[1]["command"] == "echo one"
    assert (by_line[1]["index"], by_line[1]["stdout"], by_line[1]["exit_status"]) == (0, "one\n", 0)
    assert (by_line[4]["index"], by_line[4]["stdout"]) == (1, "two\nlines")
    assert all(o["host"].startswith("vm-") and o["error"] is None for o in objects)
    assert "2 commands of standard input: 2 ok, 0 failed" in done.stderr
    assert cli.live("pool-stdin") == []


def test_revoked_machines_are_drained_and_every_command_completes_once(cli: Cli) -> None:
    # Every machine is revoked 0.5 s after it boots, 1.5 s before it goes.
    url = "sim://?boot_delay=0.05&preempt_after=0.5&preempt_notice=1.5"
    commands = "".join(f"sleep 0.2; echo {i}\n" for i in range(12))
    done = cli("pool", "run", url, "--max", "2", "-t", "pool-revoked", input=commands)
    assert done.returncode == 0, done.stderr
    seen = [RESULT.fullmatch(line) for line in done.stdout.splitlines()]
    assert sorted((int(m[1]), m[2], m[4]) for m in seen if m) == [
        (i + 1, "exit 0", str(i)) for i in range(12)
    ]
    assert len({m[3] for m in seen if m}) > 2  # revoked machines were replaced
    revoked = re.search(r"released every machine of the pool \((\d+) revoked", done.stderr)
    assert revoked, done.stderr
    assert int(revoked[1]) >= 1, done.stderr
    assert cli.live("pool-revoked") == []


def test_empty_standard_input_is_bad_input(cli: Cli) -> None:
    done = cli("pool", "run", URL, "-t", "pool-empty", input="\n# nothing\n")
    assert done.returncode == 2
    assert done.stderr == (
        "aiores: BadParameter: standard input holds no command (only blank lines and # comments)\n"
    )
    assert done.stdout == ""
    assert cli.live("pool-empty") == []


def test_progress_lines_when_not_a_terminal(cli: Cli) -> None:
    done = cli("pool", "run", URL, "--progress", "0.05", "-t", "pool-progress", input="sleep 0.5\n")
    assert done.returncode == 0, done.stderr
    progress = [line for line in done.stderr.splitlines() if line.startswith("pool: machines")]
    assert progress, done.stderr
    assert re.fullmatch(
        r"pool: machines \d+ booting, \d+ busy, \d+ idle, \d+ draining; "
        r"commands [01]/1 done, [01] running, [01] queued, 0 failed",
        progress[-1],
    ), progress
    assert any("1 busy" in line and "1 running" in line for line in progress), progress
    assert cli.live("pool-progress") == []


def test_ctrl_c_releases_every_machine(cli: Cli, tmp_path: Path) -> None:
    file = tmp_path / "slow.txt"
    file.write_text("echo first\n" + "sleep 60\n" * 4)
    proc = subprocess.Popen(
        cli.argv("pool", "run", URL, str(file), "--min", "2", "--max", "3", "-t", "pool-int"),
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert RESULT.fullmatch(first_line(proc).rstrip("\n"))
        assert cli.live("pool-int")  # the pool holds machines while the sleeps run
        proc.send_signal(signal.SIGINT)
        out, errs = proc.communicate(timeout=COMMAND_TIMEOUT)
    except BaseException:
        proc.kill()  # a failed check above: the command must not outlive the test
        proc.communicate()  # and its pipes are closed
        raise
    assert proc.returncode == 130, errs
    assert out == ""
    assert "interrupted: 1 commands finished, 4 stopped or not started" in errs
    assert "released every machine of the pool" in errs
    assert cli.live("pool-int") == []


def test_a_live_line_on_a_terminal_and_results_still_on_standard_output(cli: Cli) -> None:
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            cli.argv("pool", "run", URL, "-t", "pool-tty"),
            env={**cli.env, "TERM": "xterm"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
        )
        os.close(follower)
        follower = -1
        shown = bytearray()
        reader = threading.Thread(target=_drain, args=(leader, shown))
        reader.start()
        try:
            out, _ = proc.communicate("sleep 0.8; echo done\n", timeout=COMMAND_TIMEOUT)
        finally:
            proc.kill()
            proc.wait()
            reader.join(COMMAND_TIMEOUT)
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0, shown
    assert RESULT.fullmatch(out.rstrip("\n")), out  # not taken into the terminal's stream
    screen = shown.decode(errors="replace")
    assert "pool: machines" in screen  # the live line, redrawn in place
    assert "1 busy" in screen
    assert "released every machine of the pool" in screen
    assert cli.live("pool-tty") == []


def _drain(fd: int, into: bytearray) -> None:
    """Read the terminal until its last writer has gone."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the command ended
            return
        if not chunk:
            return
        into.extend(chunk)

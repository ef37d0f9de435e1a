"""Bad input to ``aiores``: exit status 2, one line on standard error, nothing done.

Every case is refused before anything is acquired, submitted or looked up: the sim
cloud holds no VM afterwards and the journal records no call and no object. Most
cases fail before a session opens, so the module takes a few seconds.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from aiores_sim._protocol import socket_path

from .conftest import COMMAND_TIMEOUT, Cli

JOB = "[local://]-[j-000000000000]"
#: A local file that exists, for put.
HERE = str(Path(__file__).resolve())

CASES = [
    # a tag with a control character would be acquired and shown as "xy"
    (["provision", "sim://", "-t", "x\x01y"], "control characters"),
    (["provision", "sim://", "-t", "x\x1b[2Jy"], "control characters"),
    # an empty tag selects nothing: refused as provision refuses it
    (["deprovision", "-t", ""], "--tag must be a non-empty str"),
    (["ls", "-t", ""], "--tag must be a non-empty str"),
    (["ls", "-t", "a\x7fb"], "control characters"),
    (["run", "-t", "", "--", "true"], "--tag must be a non-empty str"),
    (["put", "-t", "", HERE, "x"], "--tag must be a non-empty str"),
    (["get", "-t", "", "x", "x"], "--tag must be a non-empty str"),
    # URLs and ids: an unknown scheme, control characters
    (["provision", "nope://"], "IncorrectURL: no adaptor for nope://"),
    (["jobs", "ls", "nope://"], "IncorrectURL: no adaptor for nope://"),
    (["jobs", "ls", "local://\x01"], "IncorrectURL: 'local://\\x01' contains"),
    (["jobs", "wait", "[local://]-[j\x01]"], "job id must be an id without control characters"),
    (["jobs", "cancel", "[local://]-[j\x01]"], "job id must be an id without control"),
    (["jobs", "wait", "[nope://]-[j-1]"], "IncorrectURL: no adaptor for nope://"),
    (["jobs", "wait", "j-1"], "'j-1' is not a job id like"),
    (["deprovision", "[sim://]-[vm\x01]"], "machine id must be an id without control"),
    # options are checked before any id is looked up or any job submitted
    (["jobs", "wait", "--timeout", "nan", JOB], "timeout must be None or a finite number"),
    (["jobs", "submit", "--timeout", "nan", "--wait", "local://", "--", "true"], "timeout must"),
    (["jobs", "ls", "--session", "a\x01"], "a name without control characters"),
    # images and templates: empty, huge (an unknown one is DoesNotExist: exit status 1)
    (["provision", "sim://", "--template", ""], "--template must be a non-empty str"),
    (["provision", "sim://", "--template", "a" * 5000], "--template is 5000 characters long"),
    (["provision", "sim://", "--image", ""], "--image must be a non-empty str"),
    (["provision", "sim://", "--image", "ubuntu\x01"], "a name without control characters"),
    # the demo checks its options before it starts anything
    (["demo", "--boot-delay", "nan"], "--boot-delay must be seconds"),
    (["demo", "--boot-delay", "1&boot_failure=1"], "--boot-delay must be seconds"),
    (["demo", "--web", "-1"], "--web must be an int from 0"),
    (["demo", "--web", "0", "--db", "0"], "nothing to boot"),
    # pool run: its options, then its input, are checked before a machine is asked for
    (["pool", "run", "nope://", HERE], "IncorrectURL: no adaptor for nope://"),
    (["pool", "run", "sim://?boot_delay=abc", HERE], "sim:// option boot_delay='abc'"),
    (["pool", "run", "sim://", "--min", "3", "--max", "2", HERE], "--max (2) must not be below"),
    (["pool", "run", "sim://", "--min", "-1", HERE], "--min must be an int from 0"),
    (["pool", "run", "sim://", "--max", "0", HERE], "--max must be an int from 1"),
    (["pool", "run", "sim://", "--slots", "0", HERE], "--slots must be an int >= 1"),
    (["pool", "run", "sim://", "--idle-timeout", "nan", HERE], "--idle-timeout must be"),
    (["pool", "run", "sim://", "--timeout", "-1", HERE], "--timeout must be None or"),
    (["pool", "run", "sim://", "-t", "a,b", HERE], "--tag must be a tag without white space"),
    (["pool", "run", "sim://", "/nonexistent/commands"], "FILE '/nonexistent/commands' cannot"),
    (["pool", "run", "sim://", "/"], "FILE '/' cannot be read: Is a directory"),
    (["pool", "run", "sim://", "/dev/null"], "FILE '/dev/null' holds no command"),
    # click's own usage errors: its message, in one line
    (["provision"], "Missing argument 'URL'."),
    (["provision", "sim://", "--count", "abc"], "Invalid value for '--count'"),
    (["bogus"], "No such command 'bogus'."),
    (["--bogus"], "No such option '--bogus'"),
    (["jobs", "bogus"], "No such command 'bogus'."),
    (["deprovision"], "name the machines: --tag TAG or their ids"),
]


def _vms(cli: Cli) -> list[dict[str, object]]:
    """Every VM the module's sim cloud holds."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(COMMAND_TIMEOUT)
        sock.connect(str(socket_path(cli.sim)))
        sock.sendall(json.dumps({"id": 1, "op": "list", "args": {"tags": []}}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, "the sim cloud closed the connection"
            data += chunk
    answer = json.loads(data)
    assert answer["ok"], answer
    vms: list[dict[str, object]] = answer["result"]
    return vms


def _recorded(cli: Cli) -> tuple[int, int]:
    """How many calls (intents) and objects the journal holds (none before it exists)."""
    if not (cli.state / "journal.sqlite").exists():
        return 0, 0
    ((intents,),) = cli.journal("SELECT COUNT(*) FROM intents") or [(0,)]
    ((objects,),) = cli.journal("SELECT COUNT(*) FROM objects") or [(0,)]
    return intents, objects


@pytest.mark.parametrize(
    ("args", "words"), CASES, ids=[repr(" ".join(args))[:60] for args, _ in CASES]
)
def test_bad_input_exits_2_with_one_line_and_does_nothing(
    cli: Cli, args: list[str], words: str
) -> None:
    done = cli(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("aiores: ")
    assert words in lines[0]
    assert done.stdout == ""
    assert _vms(cli) == []
    assert _recorded(cli) == (0, 0)


def test_an_unknown_template_is_does_not_exist(cli: Cli) -> None:
    """Well-formed but unknown: the cloud says so (exit status 1), and nothing is left."""
    done = cli("provision", "sim://", "--template", "huge", "-t", "unknown-template")
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("aiores: DoesNotExist: sim:// has no template 'huge'")
    assert _vms(cli) == []


@pytest.mark.parametrize("args", [["--help"], ["provision", "-h"], ["jobs", "--help"]])
def test_help_is_as_before(cli: Cli, args: list[str]) -> None:
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: ")
    assert "Options:" in done.stdout
    assert done.stderr == ""

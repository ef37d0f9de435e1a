"""Every public entry point checks its input: one rule per kind of value, everywhere.

Each bad input must raise :class:`aiores.BadParameter` (:class:`aiores.IncorrectURL`
for a URL) whose message names the field, before anything is allocated or sent; each
good edge value (``timeout=0``, a timedelta) must be accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import math
import re
import resource
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

import aiores
from aiores import (
    AWSContext,
    BadParameter,
    ComputeDescription,
    IncorrectURL,
    JobDescription,
    SSHContext,
    StorageDescription,
)
from aiores.adaptor import Bucket, RetryPolicy, validate
from aiores.testing import FakeClock, FakePlugin, FakeSSHPlugin

NAN = math.nan
INF = math.inf
DESC = ComputeDescription(image="fake-linux")
JOB = JobDescription(executable="/bin/true")


def raises(field: str, kind: type[BadParameter] = BadParameter) -> Any:
    """``pytest.raises(kind)`` whose message names ``field`` (literally)."""
    return pytest.raises(kind, match=re.escape(field))


# -- the validators ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (0, 0.0), (0.0, 0.0), (2, 2.0), (datetime.timedelta(0), 0.0),
     (datetime.timedelta(minutes=1), 60.0)],
)  # fmt: skip
def test_timeout_accepts(value: object, expected: float | None) -> None:
    assert validate.timeout(value, "timeout") == expected


@pytest.mark.parametrize(
    "value", [NAN, INF, -INF, -1, -0.001, True, "5", 10**400, datetime.timedelta(seconds=-1)]
)
def test_timeout_refuses(value: object) -> None:
    with raises("wait.timeout must be"):
        validate.timeout(value, "wait.timeout")


@pytest.mark.parametrize("value", [NAN, INF, 0, -1, False, "1", None, 10**400])
def test_seconds_refuses(value: object) -> None:
    with raises("walltime must be"):
        validate.seconds(value, "walltime")


def test_seconds_accepts() -> None:
    assert validate.seconds(datetime.timedelta(hours=1), "d") == 3600.0
    assert validate.seconds(0.5, "d") == 0.5
    assert validate.seconds(0, "grace", zero=True) == 0.0


@pytest.mark.parametrize("value", [0, -1, 1.0, True, "1", None, 11])
def test_count_refuses(value: object) -> None:
    with raises("count must be an int from 1 to 10"):
        validate.count(value, "count", max=10)


@pytest.mark.parametrize("value", ["no", "yes", 0, 1, None])
def test_flag_refuses(value: object) -> None:
    with raises("hold must be True or False"):
        validate.flag(value, "hold")


@pytest.mark.parametrize("value", ["a\0b", "\ud800", "", 5, b"x", None])
def test_text_refuses(value: object) -> None:
    with raises("name"):
        validate.text(value, "name")


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"A B": "1"}, "'A B'"),
        ({"A;touch x": "1"}, "'A;touch x'"),
        ({"1A": "1"}, "'1A'"),
        ({"": "1"}, "''"),
        ({"A=B": "1"}, "'A=B'"),
        ({5: "1"}, "5"),
        ({"A": 5}, "env['A']"),
        ({"A": "\0"}, "env['A']"),
        ({"A": "\udcff"}, "env['A']"),
        (["A"], "env must be a mapping"),
    ],
)
def test_env_refuses(env: object, field: str) -> None:
    with raises(field):
        validate.env(env, "env")


@pytest.mark.parametrize(
    ("command", "field"),
    [
        (None, "command must be"),
        (5, "command must be"),
        (b"ls", "command must be"),
        ("", "command must be a non-blank str"),
        ("  ", "command must be a non-blank str"),
        ([], "command must be"),
        ([""], "command[0]"),
        (["echo", 5], "command[1]"),
        (["echo", "a\0b"], "command[1]"),
        ("echo \ud800", "command"),
    ],
)
def test_command_refuses(command: object, field: str) -> None:
    with raises(field):
        validate.command(command)


def test_command_accepts() -> None:
    assert validate.command("true") == "true"
    assert validate.command(["echo", ""]) == ("echo", "")


# -- constructors ------------------------------------------------------------------------

CONSTRUCTORS: list[tuple[str, Callable[[], object], str]] = [
    ("tofu-str", lambda: SSHContext(trust_on_first_use="no"), "trust_on_first_use"),  # type: ignore[arg-type]
    ("ssh-user", lambda: SSHContext(user=5), "SSHContext.user"),  # type: ignore[arg-type]
    ("ssh-user-nul", lambda: SSHContext(user="a\0"), "SSHContext.user"),
    ("ssh-host-keys", lambda: SSHContext(host_keys=5), "SSHContext.host_keys"),  # type: ignore[arg-type]
    ("ssh-host-key-item", lambda: SSHContext(host_keys={"h": [5]}), "host_keys['h'][0]"),  # type: ignore[list-item]
    ("ssh-key-files", lambda: SSHContext(key_files=[5]), "SSHContext.key_files[0]"),  # type: ignore[list-item]
    ("ssh-known-hosts-nul", lambda: SSHContext(known_hosts="a\0b"), "known_hosts[0]"),
    ("ssh-jump", lambda: SSHContext(jump_host=5), "SSHContext.jump_host"),  # type: ignore[arg-type]
    ("ssh-passphrase", lambda: SSHContext(passphrase=5), "SSHContext.passphrase"),  # type: ignore[arg-type]
    ("ssh-connect-nan", lambda: SSHContext(connect_timeout=NAN), "SSHContext.connect_timeout"),
    ("ssh-login-inf", lambda: SSHContext(login_timeout=INF), "SSHContext.login_timeout"),
    ("ssh-keepalive", lambda: SSHContext(keepalive_interval="5"), "keepalive_interval"),  # type: ignore[arg-type]
    ("ssh-sessions", lambda: SSHContext(max_sessions=0), "SSHContext.max_sessions"),
    ("ssh-scope", lambda: SSHContext(scope=5), "SSHContext.scope"),  # type: ignore[arg-type]
    ("aws-region", lambda: AWSContext(region=5), "AWSContext.region"),  # type: ignore[arg-type]
    ("aws-endpoint", lambda: AWSContext(endpoint_url=5), "AWSContext.endpoint_url"),  # type: ignore[arg-type]
    ("aws-profile-nul", lambda: AWSContext(profile="p\0"), "AWSContext.profile"),
    ("aws-key", lambda: AWSContext(access_key_id=["x"]), "AWSContext.access_key_id"),  # type: ignore[arg-type]
    ("session-contexts", lambda: aiores.Session(contexts=5), "contexts"),  # type: ignore[arg-type]
    ("session-context", lambda: aiores.Session(contexts=[5]), "contexts[0]"),  # type: ignore[list-item]
    ("session-contexts-str", lambda: aiores.Session(contexts="ssh"), "contexts"),  # type: ignore[arg-type]
    ("session-clock", lambda: aiores.Session(clock=5), "clock"),  # type: ignore[arg-type]
    ("session-journal", lambda: aiores.Session(journal=5), "journal"),  # type: ignore[arg-type]
    ("session-journal-nul", lambda: aiores.Session(journal="j\0"), "journal"),
    ("cleanup-nan", lambda: aiores.Session(cleanup_timeout=NAN), "cleanup_timeout"),
    ("cleanup-inf", lambda: aiores.Session(cleanup_timeout=INF), "cleanup_timeout"),
    ("duration-nan", lambda: ComputeDescription(duration=NAN), "ComputeDescription.duration"),
    ("duration-inf", lambda: ComputeDescription(duration=INF), "ComputeDescription.duration"),
    ("duration-huge", lambda: ComputeDescription(duration=10**400), "duration"),
    ("tag-nul", lambda: ComputeDescription(tags={"a\0"}), "ComputeDescription.tags"),
    ("tag-control", lambda: ComputeDescription(tags={"x\x01y"}), "ComputeDescription.tags"),
    ("tag-escape", lambda: StorageDescription(tags={"\x1b[31m"}), "StorageDescription.tags"),
    ("walltime-nan", lambda: JobDescription(executable="x", walltime=NAN), "walltime"),
    ("walltime-inf", lambda: JobDescription(executable="x", walltime=INF), "walltime"),
    ("env-space", lambda: JobDescription(executable="x", environment={"A B": "1"}), "'A B'"),
    (
        "env-semicolon",
        lambda: JobDescription(executable="x", environment={"A;touch x": "1"}),
        "'A;touch x'",
    ),
    ("env-nul", lambda: JobDescription(executable="x", environment={"A": "\0"}), "environment"),
    ("arg-nul", lambda: JobDescription(executable="x", arguments=["a\0"]), "arguments[0]"),
    ("arg-surrogate", lambda: JobDescription(executable="x", arguments=["\ud800"]), "arguments"),
    ("exe-surrogate", lambda: JobDescription(executable="\udcff"), "executable"),
    ("exe-nul", lambda: JobDescription(executable="/bin/true\0"), "executable"),
    ("stdin-surrogate", lambda: JobDescription(executable="x", stdin="\ud800"), "stdin"),
    ("shell-nul", lambda: JobDescription.shell("echo \0"), "command"),
    ("group", lambda: aiores.Group(5), "resources"),  # type: ignore[arg-type]
    ("bucket-nan", lambda: Bucket(NAN, 1.0), "Bucket.capacity"),
    ("retry-nan", lambda: RetryPolicy(base=NAN), "RetryPolicy.base"),
]


@pytest.mark.parametrize(
    ("make", "field"), [c[1:] for c in CONSTRUCTORS], ids=[c[0] for c in CONSTRUCTORS]
)
def test_constructors_refuse(make: Callable[[], object], field: str) -> None:
    with raises(field):
        make()


def test_secrets_are_not_shown() -> None:
    with pytest.raises(BadParameter) as caught:
        AWSContext(secret_access_key=b"hunter2")  # type: ignore[arg-type]
    assert "hunter2" not in str(caught.value)


def test_constructors_accept_edges() -> None:
    assert aiores.Session(cleanup_timeout=datetime.timedelta(seconds=3)).cleanup_timeout == 3.0  # type: ignore[arg-type]
    assert ComputeDescription(duration=datetime.timedelta(hours=1)).duration == 3600.0
    assert JobDescription(executable="x", walltime=datetime.timedelta(1)).walltime == 86400.0
    ctx = SSHContext(host_keys={"h": "ssh-ed25519 AAAA"}, trust_on_first_use=True)
    assert ctx.host_keys == {"h": ("ssh-ed25519 AAAA",)}
    assert SSHContext(connect_timeout=datetime.timedelta(seconds=2)).connect_timeout == 2.0  # type: ignore[arg-type]
    assert JobDescription(executable="x", environment={"_A1": ""}).environment == {"_A1": ""}


@pytest.mark.parametrize(
    "url",
    ["sim://\n", "sim://\r", "local://\t", "sim://\0", " sim://", "sim://\ud800",
     "ec2://us-east-1?poll=nan", "ec2://us-east-1?poll=inf", "ec2://us-east-1?poll=-1",
     "ec2://us-east-1?batch=1.5", "local://?grace=nan", "local://?grace=inf"],
)  # fmt: skip
def test_urls_refuse(url: str) -> None:
    from aiores_ec2._options import parse_options as ec2_options
    from aiores_local._options import parse_options as local_options

    def parse() -> object:
        parsed = aiores.URL.parse(url)
        return (ec2_options if parsed.scheme == "ec2" else local_options)(parsed)

    with pytest.raises(IncorrectURL):
        parse()


def test_urls_refuse_every_white_space_and_control_character() -> None:
    # ASCII URLs are checked by a fast rule, others by the general one: both refuse
    # the same characters.
    for code in [*range(0x80), 0x85, 0xA0, 0x2028, 0x3000, 0x200B]:
        char = chr(code)
        unfit = char.isspace() or not char.isprintable()
        text = f"sim://h{char}st"
        if unfit:
            with pytest.raises(IncorrectURL, match="white space or a control"):
                aiores.URL.parse(text)
        else:
            refused = ""
            try:
                aiores.URL.parse(text)
            except IncorrectURL as exc:  # refused for another reason, if at all
                refused = str(exc)
            assert "white space" not in refused, repr(char)


def test_a_url_made_with_a_list_for_its_query_still_reads() -> None:
    url = aiores.URL(scheme="sim", query=[("a", "1")])  # type: ignore[arg-type]
    assert str(url) == "sim://?a=1"


def test_a_url_reads_back_as_it_was_written() -> None:
    for text in ["sim://", "ssh://us%40er@host:22/p", "ec2://us-east-1?a=1&b=x+y", "ssh://[::1]:2"]:
        url = aiores.URL.parse(text)
        assert aiores.URL.parse(str(url)) == url
        assert str(url) == str(url.replace())  # an equal URL reads the same


def test_url_options_name_the_field() -> None:
    from aiores_ec2._options import parse_options

    with pytest.raises(IncorrectURL, match="poll must be a finite number"):
        parse_options(aiores.URL.parse("ec2://us-east-1?poll=nan"))


# -- waiting -----------------------------------------------------------------------------

BAD_TIMEOUTS = [NAN, INF, -1, "5", True]


@pytest.mark.asyncio
@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
async def test_waits_refuse_bad_timeouts(
    session: aiores.Session, fake: FakePlugin, timeout: Any
) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    js = session.job_service("fake://")
    job = await js.submit(JOB)
    array = await js.submit_array(JOB, count=2)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: vm.wait(timeout=timeout),
        lambda: job.wait(timeout=timeout),
        lambda: array.wait(timeout=timeout),
        lambda: aiores.wait_any([vm, job], timeout=timeout),  # type: ignore[type-var]
        lambda: anext(aiores.as_completed([job], timeout=timeout)),
    ]
    for call in calls:
        with raises("timeout must be"):
            async with asyncio.timeout(5):  # a hang would be the bug
                await call()


@pytest.mark.asyncio
async def test_zero_and_timedelta_timeouts_are_accepted(
    session: aiores.Session, fake: FakePlugin, fake_ssh: FakeSSHPlugin
) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    job = await session.job_service("fake://").submit(JOB)
    for timeout in (0, 0.0, datetime.timedelta(0)):
        with pytest.raises(aiores.Timeout):  # not BadParameter: "now or never"
            await vm.wait(timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(aiores.Timeout):
            await job.wait(timeout=timeout)  # type: ignore[arg-type]
        with pytest.raises(aiores.Timeout):
            await aiores.wait_any([vm, job], timeout=timeout)  # type: ignore[arg-type, type-var]
    with pytest.raises(aiores.Timeout):
        await job.wait(timeout=datetime.timedelta(milliseconds=10))  # type: ignore[arg-type]
    # run(timeout=0) obeys the rule wait(timeout=0) does: accepted.
    assert (await vm.run("true", timeout=0)).ok
    assert (await vm.run("true", timeout=datetime.timedelta(seconds=1))).ok  # type: ignore[arg-type]
    assert len(await aiores.Group([vm]).run("true", timeout=0, deadline=0.0, check=False)) == 1


@pytest.mark.asyncio
async def test_wait_any_refuses_what_cannot_be_waited_for(
    session: aiores.Session, fake: FakePlugin
) -> None:
    with raises("objects[0]"):
        await aiores.wait_any([5])  # type: ignore[type-var]
    with raises("objects"):
        await aiores.wait_any(5)  # type: ignore[arg-type]
    job = await session.job_service("fake://").submit(JOB)
    with raises("state"):
        await aiores.wait_any([job], state="DONE")  # type: ignore[arg-type]
    with raises("objects[1]"):
        await anext(aiores.as_completed([job, None]))  # type: ignore[type-var]


# -- managers and job services -----------------------------------------------------------


@pytest.mark.asyncio
async def test_manager_calls_refuse(session: aiores.Session, fake: FakePlugin) -> None:
    mgr = session.manager("fake://")
    for target, field in [(None, "target"), (5, "target"), ([5], "target[0]"), (b"x", "target")]:
        with raises(field):
            await mgr.destroy(target)  # type: ignore[arg-type]
    with raises("count must be an int from 1"):
        await mgr.acquire_many(DESC, 10**9)
    with raises("tags"):
        await mgr.list(tags=[5])  # type: ignore[list-item]
    assert fake.cloud.resources == {}  # nothing was asked of the backend


@contextlib.contextmanager
def memory_capped(extra: int = 1 << 30) -> Iterator[None]:
    """Address space limited to what this process has plus ``extra`` bytes: allocating a
    billion of anything fails at once (MemoryError) instead of swapping."""
    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * resource.getpagesize()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.asyncio
async def test_job_service_calls_refuse(session: aiores.Session, fake: FakePlugin) -> None:
    js = session.job_service("fake://")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"count": 10**9}, "count must be an int from 1 to 1000000"),
        ({"count": validate.MAX_COUNT + 1}, "count must be an int from 1 to 1000000"),
        ({"count": 0}, "count"),
        ({"count": 2.0}, "count"),
        ({"indices": range(10**9)}, "indices"),
        ({"indices": [0, -1]}, "indices"),
        ({"indices": [0, "1"]}, "indices"),
        ({"indices": 5}, "indices"),
        ({"count": 2, "max_parallel": 0}, "max_parallel"),
        ({"count": 2, "max_parallel": True}, "max_parallel"),
    ]
    for kwargs, field in cases:
        with memory_capped(), raises(field):
            await js.submit_array(JOB, **kwargs)
    with raises("hold must be True or False"):
        await js.submit(JOB, hold="no")  # type: ignore[arg-type]
    assert fake.cloud.jobs == {}  # nothing was submitted


# -- running commands --------------------------------------------------------------------

RUNS: list[tuple[str, dict[str, Any], str]] = [
    ("none", {"command": None}, "command"),
    ("empty", {"command": ""}, "command"),
    ("blank", {"command": " \n"}, "command"),
    ("empty-seq", {"command": []}, "command"),
    ("int-arg", {"command": ["echo", 5]}, "command[1]"),
    ("nul-arg", {"command": ["echo", "a\0b"]}, "command[1]"),
    ("surrogate", {"command": "echo \ud800"}, "command"),
    ("surrogate-arg", {"command": ["echo", "\udcff"]}, "command[1]"),
    ("env-int", {"env": {"A": 5}}, "env['A']"),
    ("env-space", {"env": {"A B": "1"}}, "'A B'"),
    ("env-semicolon", {"env": {"A;touch x": "1"}}, "'A;touch x'"),
    ("env-nul", {"env": {"A": "\0"}}, "env['A']"),
    ("env-surrogate", {"env": {"A": "\ud800"}}, "env['A']"),
    ("env-list", {"env": ["A=1"]}, "env"),
    ("stdin-int", {"stdin": 5}, "stdin"),
    ("stdin-surrogate", {"stdin": "\ud800"}, "stdin"),
    ("timeout-nan", {"timeout": NAN}, "timeout"),
    ("timeout-inf", {"timeout": INF}, "timeout"),
    ("timeout-negative", {"timeout": -1}, "timeout"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("kwargs", "field"), [r[1:] for r in RUNS], ids=[r[0] for r in RUNS])
async def test_runs_refuse(
    session: aiores.Session,
    fake: FakePlugin,
    fake_ssh: FakeSSHPlugin,
    kwargs: dict[str, Any],
    field: str,
) -> None:
    """Compute.run and Group.run apply one rule (nothing reaches the runner)."""
    vm = await session.manager("fake://").acquire(DESC)  # PENDING, with its access URL
    sent = len(fake_ssh.commands)
    kwargs = {"command": "true", **kwargs}
    command = kwargs.pop("command")
    with raises(field):
        await vm.run(command, **kwargs)
    if "stdin" not in kwargs:  # a group's run takes none
        with raises(field):
            await aiores.Group([vm]).run(command, **kwargs)
        with raises(field):
            aiores.Group([vm]).run_stream(command, **kwargs)
    assert len(fake_ssh.commands) == sent


@pytest.mark.asyncio
async def test_group_options_refuse(
    session: aiores.Session, fake: FakePlugin, fake_ssh: FakeSSHPlugin
) -> None:
    vm = await session.manager("fake://").acquire(DESC)
    group = aiores.Group([vm])
    cases: list[tuple[dict[str, Any], str]] = [
        ({"deadline": NAN}, "deadline"),
        ({"deadline": INF}, "deadline"),
        ({"timeout": NAN}, "timeout"),
        ({"limit": 0}, "limit"),
        ({"limit": 1.5}, "limit"),
        ({"check": "no"}, "check"),
        ({"user": 5}, "user"),
        ({"user": "a\0"}, "user"),
    ]
    for kwargs, field in cases:
        with raises(field):
            await group.run("true", **kwargs)
    with raises("args[0]"):
        await group.copy_and_run(__file__, [5])  # type: ignore[list-item]
    with raises("args"):
        await group.copy_and_run(__file__, "a b")
    with raises("remote"):
        await group.get(5, "x")  # type: ignore[arg-type]
    with raises("timeout"):
        await group.put(__file__, "x", timeout=NAN)
    assert fake_ssh.commands == []


@pytest.mark.asyncio
async def test_fleet_calls_refuse(session: aiores.Session, fake: FakePlugin) -> None:
    async with session.fleet() as fleet:
        with raises("count"):
            fleet.provision("fake://", DESC, count=0)
        with raises("count"):
            fleet.provision("fake://", DESC, count=True)
        cases: list[tuple[dict[str, Any], str]] = [
            ({"timeout": NAN}, "timeout"),
            ({"timeout": INF}, "timeout"),
            ({"replace_failed": True}, "replace_failed"),
            ({"replace_failed": -1}, "replace_failed"),
        ]
        for kwargs, field in cases:
            with raises(field):
                await fleet.wait(**kwargs)
        with raises("tags[0]"):
            await fleet.wait(5)  # type: ignore[arg-type]
    assert fake.cloud.resources == {}


@pytest.mark.asyncio
async def test_fake_clock_session_still_opens(clock: FakeClock) -> None:
    async with aiores.Session(journal=None, clock=clock) as session:
        assert session.clock is clock


@pytest.mark.asyncio
async def test_recover_and_reap_refuse_bad_timeouts(session: aiores.Session) -> None:
    for timeout in (NAN, INF, -1):
        with raises("timeout must be"):
            await session.recover(timeout=timeout)
        with raises("timeout must be"):
            await session.reap(timeout=timeout)

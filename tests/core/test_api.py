"""The public face: __all__ sorted, complete and importable; states; descriptions; URLs."""

from __future__ import annotations

import datetime
import importlib
import types

import pytest

import aiores
from aiores import ComputeDescription, JobDescription, JobState, ResourceState
from aiores._url import URL, join_id, native_id, split_id


def test_all_is_sorted_complete_and_importable() -> None:
    # Sorted isort-style (as ruff keeps it): CONSTANTS, then Classes, then functions.
    assert aiores.__all__ == sorted(aiores.__all__, key=lambda n: (not n.isupper(), n))
    assert len(set(aiores.__all__)) == len(aiores.__all__)
    for name in aiores.__all__:
        assert getattr(aiores, name) is not None
    public = {
        name
        for name, value in vars(aiores).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public - set(aiores.__all__) == set()


@pytest.mark.parametrize("module", ["aiores.adaptor", "aiores.testing"])
def test_public_modules_import(module: str) -> None:
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert hasattr(mod, name)


def test_core_imports_no_backend_library() -> None:
    source_names = [m for m in vars(aiores).values() if isinstance(m, types.ModuleType)]
    assert all(not m.__name__.startswith(("asyncssh", "aioboto3")) for m in source_names)


def test_exception_tree() -> None:
    assert issubclass(aiores.Timeout, TimeoutError)
    assert issubclass(aiores.BadParameter, ValueError)
    assert issubclass(aiores.IncorrectURL, aiores.BadParameter)
    assert issubclass(aiores.HostKeyError, aiores.AuthenticationFailed)
    for name in aiores.__all__:
        value = getattr(aiores, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, aiores.AioresError)
    group = aiores.FanOutError("2 of 3 hosts failed", [aiores.NoSuccess("a")], results=[1, 2, 3])
    assert isinstance(group, ExceptionGroup)
    assert group.results == (1, 2, 3)
    assert group.derive([aiores.NoSuccess("b")]).results == (1, 2, 3)


def test_states_final_and_transitions() -> None:
    assert {s for s in ResourceState if s.final} == {
        ResourceState.DONE,
        ResourceState.FAILED,
        ResourceState.EXPIRED,
        ResourceState.CANCELED,
    }
    assert {s for s in JobState if s.final} == {JobState.DONE, JobState.FAILED, JobState.CANCELED}
    assert ResourceState.PENDING.can_become(ResourceState.ACTIVE)
    assert not ResourceState.ACTIVE.can_become(ResourceState.PENDING)
    assert not ResourceState.CANCELED.can_become(ResourceState.ACTIVE)
    assert JobState.RUNNING.can_become(JobState.SUSPENDED)
    assert JobState.SUSPENDED.can_become(JobState.RUNNING)
    assert JobState.HELD.can_become(JobState.QUEUED)
    # A polled backend may first see a started job SUSPENDED (it ran between two polls).
    assert JobState.QUEUED.can_become(JobState.SUSPENDED)
    assert JobState.HELD.can_become(JobState.SUSPENDED)
    assert not JobState.SUSPENDED.can_become(JobState.QUEUED)
    assert ResourceState.NEW.reachable(ResourceState.ACTIVE)
    assert not ResourceState.ACTIVE.reachable(ResourceState.PENDING)
    assert not JobState.DONE.reachable(JobState.RUNNING)
    assert JobState.QUEUED.reachable(JobState.DONE)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"executable": ""}, "executable must be a non-empty str"),
        ({"executable": 5}, "executable must be a non-empty str, not int 5"),
        ({"executable": "/bin/echo", "arguments": "hi there"}, "not one str"),
        (
            {"executable": "/bin/echo", "arguments": ["a", 1]},
            r"arguments\[1\] must be a str, not int 1",
        ),
        ({"executable": "/bin/echo", "environment": {"A": 1}}, r"environment\['A'\] must be a str"),
        ({"executable": "/bin/echo", "environment": ["A"]}, "environment must be a mapping"),
        (
            {"executable": "/bin/echo", "walltime": -1},
            "walltime must be a finite number of seconds > 0",
        ),
        ({"executable": "/bin/echo", "cores": 1.5}, "cores must be an int >= 1, not float 1.5"),
        ({"executable": "/bin/echo", "stdin": 3}, "stdin must be bytes, str or None"),
        ({"executable": "/bin/echo", "capture_limit": -1}, "capture_limit must be an int"),
        ({"executable": "/bin/echo", "working_directory": 3}, "working_directory must be"),
    ],
)
def test_bad_job_descriptions(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(aiores.BadParameter, match=message):
        JobDescription(**kwargs)  # type: ignore[arg-type]


def test_job_description_normalises() -> None:
    desc = JobDescription(
        executable="/bin/echo",
        arguments=["a", "b c"],
        walltime=datetime.timedelta(minutes=2),
        stdin="data",
    )
    assert desc.arguments == ("a", "b c")
    assert desc.walltime == 120.0
    assert desc.stdin_bytes == b"data"
    shell = JobDescription.shell("echo $HOME", name="x")
    assert (shell.executable, shell.arguments, shell.name) == ("/bin/sh", ("-c", "echo $HOME"), "x")
    with pytest.raises(aiores.BadParameter, match="must be a finite number of seconds > 0"):
        desc.replace(walltime=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image": 3}, "image must be a str, not int 3"),
        ({"tags": [""]}, "each tag must be a non-empty str"),
        ({"tags": ["a b"]}, "without spaces"),
        ({"tags": 7}, "tags must be an iterable"),
        ({"cpus": 0}, "cpus must be an int >= 1, not int 0"),
        ({"cpus": True}, "cpus must be an int >= 1, not bool True"),
        ({"ready": "http"}, "ready must be 'ssh' or None"),
    ],
)
def test_bad_compute_descriptions(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(aiores.BadParameter, match=message):
        ComputeDescription(**kwargs)  # type: ignore[arg-type]


def test_a_str_tag_is_one_tag() -> None:
    assert ComputeDescription(tags="web").tags == frozenset({"web"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost", "is not a URL"),
        ("ssh://user:secret@host", "carries a password"),
        ("ssh://host:99999", "not a valid URL"),
        ("1ssh://host", "not a URL|invalid scheme"),
        ("ssh://ho st", "white space"),
        (42, "must be a str"),
    ],
)
def test_bad_urls(text: object, message: str) -> None:
    with pytest.raises(aiores.IncorrectURL, match=message):
        URL.parse(text)  # type: ignore[arg-type]


def test_urls_parse_and_print() -> None:
    url = URL.parse("slurm+ssh://Alice@Login.Example:2222/path?x=1")
    assert (url.adaptor, url.transport, url.user, url.host, url.port) == (
        "slurm",
        "ssh",
        "Alice",
        "login.example",
        2222,
    )
    assert url.params == {"x": "1"}
    assert str(url) == "slurm+ssh://Alice@login.example:2222/path?x=1"
    assert URL.parse(str(url)) == url
    rid = join_id("sim://", "vm-3")
    assert rid == "[sim://]-[vm-3]"
    assert split_id(rid) == ("sim://", "vm-3")
    assert split_id("vm-3") is None
    here = URL.parse("sim://")
    assert native_id("[sim://?boot_delay=30]-[vm-3]", here, "resource") == "vm-3"
    assert native_id("vm-3", here, "resource") == "vm-3"
    with pytest.raises(aiores.BadParameter, match="belongs to ssh://h, not to sim://"):
        native_id("[ssh://h]-[vm-3]", here, "resource")


def test_parsed_urls_are_kept_and_bad_ones_refused_each_time() -> None:
    text = "ssh://Bob@Cached.Example:2200/x?y=1"
    first = URL.parse(text)
    assert URL.parse(text) is first  # parsed once: a URL is immutable
    assert URL.parse(text + "&z=2") is not first
    for _ in range(2):  # an error is never kept in place of a URL
        with pytest.raises(aiores.IncorrectURL, match="white space"):
            URL.parse("ssh://cached example")

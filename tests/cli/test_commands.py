"""Commands that packages add through the ``aiores.commands`` entry point group."""

from __future__ import annotations

import importlib.metadata
import sys
import types

import click
import pytest
from click.testing import CliRunner

from aiores._cli import COMMANDS_GROUP, main


@click.command()
def hello() -> None:
    """Say hello."""
    click.echo("hello from a plugin")


def _entry(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name=name, value=value, group=COMMANDS_GROUP)


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> list[importlib.metadata.EntryPoint]:
    """The entry points the command sees (instead of the installed ones)."""
    entries: list[importlib.metadata.EntryPoint] = []
    module = types.ModuleType("aiores_test_commands")
    module.hello = hello  # type: ignore[attr-defined]
    module.not_a_command = len  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)

    def entry_points(*, group: str) -> list[importlib.metadata.EntryPoint]:
        assert group == COMMANDS_GROUP
        return entries

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(main, "_plugins", {})
    return entries


def test_the_sim_adaptor_adds_demo_and_sim() -> None:
    listed = CliRunner().invoke(main, ["--help"]).output
    assert "demo " in listed
    assert "sim " in listed


def test_a_plugin_command_runs(plugins: list[importlib.metadata.EntryPoint]) -> None:
    plugins.append(_entry("hello", "aiores_test_commands:hello"))
    assert "Say hello." in CliRunner().invoke(main, ["--help"]).output
    done = CliRunner().invoke(main, ["hello"])
    assert done.exit_code == 0, done.output
    assert done.output == "hello from a plugin\n"


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("aiores_no_such_module:hello", "could not be loaded: ModuleNotFoundError"),
        ("aiores_test_commands:missing", "could not be loaded: AttributeError"),
        ("aiores_test_commands:not_a_command", "is not a click command"),
    ],
)
def test_a_broken_plugin_command_is_reported_and_the_others_work(
    plugins: list[importlib.metadata.EntryPoint], value: str, said: str
) -> None:
    plugins.append(_entry("broken", value))
    listed = CliRunner().invoke(main, ["--help"])
    assert listed.exit_code == 0, listed.output
    assert f"aiores: the command 'broken' ({value}) {said}" in listed.stderr
    assert "provision" in listed.stdout
    done = CliRunner().invoke(main, ["broken"])
    assert done.exit_code == 2
    assert "No such command 'broken'" in done.output
    assert CliRunner().invoke(main, ["ls", "--help"]).exit_code == 0


def test_a_built_in_command_keeps_its_name(plugins: list[importlib.metadata.EntryPoint]) -> None:
    plugins.append(_entry("ls", "aiores_test_commands:hello"))
    done = CliRunner().invoke(main, ["ls", "--help"])
    assert "hello" not in done.output
    assert "Examples:" in done.output


def test_a_name_two_packages_claim_is_reported(
    plugins: list[importlib.metadata.EntryPoint],
) -> None:
    plugins.append(_entry("hello", "aiores_test_commands:hello"))
    plugins.append(_entry("hello", "aiores_other:hello"))
    done = CliRunner().invoke(main, ["hello"])
    assert done.exit_code == 2
    assert "claimed by aiores_test_commands:hello, aiores_other:hello" in done.stderr

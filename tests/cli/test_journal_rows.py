"""Jobs that no service answers for any more are listed from their journal records."""

from __future__ import annotations

from aiores._cli._admin import _row_json


def row(state: str, data: str | dict[str, object] | None) -> dict[str, object]:
    return {
        "id": "[ssh://h]-[j-1]",
        "native_id": "j-1",
        "url": "ssh://h",
        "state": state,
        "detail": "",
        "data": data,
        "created": 1.0,
    }


def test_a_failed_jobs_recorded_exit_code_is_listed() -> None:
    # The journal's objects() gives ``data`` as its JSON text.
    assert _row_json(row("FAILED", '{"exit_code": 4}'))["exit_code"] == 4
    assert _row_json(row("FAILED", {"exit_code": 4}))["exit_code"] == 4


def test_done_means_exit_code_0_and_unknown_stays_unknown() -> None:
    assert _row_json(row("DONE", None))["exit_code"] == 0
    assert _row_json(row("CANCELED", {}))["exit_code"] is None
    assert _row_json(row("CANCELED", "not json"))["exit_code"] is None

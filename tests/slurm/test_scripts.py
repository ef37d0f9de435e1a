"""The Slurm adaptor's tables and parsers, without a cluster."""

from __future__ import annotations

from aiores import JobDescription, JobState
from aiores_slurm import exit_code, state_of
from aiores_slurm._scripts import batch_script, id_words, parse_files, parse_sacct, parse_squeue


def test_state_table() -> None:
    assert state_of("PENDING", "JobHeldUser") is JobState.HELD
    assert state_of("PENDING", "Priority") is JobState.QUEUED
    assert state_of("CG", "None") is JobState.RUNNING
    assert state_of("TIMEOUT", "TimeLimit") is JobState.FAILED
    assert state_of("OOM", "") is JobState.FAILED
    assert state_of("PR", "") is JobState.FAILED
    assert state_of("CA", "") is JobState.CANCELED
    assert state_of("S", "") is JobState.SUSPENDED
    assert state_of("SOMETHING_NEW", "") is JobState.QUEUED
    assert exit_code(768) == 3
    assert exit_code(9) == -9
    assert exit_code(0) == 0


def test_squeue_rows_expand_pending_array_tasks() -> None:
    text = (
        "12_[0-3,7%2]|PENDING|JobArrayTaskLimit|0|debug|a|aiores:t-1|\n"
        "13|FAILED|NonZeroExitCode|768|debug|b|x|y|\n"
    )
    rows = parse_squeue(text)
    assert [r.id for r in rows] == ["12_0", "12_1", "12_2", "12_3", "12_7", "13"]
    assert rows[0].token == "t-1"
    assert rows[-1].comment == "x|y"
    info = rows[-1].info()
    assert info.state is JobState.FAILED
    assert info.exit_code == 3
    assert info.state_detail == "FAILED (NonZeroExitCode)"


def test_files_answer_and_batch_script_quoting() -> None:
    found = parse_files("J 5 3 1\nO out 10 4\naGkK\n.\nJ 6 - 0\n")
    assert found["5"].exit == 3
    assert found["5"].stdout is not None
    assert found["5"].stdout.startswith(b"hi\n")
    assert b"truncated" in found["5"].stdout
    assert found["6"].exit is None
    script = batch_script(JobDescription(executable="echo", arguments=["$(reboot)", "a b"]), None)
    assert "echo '$(reboot)' 'a b'" in script


def test_id_words_and_sacct_answer() -> None:
    ids = ["5", "12_0", "12_1", "12_2", "12_5", "7_3", "12_7", "12_8", "6", "5"]
    assert id_words(ids) == ["5", "6", "12_[0-2,5,7-8]", "7_3"]
    infos = parse_sacct(
        "1|FAILED|3:0\n2|COMPLETED|0:0\n3|CANCELLED by 0|0:0\n4_1|FAILED|0:9\n"
        "5|RUNNING|0:0\n6.batch|COMPLETED|0:0\n"
    )
    assert sorted(infos) == ["1", "2", "3", "4_1"]  # not final, steps: left out
    assert [(i.state, i.exit_code) for i in infos.values()] == [
        (JobState.FAILED, 3),
        (JobState.DONE, 0),
        (JobState.CANCELED, None),
        (JobState.FAILED, -9),
    ]
    assert "from sacct" in infos["3"].state_detail

"""The commit-record protocol of ``app/skyferry/adapters/stores/_commit.py``, on a fake store.

The stores that use it (DynamoDB, Cosmos DB) are tested against their services in
``tests/integration/adapters/``; these tests pin the protocol's decisions themselves,
including the races a service test cannot stage on demand (an abort that loses to the
commit point).
"""

from __future__ import annotations

import pytest

from skyferry.adapters.stores._commit import (
    ABORTED,
    COMMITTED,
    PENDING,
    Record,
    settle,
    write,
)


class Commit:
    """A fake large commit: records the steps it is asked to take; ``fail`` names one that raises."""

    def __init__(self, fail: str = "", error: BaseException | None = None) -> None:
        self.steps: list[str] = []
        self.fail = fail
        self.error = error or RuntimeError(f"{fail} failed")

    def step(self, name: str) -> None:
        self.steps.append(name)
        if name == self.fail:
            raise self.error

    def begin(self) -> None:
        self.step("begin")

    def lock(self) -> None:
        self.step("lock")

    def commit_point(self) -> None:
        self.step("commit_point")

    def roll_forward(self) -> None:
        self.step("roll_forward")

    def roll_back(self) -> None:
        self.step("roll_back")


def test_a_commit_locks_then_commits_then_rolls_forward() -> None:
    commit = Commit()
    write(commit)
    assert commit.steps == ["begin", "lock", "commit_point", "roll_forward"]


@pytest.mark.parametrize("fail", ["lock", "commit_point"])
def test_a_failure_before_the_commit_point_rolls_back_and_is_raised(fail: str) -> None:
    commit = Commit(fail)
    with pytest.raises(RuntimeError, match=f"{fail} failed"):
        write(commit)
    assert commit.steps[-1] == "roll_back"


def test_a_failed_roll_back_does_not_hide_the_error_that_stopped_the_commit() -> None:
    class Both(Commit):
        def roll_back(self) -> None:
            self.steps.append("roll_back")
            raise OSError("roll-back failed too")

    commit = Both("lock")
    with pytest.raises(RuntimeError, match="lock failed"):
        write(commit)
    assert commit.steps == ["begin", "lock", "roll_back"]


def test_an_interrupted_writer_cleans_nothing_and_a_failure_after_the_commit_point_rolls_nothing_back() -> None:
    interrupted = Commit("lock", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        write(interrupted)
    assert interrupted.steps == ["begin", "lock"]
    late = Commit("roll_forward")
    with pytest.raises(RuntimeError):
        write(late)
    assert late.steps == ["begin", "lock", "commit_point", "roll_forward"]


class Lock:
    """A fake lock of another commit: its record (then what a second read finds) and whether an abort wins."""

    def __init__(self, *records: Record | None, abort_wins: bool = True) -> None:
        self.records = list(records)
        self.abort_wins = abort_wins
        self.steps: list[str] = []

    def record(self) -> Record | None:
        self.steps.append("record")
        return self.records.pop(0)

    def abort(self) -> bool:
        self.steps.append("abort")
        return self.abort_wins

    def roll_forward(self) -> None:
        self.steps.append("roll_forward")

    def roll_back(self) -> None:
        self.steps.append("roll_back")


NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("lock", "settled", "steps"),
    [
        (Lock(Record(COMMITTED, 0)), True, ["record", "roll_forward"]),
        (Lock(Record(ABORTED, 0)), True, ["record", "roll_back"]),
        (Lock(None), True, ["record"]),
        (Lock(Record(PENDING, NOW - 119)), False, ["record"]),
        (Lock(Record(PENDING, NOW - 120)), True, ["record", "abort", "roll_back"]),
        (
            Lock(Record(PENDING, NOW - 121), Record(COMMITTED, 0), abort_wins=False),
            True,
            ["record", "abort", "record", "roll_forward"],
        ),
        (
            Lock(Record(PENDING, NOW - 121), Record(ABORTED, 0), abort_wins=False),
            True,
            ["record", "abort", "record", "roll_back"],
        ),
        (Lock(Record(PENDING, NOW - 121), None, abort_wins=False), True, ["record", "abort", "record"]),
    ],
    ids=[
        "committed-rolled-forward",
        "aborted-rolled-back",
        "gone-nothing-to-do",
        "young-pending-conflicts",
        "stale-pending-aborted-and-rolled-back",
        "abort-lost-to-the-commit-point-rolls-forward",
        "abort-lost-to-another-abort-rolls-back",
        "abort-lost-and-finished-meanwhile",
    ],
)
def test_a_writer_settles_a_lock_by_its_record(lock: Lock, settled: bool, steps: list[str]) -> None:
    assert settle(lock, 120.0, now=lambda: NOW) is settled
    assert lock.steps == steps

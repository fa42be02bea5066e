"""`tests.waiting.wait_until`: the one way the tests wait for a condition."""

from __future__ import annotations

import itertools
import time

import pytest

from tests.waiting import wait_until


def test_returns_the_first_truthy_value() -> None:
    values = iter([None, 0, "", {"state": "done"}])
    assert wait_until(lambda: next(values), 5.0, "a value") == {"state": "done"}


def test_times_out_naming_what_it_waited_for_and_the_last_value() -> None:
    calls = itertools.count(1)
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"waiting for the job to finish; last value: \[\]") as info:
        wait_until(lambda: [] if next(calls) else None, 0.2, "the job to finish")
    assert time.monotonic() - started < 2.0
    assert "timed out after 0.2 s" in str(info.value)


def test_a_described_lazily_message_is_built_only_on_timeout() -> None:
    built: list[str] = []

    def describe() -> str:
        built.append("log")
        return "the server (log: ...)"

    assert wait_until(lambda: True, 1.0, describe) is True
    assert built == []
    with pytest.raises(AssertionError, match=r"waiting for the server \(log: \.\.\.\)"):
        wait_until(lambda: False, 0.05, describe)
    assert built == ["log"]


def test_an_error_in_the_predicate_ends_the_wait_at_once() -> None:
    def dead() -> bool:
        raise AssertionError("the process exited")

    started = time.monotonic()
    with pytest.raises(AssertionError, match="the process exited"):
        wait_until(dead, 30.0, "a process that died")
    assert time.monotonic() - started < 1.0

from __future__ import annotations

import itertools

import pytest

from shared.states import ALLOWED_TRANSITIONS, TERMINAL_STATES, JobState, sources_of


def test_terminal_states_have_no_way_out() -> None:
    for state in TERMINAL_STATES:
        assert state.is_terminal
        assert ALLOWED_TRANSITIONS[state] == frozenset()


def test_the_lifecycle_of_architecture_md() -> None:
    assert JobState.RUNNING in ALLOWED_TRANSITIONS[JobState.QUEUED]
    assert JobState.CANCELED in ALLOWED_TRANSITIONS[JobState.QUEUED]
    assert JobState.QUEUED in ALLOWED_TRANSITIONS[JobState.RUNNING]  # lease expired, attempts left
    for end in TERMINAL_STATES:
        assert end in ALLOWED_TRANSITIONS[JobState.RUNNING]
    assert JobState.SUCCEEDED not in ALLOWED_TRANSITIONS[JobState.QUEUED]


@pytest.mark.parametrize(("source", "target"), list(itertools.product(JobState, JobState)))
def test_sources_of_agrees_with_the_table(source: JobState, target: JobState) -> None:
    assert (source in sources_of(target)) == (target in ALLOWED_TRANSITIONS[source])


def test_one_spelling() -> None:
    assert [state.value for state in JobState] == ["queued", "running", "succeeded", "failed", "canceled"]

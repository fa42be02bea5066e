from __future__ import annotations

import itertools

import pytest

from shared.states import ALLOWED_TRANSITIONS, TERMINAL_STATES, JobState, can_transition, sources_of


def test_terminal_states_have_no_way_out() -> None:
    for state in TERMINAL_STATES:
        assert state.is_terminal
        assert ALLOWED_TRANSITIONS[state] == frozenset()


def test_the_lifecycle_of_architecture_md() -> None:
    assert can_transition(JobState.QUEUED, JobState.RUNNING)
    assert can_transition(JobState.QUEUED, JobState.CANCELED)
    assert can_transition(JobState.RUNNING, JobState.QUEUED)  # lease expired, attempts left
    for end in TERMINAL_STATES:
        assert can_transition(JobState.RUNNING, end)
    assert not can_transition(JobState.QUEUED, JobState.SUCCEEDED)


@pytest.mark.parametrize(("source", "target"), list(itertools.product(JobState, JobState)))
def test_sources_of_agrees_with_the_table(source: JobState, target: JobState) -> None:
    assert (source in sources_of(target)) == can_transition(source, target)


def test_one_spelling() -> None:
    assert [state.value for state in JobState] == ["queued", "running", "succeeded", "failed", "canceled"]

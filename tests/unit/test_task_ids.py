"""One task-id rule: every layer that takes a task id (the URL route, the job spec's force_task_id, the storage key,
the repository) accepts and refuses the same ids, from one table of cases (shared.job.ids)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from scheduler.routes import checked_task_id
from shared.db import Database, NewJob, make_engine, upgrade
from shared.errors import InputError
from shared.job.ids import MAX_TASK_ID_LENGTH, is_valid_task_id, new_a1111_task_id, new_task_id
from shared.job.spec import SpecLimits, parse_job
from shared.storage import artifact_key

ASSET = f"asset:{'0123456789abcdef' * 4}"

VALID = [
    "task(img2img-ABC1234)",  # the A1111 form
    "a",
    "a" * MAX_TASK_ID_LENGTH,
    "A-z_0.9:()",
    "job-0123456789abcdef0123456789abcdef",
    "...",  # only `.` and `..` are path steps
]
INVALID = [
    "",
    "a" * (MAX_TASK_ID_LENGTH + 1),
    "has space",
    "a/b",
    "a\\b",
    "ünïcode",
    ".",
    "..",
    "line\n",
    "a?b",
    "a#b",
    "a%2Fb",
]
CASES = [(task_id, True) for task_id in VALID] + [(task_id, False) for task_id in INVALID]


def _route_refusal(task_id: str) -> str | None:
    """The error code the route layer refuses `task_id` with, or None when it accepts it."""
    try:
        checked_task_id(task_id)
    except InputError as exc:
        return exc.code
    return None


def _spec_refusal(task_id: str) -> list[tuple[str, str]] | None:
    try:
        parse_job({"init_images": [ASSET], "force_task_id": task_id}, SpecLimits())
    except InputError as exc:
        return [(problem.field, problem.code) for problem in exc.problems]
    return None


def _storage_refusal(task_id: str) -> str | None:
    try:
        artifact_key("alice", task_id, 0, "result", 0)
    except ValueError as exc:
        return str(exc)
    return None


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path_factory.mktemp('ids') / 'rf.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield Database(engine)
    engine.dispose()


def _repository_refusal(db: Database, task_id: str) -> str | None:
    try:
        db.jobs.create_or_get("alice", NewJob(task_id, {}, "0" * 64, queue="rf.default.interactive", max_attempts=1))
    except InputError as exc:
        return exc.code
    return None


@pytest.mark.parametrize(("task_id", "valid"), CASES, ids=[repr(task_id)[:40] for task_id, _ in CASES])
def test_every_layer_accepts_and_refuses_the_same_ids(db: Database, task_id: str, valid: bool) -> None:
    assert is_valid_task_id(task_id) is valid
    assert _route_refusal(task_id) == (None if valid else "invalid_task_id")
    assert _spec_refusal(task_id) == (None if valid else [("force_task_id", "invalid_task_id")])
    assert (_storage_refusal(task_id) is None) is valid
    assert _repository_refusal(db, task_id) == (None if valid else "invalid_task_id")
    if valid:
        assert db.jobs.get("alice", task_id).task_id == task_id


def test_minted_ids_are_valid_and_distinct() -> None:
    minted = {new_task_id() for _ in range(50)} | {new_task_id("rf-") for _ in range(50)}
    assert len(minted) == 100
    assert all(is_valid_task_id(task_id) for task_id in minted)
    assert all(re.fullmatch(r"(job|rf)-[0-9a-f]{32}", task_id) for task_id in minted)
    a1111 = {new_a1111_task_id() for _ in range(50)}
    assert all(is_valid_task_id(task_id) and re.fullmatch(r"task\(img2img-[A-Z0-9]{7}\)", task_id) for task_id in a1111)


def test_every_layer_names_the_same_rule() -> None:
    # The messages all come from shared.job.ids.task_id_problem, so a client reads one rule wherever it trips.
    messages = []
    with pytest.raises(InputError) as route:
        checked_task_id("a b")
    messages.append(route.value.message)
    with pytest.raises(InputError) as spec:
        parse_job({"init_images": [ASSET], "force_task_id": "a b"}, SpecLimits())
    messages.append(spec.value.message)
    messages.append(_storage_refusal("a b") or "")
    assert all(f"1-{MAX_TASK_ID_LENGTH} characters of A-Z a-z 0-9 . _ - : ( )" in message for message in messages)

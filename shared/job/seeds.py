"""Seed -1 on the farm: derived from the job's UUID, so every attempt of a job renders the same pixels
(docs/farm-design.md "A job's request as stored"). The worker resolves it before rendering; the A1111 routes show
the same numbers in a job's info before it ran."""

from __future__ import annotations

import uuid
from typing import Final

SEED_MODULUS: Final = 4294967294  # the seeds stay inside the range the webui draws its random seeds from


def resolved_seeds(seed: int, subseed: int, job_id: uuid.UUID) -> tuple[int, int]:
    """(seed, subseed) with each -1 replaced by a number derived from the job's UUID (subseed from its next 32 bits)."""
    return (
        seed if seed != -1 else job_id.int % SEED_MODULUS,
        subseed if subseed != -1 else (job_id.int >> 32) % SEED_MODULUS,
    )

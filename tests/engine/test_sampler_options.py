"""The sampler options through the engine on the tiny model: the SDE samplers' Brownian-tree noise per seed, churn,
the schedules by name, and the infotext entries the reference writes (docs/engine.md "Sampler options")."""

from __future__ import annotations

import numpy as np

from shared.infotext import parse_infotext
from worker.engine.options import Options
from worker.engine.results import Processed

from .conftest import SEED, Render, pixels


def _params(processed: Processed, index: int = 0) -> dict[str, str]:
    return parse_infotext(processed.infotexts[index])[2]


def _diff(a: Processed, b: Processed, ia: int = 0, ib: int = 0) -> float:
    return float(np.abs(pixels(a.images[ia]) - pixels(b.images[ib])).mean())


def test_an_sde_samplers_image_depends_on_its_seed_not_on_the_batch(render: Render) -> None:
    _, batch = render(sampler_name="DPM++ 2M SDE", batch_size=2, steps=5)
    _, alone = render(sampler_name="DPM++ 2M SDE", seed=SEED + 1, steps=5)
    # Slot 1 of the batch has seed SEED + 1: same start noise and same Brownian trees as the single render.
    assert _diff(batch, alone, 1, 0) < 0.5
    assert _diff(batch, alone, 0, 0) > 1.0
    assert _params(batch)["Schedule type"] == "Exponential"


def test_churn_from_the_job_is_used_but_not_written_and_an_option_is_written(render: Render) -> None:
    _, plain = render(sampler_name="Euler", steps=5)
    _, churned = render(sampler_name="Euler", steps=5, s_churn=1.0)
    assert _diff(plain, churned) > 0.0
    assert "Sigma churn" not in _params(churned)
    _, by_option = render(sampler_name="Euler", steps=5, options=Options(s_churn=1.0))
    assert float(_params(by_option)["Sigma churn"]) == 1.0
    assert _diff(churned, by_option) == 0.0  # the same churn either way


def test_named_schedules_render_and_are_written(render: Render) -> None:
    for schedule, label in (("normal", "Normal"), ("kl_optimal", "KL Optimal"), ("beta", "Beta")):
        _, processed = render(sampler_name="DPM++ 2M", scheduler=schedule, steps=4)
        params = _params(processed)
        assert params["Schedule type"] == label
    assert params["Beta schedule alpha"] == "0.6"


def test_ddim_eta_is_written_as_eta_ddim(render: Render) -> None:
    _, processed = render(sampler_name="DDIM CFG++", steps=6, eta=0.5)
    assert _params(processed)["Eta DDIM"] == "0.5"
    assert processed.images[0].size[0] > 0

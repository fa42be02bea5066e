"""The webui option `randn_source` is accepted with all three values wherever it is validated (semantics §3.1)."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.a1111.schema import Img2ImgRequest
from scheduler.a1111.tenant_options import settable
from scheduler.a1111.translate import job_body
from shared.errors import InputError
from shared.job.spec import SpecLimits, parse_job
from worker.engine.options import DEFAULT_OPTIONS

LIMITS = SpecLimits(max_image_pixels=4096 * 4096, max_inline_image_bytes=1024, max_batch_size=16, max_n_iter=64)
ASSET = "asset:" + "0123456789abcdef" * 4


def _job(**overrides: Any) -> dict[str, Any]:
    return dict(parse_job({"init_images": [ASSET], "override_settings": overrides}, LIMITS).override_settings)


@pytest.mark.parametrize("source", ["GPU", "CPU", "NV"])
def test_every_source_is_accepted_and_reaches_the_options(source: str) -> None:
    overrides = _job(randn_source=source)
    assert overrides == {"randn_source": source}
    assert DEFAULT_OPTIONS.with_overrides(overrides).randn_source == source
    assert settable({"randn_source": source}) == {"randn_source": source}  # the tenant's stored options


@pytest.mark.parametrize("source", ["nv", "TPU", "", 1])
def test_other_values_are_refused_naming_the_option(source: object) -> None:
    with pytest.raises(InputError) as caught:
        _job(randn_source=source)
    assert [p.field for p in caught.value.problems] == ["override_settings.randn_source"]
    with pytest.raises(InputError) as caught:
        settable({"randn_source": source})
    assert [p.field for p in caught.value.problems] == ["randn_source"]


@pytest.mark.parametrize("source", ["GPU", "CPU", "NV"])
def test_an_infotexts_rng_key_becomes_the_option(source: str) -> None:
    request = Img2ImgRequest.model_validate(
        {"init_images": ["iVBORw0KGgo="], "infotext": f"a cat\nSteps: 5, Seed: 3, Size: 64x64, RNG: {source}"}
    )
    body = job_body(request, task_id="task(img2img-T000001)", default_model="tiny", tenant_options={})
    assert body["override_settings"] == {"randn_source": source}

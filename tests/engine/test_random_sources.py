"""The three random sources through a whole render with the tiny model (docs/engine.md "Noise and random sources")."""

from __future__ import annotations

import numpy as np

from shared.infotext import parse_infotext

from .conftest import Render, pixels


def test_each_source_renders_and_is_written_to_the_infotext_as_the_reference_does(render: Render) -> None:
    """Euler a draws ancestral noise at every step, so the source's later draws are exercised too."""
    fields = {"sampler_name": "Euler a", "steps": 4, "seed_resize_from_w": 32, "seed_resize_from_h": 32}
    _, gpu = render(**fields)
    _, cpu = render(**fields, override_settings={"randn_source": "CPU"})
    _, nv = render(**fields, override_settings={"randn_source": "NV"})
    _, nv_again = render(**fields, override_settings={"randn_source": "NV"})

    assert "RNG" not in parse_infotext(gpu.infotexts[0])[2]  # the default is not written
    assert parse_infotext(cpu.infotexts[0])[2]["RNG"] == "CPU"
    assert parse_infotext(nv.infotexts[0])[2]["RNG"] == "NV"
    # The worker under test runs on the CPU, where "GPU" and "CPU" are the same torch stream.
    assert np.array_equal(pixels(gpu.images[0]), pixels(cpu.images[0]))
    assert np.array_equal(pixels(nv.images[0]), pixels(nv_again.images[0]))
    assert np.abs(pixels(nv.images[0]) - pixels(gpu.images[0])).mean() > 1.0

"""The prompt language at `POST /sdapi/v1/img2img` (docs/engine.md, "Prompt language", "Deliberate differences")."""

from __future__ import annotations

from tests.a1111.conftest import LiveFarm, png_b64


def test_refused_prompts_name_the_field(farm: LiveFarm) -> None:
    base = {"init_images": [png_b64()], "steps": 2, "width": 64, "height": 64}
    with farm.client() as client:
        weight = client.post("/sdapi/v1/img2img", json={**base, "prompt": "(x:1..2)"})
        assert weight.status_code == 422
        assert (weight.json()["error"]["field"], weight.json()["error"]["code"]) == ("prompt", "invalid_prompt")
        negative = client.post("/sdapi/v1/img2img", json={**base, "negative_prompt": "(x:1..2)"})
        assert negative.status_code == 422
        assert negative.json()["error"]["field"] == "negative_prompt"
        lora = client.post("/sdapi/v1/img2img", json={**base, "prompt": "a <lora:x:0.5:abc>"})
        assert lora.status_code == 422
        assert lora.json()["error"]["field"] == "prompt"
        assert (
            lora.json()["error"]["details"][0]["message"]
            == "<lora:x:0.5:abc>: the UNet multiplier 'abc' is not a number"
        )

"""Whole renders with `<lora:…>` tags (docs/engine.md, "LoRA and LyCORIS"): the network changes the picture, the
infotext gets `Lora hashes` (P11) and keeps the tag, the next job without tags renders the original model, and the
prompt-level rules (first prompt, negative prompt, missing file, P10 warning)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import save_file

from shared.errors import InputError
from shared.infotext import parse_infotext
from shared.models import find_lora_file
from worker.engine.models import LoadedModel
from worker.engine.networks import NetworkNotFound, deactivate_networks

from .conftest import PROMPT, Render, pixels
from .lora_files import rand, write_safetensors

UNET_LAYERS = {
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q": (64, 64),
    "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_v": (64, 32),
    "lora_unet_up_blocks_0_attentions_0_transformer_blocks_0_ff_net_2": (64, 256),
}
TE_LAYERS = {
    "lora_te_text_model_encoder_layers_4_self_attn_v_proj": (32, 32),
    "lora_te_text_model_encoder_layers_4_mlp_fc2": (32, 37),
}


def _lora(shapes: dict[str, tuple[int, int]], seed: int) -> dict[str, dict[str, Any]]:
    return {
        key: {
            "lora_up.weight": rand(out, 2, seed=seed + i, scale=1.0),
            "lora_down.weight": rand(2, inp, seed=seed + 50 + i, scale=1.0),
        }
        for i, (key, (out, inp)) in enumerate(shapes.items())
    }


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_safetensors(root / "Lora" / "style.safetensors", _lora({**UNET_LAYERS, **TE_LAYERS}, seed=100))
    write_safetensors(root / "LyCORIS" / "sub" / "textonly.safetensors", _lora(TE_LAYERS, seed=200))
    prefix = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    save_file(
        {
            f"{prefix}.lora_A.weight": rand(2, 64, seed=300, scale=1.0),
            f"{prefix}.lora_B.weight": rand(64, 2, seed=301, scale=1.0),
        },
        str(root / "Lora" / "peft.safetensors"),
    )
    return root


@pytest.fixture(autouse=True)
def _original_weights_after(tiny_model: LoadedModel) -> Iterator[None]:
    yield
    deactivate_networks(tiny_model)  # the session's tiny model is shared with other tests


def lookup(models_dir: Path) -> Any:
    return lambda name: find_lora_file(name, models_dir)


def same(a: Any, b: Any) -> bool:
    return bool(np.array_equal(pixels(a), pixels(b)))


def addnet_short_hash(path: Path) -> str:
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header :]).hexdigest()[:12]


def test_a_lora_changes_the_render_and_is_hashed_in_the_infotext(render: Render, models_dir: Path) -> None:
    plain = render()[1]
    prompt = f"{PROMPT} <lora:style:0.8>"
    _, with_lora = render(prompt=prompt, lora_files=lookup(models_dir))
    assert not same(with_lora.images[0], plain.images[0])
    text, _negative, params = parse_infotext(with_lora.infotexts[0])
    assert text == prompt  # the infotext's prompt keeps the tag
    assert params["Lora hashes"] == f"style: {addnet_short_hash(models_dir / 'Lora' / 'style.safetensors')}"
    assert 'Lora hashes: "style: ' in with_lora.infotexts[0]  # JSON-quoted: the value has a colon
    # The next job without tags renders the untouched model.
    assert same(render()[1].images[0], plain.images[0])


def test_text_encoder_changes_reach_the_conditioning(render: Render, models_dir: Path) -> None:
    plain = render()[1].images[0]
    files = lookup(models_dir)
    first = render(prompt=f"{PROMPT}<lora:textonly:1:0>", lora_files=files)[1].images[0]
    second = render(prompt=f"{PROMPT}<lora:textonly:0.3:0>", lora_files=files)[1].images[0]
    assert not same(first, plain)
    assert not same(second, first)  # nothing encoded before the switch is reused


def test_multiplier_zero_renders_the_plain_model_without_a_hash(render: Render, models_dir: Path) -> None:
    plain = render()[1]
    _, zero = render(prompt=f"{PROMPT}<lora:style:0>", lora_files=lookup(models_dir))
    assert same(zero.images[0], plain.images[0])
    assert "Lora hashes" not in zero.infotexts[0]


def test_tags_of_unknown_types_are_removed_from_the_prompt(render: Render) -> None:
    plain = render()[1].images[0]
    assert same(render(prompt=f"{PROMPT}<foo:bar>")[1].images[0], plain)


def test_tags_in_the_negative_prompt_are_text_and_apply_nothing(render: Render, models_dir: Path) -> None:
    _, processed = render(negative_prompt="<lora:style:1>", lora_files=lookup(models_dir))
    assert "Lora hashes" not in processed.infotexts[0]
    _, as_text = render(negative_prompt="<lora:style:1>")  # the same picture without any lookup
    assert same(processed.images[0], as_text.images[0])


def test_a_missing_file_fails_the_job_naming_the_prompt(render: Render, models_dir: Path) -> None:
    with pytest.raises(NetworkNotFound) as caught:
        render(prompt=f"{PROMPT}<lora:absent:1>", lora_files=lookup(models_dir))
    assert (caught.value.field, caught.value.code) == ("prompt", "lora_not_found")
    assert isinstance(caught.value, InputError)


def test_malformed_tags_that_reach_the_worker_fail(render: Render, models_dir: Path) -> None:
    with pytest.raises(InputError, match="not a number"):
        render(prompt=f"{PROMPT}<lora:style:x>", lora_files=lookup(models_dir))


def test_dotted_diffusers_files_are_applied_with_a_warning(render: Render, models_dir: Path) -> None:
    plain = render()[1].images[0]
    _, processed = render(prompt=f"{PROMPT}<lora:peft:1>", lora_files=lookup(models_dir))
    assert not same(processed.images[0], plain)
    assert [w.code for w in processed.warnings] == ["lora_format_not_in_reference"]


def test_the_first_prompt_of_a_batch_supplies_its_networks(make_job: Any, models_dir: Path) -> None:
    p = make_job(lora_files=lookup(models_dir))
    stripped = p.activate_extra_networks(["a <lora:style:1>", "b <lora:textonly:1> <foo:x>"])
    assert stripped == ["a ", "b  "]  # every prompt loses its tags
    assert p.extra_generation_params["Lora hashes"].startswith("style: ")
    assert "textonly" not in p.extra_generation_params["Lora hashes"]


def test_hypernetwork_tags_that_reach_the_worker_fail(render: Render) -> None:
    with pytest.raises(InputError, match="hypernetworks"):
        render(prompt=f"{PROMPT}<hypernet:h:1>")

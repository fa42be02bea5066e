"""LoRA / LyCORIS networks merged into the tiny model's weights (docs/engine.md, "LoRA and LyCORIS"): every network
type against the merge written out in `lora_files.py` from prompts-and-models.md §3.5, multipliers, dyn, the 9-channel
padding, order, fast switching with a bitwise restore, and the errors (P7)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.models.hashes import addnet_hash
from shared.prompts.extra_networks import LoraRequest
from worker.engine.models import LoadedModel, load_model
from worker.engine.networks import (
    NetworkMatchesNothing,
    NetworkShapeMismatch,
    NetworkUnsupported,
    activate_networks,
    deactivate_networks,
)
from worker.engine.networks import apply as apply_module

from .lora_files import (
    boft_merged,
    cayley,
    dora_merged,
    kron_conv,
    lora_delta,
    oft_merged,
    rand,
    tucker_delta,
    write_safetensors,
)

UNET_Q = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"  # Linear 64 → 64
UNET_CONV = "lora_unet_down_blocks_0_resnets_0_conv1"  # Conv2d 32 → 32, 3×3
UNET_NORM = "lora_unet_down_blocks_0_resnets_0_norm1"  # GroupNorm(32)
TE_Q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"  # Linear 32 → 32
TE_FC1 = "lora_te_text_model_encoder_layers_0_mlp_fc1"  # Linear 32 → 37, with bias

TE, UNET = 0.7, 0.6  # the multipliers of most cases: te layers get 0.7, unet layers 0.6


def module_of(model: LoadedModel, key: str) -> Any:
    unet: Any = model.unet
    modules = {
        UNET_Q: unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q,
        UNET_CONV: unet.down_blocks[0].resnets[0].conv1,
        UNET_NORM: unet.down_blocks[0].resnets[0].norm1,
        TE_Q: model.text_encoder.get_submodule("encoder.layers.0.self_attn.q_proj"),
        TE_FC1: model.text_encoder.get_submodule("encoder.layers.0.mlp.fc1"),
        "lora_unet_conv_in": model.unet.conv_in,
    }
    return modules[key]


def multiplier_of(key: str) -> float:
    return TE if key.startswith("lora_te") else UNET


@pytest.fixture(scope="module")
def model(tiny_dir: Path) -> Iterator[LoadedModel]:
    """A tiny model of this module's own (the session's is shared with tests that expect its original weights)."""
    loaded = load_model("tiny", tiny_dir=tiny_dir, device="cpu", dtype=torch.float32)
    yield loaded
    deactivate_networks(loaded)


@pytest.fixture(autouse=True)
def _restore_after(model: LoadedModel) -> Iterator[None]:
    yield
    deactivate_networks(model)


def originals(model: LoadedModel) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.unet.state_dict().items()} | {
        f"te.{name}": tensor.detach().clone() for name, tensor in model.text_encoder.state_dict().items()
    }


def same_as(model: LoadedModel, saved: dict[str, torch.Tensor]) -> bool:
    now = originals(model)
    return now.keys() == saved.keys() and all(torch.equal(now[k], saved[k]) for k in saved)


def request(name: str = "net", te: float = TE, unet: float = UNET, dyn: int | None = None) -> LoraRequest:
    return LoraRequest(name, te, unet, dyn, f"<lora:{name}>")


# Each case: the file's layers, given the original weights → {layer key: (expected weight, expected bias or None)}.
Case = tuple[dict[str, dict[str, torch.Tensor]], Callable[[Callable[[str], torch.Tensor]], dict[str, torch.Tensor]]]


def _lora_linear() -> Case:
    up, down = rand(64, 4, seed=1), rand(4, 64, seed=2)
    layers = {UNET_Q: {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(2.0)}}
    return layers, lambda w: {UNET_Q: w(UNET_Q) + UNET * (2.0 / 4) * (up @ down)}


def _lora_peft_names() -> Case:
    up, down = rand(32, 3, seed=3), rand(3, 32, seed=4)
    layers = {TE_Q: {"lora_B.weight": up, "lora_A.weight": down}}  # no alpha: scale 1
    return layers, lambda w: {TE_Q: w(TE_Q) + TE * (up @ down)}


def _lora_conv() -> Case:
    down, up = rand(4, 32, 3, 3, seed=5), rand(32, 4, 1, 1, seed=6)
    layers = {UNET_CONV: {"lora_down.weight": down, "lora_up.weight": up, "alpha": torch.tensor(1.0)}}
    return layers, lambda w: {UNET_CONV: w(UNET_CONV) + UNET * (1.0 / 4) * lora_delta(up, down)}


def _lora_tucker() -> Case:
    down, mid, up = rand(2, 32, 1, 1, seed=7), rand(2, 2, 3, 3, seed=8), rand(32, 2, 1, 1, seed=9)
    layers = {
        UNET_CONV: {"lora_down.weight": down, "lora_mid.weight": mid, "lora_up.weight": up, "alpha": torch.tensor(3.0)}
    }
    expected = lambda w: {UNET_CONV: w(UNET_CONV) + UNET * 1.5 * tucker_delta(mid, up[:, :, 0, 0], down[:, :, 0, 0])}  # noqa: E731
    return layers, expected


def _lora_scale_key_and_bias_key() -> Case:
    up, down, bias = rand(37, 2, seed=10), rand(2, 32, seed=11), rand(37, 32, seed=12)
    # `scale` wins over alpha/r; a key named `bias` joins the weight update (scaled), not the layer's bias.
    weights = {
        "lora_up.weight": up,
        "lora_down.weight": down,
        "alpha": torch.tensor(8.0),
        "scale": torch.tensor(0.25),
        "bias": bias,
    }
    return {TE_FC1: weights}, lambda w: {TE_FC1: w(TE_FC1) + TE * 0.25 * (up @ down + bias)}


def _dora() -> Case:
    up, down, magnitude = rand(64, 4, seed=13), rand(4, 64, seed=14), 1 + rand(1, 64, seed=15)
    layers = {
        UNET_Q: {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(4.0), "dora_scale": magnitude}
    }
    return layers, lambda w: {UNET_Q: w(UNET_Q) + UNET * dora_merged(w(UNET_Q), up @ down, magnitude)}


def _loha() -> Case:
    w1a, w1b, w2a, w2b = rand(64, 2, seed=16), rand(2, 64, seed=17), rand(64, 2, seed=18), rand(2, 64, seed=19)
    layers = {
        UNET_Q: {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b, "alpha": torch.tensor(1.0)}
    }
    return layers, lambda w: {UNET_Q: w(UNET_Q) + UNET * 0.5 * ((w1a @ w1b) * (w2a @ w2b))}


def _loha_tucker() -> Case:
    w1a, w1b, t1 = rand(2, 32, seed=20), rand(2, 32, seed=21), rand(2, 2, 3, 3, seed=22)
    w2a, w2b, t2 = rand(2, 32, seed=23), rand(2, 32, seed=24), rand(2, 2, 3, 3, seed=25)
    weights = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_t1": t1, "hada_w2_a": w2a, "hada_w2_b": w2b, "hada_t2": t2}

    def expected(w: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        # With cores, w*_a is (rank, out) and w*_b (rank, in): ΔW_n[:, :, k, l] = w_aᵀ · t_n[:, :, k, l] · w_b.
        first = tucker_delta(t1, w1a.T, w1b)
        second = tucker_delta(t2, w2a.T, w2b)
        return {UNET_CONV: w(UNET_CONV) + UNET * first * second}

    return {UNET_CONV: weights}, expected


def _ia3() -> Case:
    factor = rand(32, seed=26)
    layers = {TE_Q: {"weight": factor, "on_input": torch.tensor(False)}}
    return layers, lambda w: {TE_Q: w(TE_Q) + TE * (w(TE_Q) * factor.reshape(32, 1))}


def _ia3_on_input() -> Case:
    factor = rand(32, seed=27)
    layers = {TE_FC1: {"weight": factor, "on_input": torch.tensor(True)}}
    return layers, lambda w: {TE_FC1: w(TE_FC1) + TE * (w(TE_FC1) * factor.reshape(1, 32))}


def _lokr() -> Case:
    w1, w2a, w2b = rand(4, 4, seed=28, scale=1.0), rand(16, 2, seed=29), rand(2, 16, seed=30)
    layers = {UNET_Q: {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b, "alpha": torch.tensor(1.0)}}
    return layers, lambda w: {UNET_Q: w(UNET_Q) + UNET * 0.5 * torch.kron(w1, w2a @ w2b)}


def _lokr_conv() -> Case:
    w1, w2 = rand(2, 2, seed=31, scale=1.0), rand(16, 16, 3, 3, seed=32)
    # No rank (no w1_b/w2_b): alpha is not used, scale 1.
    layers = {UNET_CONV: {"lokr_w1": w1, "lokr_w2": w2, "alpha": torch.tensor(7.0)}}
    return layers, lambda w: {UNET_CONV: w(UNET_CONV) + UNET * kron_conv(w1, w2)}


def _full() -> Case:
    diff, diff_b = rand(37, 32, seed=33), rand(37, seed=34)
    layers = {TE_FC1: {"diff": diff, "diff_b": diff_b}}
    return layers, lambda w: {TE_FC1: w(TE_FC1) + TE * diff, f"{TE_FC1}.bias": w(f"{TE_FC1}.bias") + TE * diff_b}


def _norm() -> Case:
    w_norm, b_norm = rand(32, seed=35), rand(32, seed=36)
    layers = {UNET_NORM: {"w_norm": w_norm, "b_norm": b_norm}}
    return layers, lambda w: {
        UNET_NORM: w(UNET_NORM) + UNET * w_norm,
        f"{UNET_NORM}.bias": w(f"{UNET_NORM}.bias") + UNET * b_norm,
    }


def _glora() -> Case:
    a1, a2, b1, b2 = rand(2, 32, seed=37), rand(32, 2, seed=38), rand(2, 32, seed=39), rand(32, 2, seed=40)
    # α is ignored (GLoRA has no rank in the reference): scale 1.
    weights = {"a1.weight": a1, "a2.weight": a2, "b1.weight": b1, "b2.weight": b2, "alpha": torch.tensor(5.0)}
    return {TE_Q: weights}, lambda w: {TE_Q: w(TE_Q) + TE * (b2 @ b1 + (w(TE_Q) @ a2) @ a1)}


def _oft_constrained() -> Case:
    blocks, alpha = rand(4, 16, 16, seed=41), 1e-3

    def expected(w: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        q = blocks - blocks.transpose(1, 2)
        norm, limit = q.flatten().norm(), alpha * 64  # ‖Q‖ over all blocks is clamped to α · out_dim
        assert norm > limit  # the clamp is exercised
        q = q * ((limit + 1e-8) / (norm + 1e-8))
        eye = torch.eye(16)
        rotation = (eye + q) @ torch.linalg.inv(eye - q)
        return {UNET_Q: w(UNET_Q) + UNET * (oft_merged(w(UNET_Q), rotation) - w(UNET_Q))}

    return {UNET_Q: {"oft_blocks": blocks, "alpha": torch.tensor(alpha)}}, expected


def _oft_rescaled() -> Case:
    blocks, rescale = rand(2, 16, 16, seed=42), 1 + rand(32, seed=43)

    def expected(w: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        merged = oft_merged(w(UNET_CONV), cayley(blocks)) * rescale.reshape(32, 1, 1, 1)
        return {UNET_CONV: w(UNET_CONV) + UNET * (merged - w(UNET_CONV))}

    # No alpha: no constraint. OFT's scale is always 1.
    return {UNET_CONV: {"oft_blocks": blocks, "rescale": rescale}}, expected


def _oft_diag() -> Case:
    rotations = torch.linalg.qr(rand(4, 16, 16, seed=44, scale=1.0)).Q  # the old format stores R itself

    def expected(w: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        return {UNET_Q: w(UNET_Q) + UNET * (oft_merged(w(UNET_Q), rotations) - w(UNET_Q))}

    return {UNET_Q: {"oft_diag": rotations, "alpha": torch.tensor(3.0)}}, expected


def _boft() -> Case:
    blocks = rand(2, 16, 4, 4, seed=45)  # 2 butterfly factors of 16 blocks of 4×4 over 64 rows

    def expected(w: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
        merged = boft_merged(w(UNET_Q), cayley(blocks))
        return {UNET_Q: w(UNET_Q) + UNET * (merged - w(UNET_Q))}

    return {UNET_Q: {"oft_blocks": blocks}}, expected


CASES: dict[str, Callable[[], Case]] = {
    "lora linear": _lora_linear,
    "lora PEFT names in a kohya layer": _lora_peft_names,
    "locon conv": _lora_conv,
    "lora_mid tucker": _lora_tucker,
    "scale key and bias key": _lora_scale_key_and_bias_key,
    "dora": _dora,
    "loha": _loha,
    "loha tucker": _loha_tucker,
    "ia3": _ia3,
    "ia3 on_input": _ia3_on_input,
    "lokr": _lokr,
    "lokr conv": _lokr_conv,
    "full": _full,
    "norm": _norm,
    "glora": _glora,
    "oft constrained": _oft_constrained,
    "oft rescale": _oft_rescaled,
    "oft_diag": _oft_diag,
    "boft": _boft,
}


def _original_getter(model: LoadedModel) -> Callable[[str], torch.Tensor]:
    def get(key: str) -> torch.Tensor:
        layer, _, part = key.partition(".")
        return getattr(module_of(model, layer), part or "weight").detach().clone()

    return get


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_network_type_merges_as_the_reference(case: str, model: LoadedModel, tmp_path: Path) -> None:
    layers, expected_of = CASES[case]()
    path = write_safetensors(tmp_path / "net.safetensors", layers)
    before = originals(model)
    expected = expected_of(_original_getter(model))
    applied = activate_networks(model, [(request(), path)])
    for key, value in expected.items():
        layer, _, part = key.partition(".")
        actual = getattr(module_of(model, layer), part or "weight")
        torch.testing.assert_close(actual.detach(), value, rtol=1e-5, atol=1e-6, msg=f"{case}: {key}")
    assert [(r.name, h) for r, h in applied.changed] == [("net", addnet_hash(path)[:12])]
    deactivate_networks(model)
    assert same_as(model, before)  # removal restores the original weights bit for bit


def test_multiplier_zero_leaves_the_model_unchanged(model: LoadedModel, tmp_path: Path) -> None:
    layers = {**_lora_linear()[0], **_lora_peft_names()[0]}
    path = write_safetensors(tmp_path / "net.safetensors", layers)
    before = originals(model)
    applied = activate_networks(model, [(request(te=0.0, unet=0.0), path)])
    assert same_as(model, before)
    assert applied.changed == ()  # P11: no `Lora hashes` entry for a network that changed nothing


@pytest.mark.parametrize(("te", "unet"), [(0.5, 0.0), (0.0, 0.8)])
def test_te_and_unet_multipliers_apply_to_their_layers(
    model: LoadedModel, tmp_path: Path, te: float, unet: float
) -> None:
    unet_up, unet_down = rand(64, 2, seed=50), rand(2, 64, seed=51)
    te_up, te_down = rand(32, 2, seed=52), rand(2, 32, seed=53)
    layers = {
        UNET_Q: {"lora_up.weight": unet_up, "lora_down.weight": unet_down},
        TE_Q: {"lora_up.weight": te_up, "lora_down.weight": te_down},
    }
    path = write_safetensors(tmp_path / "net.safetensors", layers)
    w = _original_getter(model)
    q_unet, q_te = w(UNET_Q), w(TE_Q)
    activate_networks(model, [(request(te=te, unet=unet), path)])
    torch.testing.assert_close(module_of(model, UNET_Q).weight.detach(), q_unet + unet * unet_up @ unet_down)
    torch.testing.assert_close(module_of(model, TE_Q).weight.detach(), q_te + te * te_up @ te_down)
    untouched = module_of(model, UNET_Q if unet == 0 else TE_Q).weight
    assert torch.equal(untouched, q_unet if unet == 0 else q_te)


def test_dyn_keeps_the_first_rank_components_with_the_full_rank_scale(model: LoadedModel, tmp_path: Path) -> None:
    up, down = rand(64, 4, seed=54), rand(4, 64, seed=55)
    layers = {UNET_Q: {"lora_up.weight": up, "lora_down.weight": down, "alpha": torch.tensor(2.0)}}
    path = write_safetensors(tmp_path / "net.safetensors", layers)
    q = _original_getter(model)(UNET_Q)
    activate_networks(model, [(request(unet=1.0, dyn=2), path)])
    expected = q + (2.0 / 4) * lora_delta(up, down, dyn=2)  # α / 4, not α / 2
    torch.testing.assert_close(module_of(model, UNET_Q).weight.detach(), expected)


def test_networks_apply_in_prompt_order_against_the_changed_weight(model: LoadedModel, tmp_path: Path) -> None:
    first_factor, second_diff = rand(32, seed=56), rand(32, 32, seed=57)
    first = write_safetensors(tmp_path / "a.safetensors", {TE_Q: {"weight": first_factor}})
    second = write_safetensors(tmp_path / "b.safetensors", {TE_Q: {"diff": second_diff}})
    q = _original_getter(model)(TE_Q)
    activate_networks(model, [(request("b", te=1.0), second), (request("a", te=0.5), first)])
    changed = q + second_diff
    torch.testing.assert_close(
        module_of(model, TE_Q).weight.detach(), changed + 0.5 * changed * first_factor.reshape(32, 1)
    )


def test_the_same_set_again_is_a_no_op_and_a_new_set_replaces_the_old(
    model: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = apply_module._apply_layer

    def counting(*args: Any) -> None:
        calls.append(args[2].key)
        real(*args)

    monkeypatch.setattr(apply_module, "_apply_layer", counting)
    a = write_safetensors(tmp_path / "a.safetensors", _lora_linear()[0])
    b = write_safetensors(tmp_path / "b.safetensors", _lora_peft_names()[0])
    before = originals(model)
    activate_networks(model, [(request("a"), a)])
    assert len(calls) == 1
    activate_networks(model, [(request("a"), a)])
    assert len(calls) == 1  # the unchanged set: nothing recomputed
    activate_networks(model, [(request("b"), b)])
    switched = originals(model)
    assert torch.equal(switched[UNET_Q_STATE], before[UNET_Q_STATE])  # a's layer is back to its original bits
    deactivate_networks(model)
    activate_networks(model, [(request("b"), b)])
    assert same_as(model, switched)  # switching a → b gives what b alone gives
    assert not same_as(model, before)


UNET_Q_STATE = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"


def test_nine_channel_inpainting_unets_get_the_update_zero_padded(tiny_dir: Path, tmp_path: Path) -> None:
    inpaint = load_model("tiny-inpaint", tiny_dir=tiny_dir, device="cpu", dtype=torch.float32)
    down, up = rand(2, 4, 3, 3, seed=60), rand(32, 2, 1, 1, seed=61)
    path = write_safetensors(
        tmp_path / "net.safetensors", {"lora_unet_conv_in": {"lora_down.weight": down, "lora_up.weight": up}}
    )
    w = inpaint.unet.conv_in.weight.detach().clone()
    activate_networks(inpaint, [(request(unet=1.0), path)])
    now = inpaint.unet.conv_in.weight.detach()
    torch.testing.assert_close(now[:, :4], w[:, :4] + lora_delta(up, down))
    assert torch.equal(now[:, 4:], w[:, 4:])  # mask and masked-image channels untouched
    deactivate_networks(inpaint)
    assert torch.equal(inpaint.unet.conv_in.weight, w)


def test_a_shape_mismatch_fails_naming_the_network_and_restores(model: LoadedModel, tmp_path: Path) -> None:
    good = write_safetensors(tmp_path / "good.safetensors", _lora_peft_names()[0])
    wrong = {UNET_Q: {"lora_up.weight": rand(64, 2, seed=62), "lora_down.weight": rand(2, 48, seed=63)}}
    bad = write_safetensors(tmp_path / "bad.safetensors", wrong)
    before = originals(model)
    with pytest.raises(NetworkShapeMismatch, match=r"'other'.*bad\.safetensors"):
        activate_networks(model, [(request("good"), good), (request("other"), bad)])
    assert same_as(model, before)  # P7: no half-applied set


def test_a_file_matching_no_layer_fails(model: LoadedModel, tmp_path: Path) -> None:
    before = originals(model)
    activate_networks(model, [(request("good"), write_safetensors(tmp_path / "good.safetensors", _lora_linear()[0]))])
    path = write_safetensors(
        tmp_path / "sdxl.safetensors", {"lora_unet_input_blocks_40_1_proj_in": _lora_linear()[0][UNET_Q]}
    )
    with pytest.raises(NetworkMatchesNothing, match="'net'"):
        activate_networks(model, [(request(), path)])
    assert same_as(model, before)  # the failed job leaves the original weights, not the previous set


def test_keys_of_no_known_type_fail(model: LoadedModel, tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "odd.safetensors", {UNET_Q: {"mystery": rand(4, seed=64)}})
    with pytest.raises(NetworkUnsupported, match="fit no"):
        activate_networks(model, [(request(), path)])


def test_dotted_diffusers_keys_are_applied_and_flagged(model: LoadedModel, tmp_path: Path) -> None:
    up, down = rand(32, 2, seed=65), rand(2, 32, seed=66)
    prefix = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    path = tmp_path / "peft.safetensors"
    from safetensors.torch import save_file

    save_file({f"{prefix}.lora_A.weight": down, f"{prefix}.lora_B.weight": up}, str(path))
    q = _original_getter(model)(TE_Q)
    applied = activate_networks(model, [(request(te=1.0), path)])
    torch.testing.assert_close(module_of(model, TE_Q).weight.detach(), q + up @ down)
    ((_, network),) = applied.networks
    assert network.dotted  # processing turns this into the warning lora_format_not_in_reference (P10)


def test_the_short_hash_is_the_metadata_hash_when_present(model: LoadedModel, tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", _lora_linear()[0], metadata={"sshs_model_hash": "ab" * 32})
    applied = activate_networks(model, [(request(), path)])
    assert applied.changed[0][1] == "ab" * 6


def test_ldm_names_in_an_sd1_file_reach_the_same_layer(model: LoadedModel, tmp_path: Path) -> None:
    # The tiny UNet has 1 layer per block: down block 1's first layer is input block 1 + (1 + 1) = 3.
    weights = _lora_linear()[0][UNET_Q]
    path = write_safetensors(
        tmp_path / "ldm.safetensors", {"lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q": weights}
    )
    q = _original_getter(model)(UNET_Q)
    activate_networks(model, [(request(unet=1.0), path)])
    expected = q + 0.5 * weights["lora_up.weight"] @ weights["lora_down.weight"]
    torch.testing.assert_close(module_of(model, UNET_Q).weight.detach(), expected)


def test_an_extra_bias_on_a_layer_without_bias_creates_one_and_removal_drops_it(
    model: LoadedModel, tmp_path: Path
) -> None:
    layer = module_of(model, UNET_Q)
    assert layer.bias is None  # diffusers' attention projections have none
    diff, diff_b = rand(64, 64, seed=70), rand(64, seed=71)
    path = write_safetensors(tmp_path / "full.safetensors", {UNET_Q: {"diff": diff, "diff_b": diff_b}})
    activate_networks(model, [(request(unet=0.5), path)])
    created: torch.Tensor = module_of(model, UNET_Q).bias
    torch.testing.assert_close(created.detach(), 0.5 * diff_b)
    deactivate_networks(model)
    assert layer.bias is None


def test_a_pt_file_is_read_and_hashed_over_the_whole_file(model: LoadedModel, tmp_path: Path) -> None:
    import hashlib

    layers = _lora_linear()[0]
    path = tmp_path / "old.pt"
    torch.save({f"{layer}.{name}": t for layer, weights in layers.items() for name, t in weights.items()}, path)
    q = _original_getter(model)(UNET_Q)
    applied = activate_networks(model, [(request(unet=1.0), path)])
    weights = layers[UNET_Q]
    torch.testing.assert_close(
        module_of(model, UNET_Q).weight.detach(), q + 0.5 * weights["lora_up.weight"] @ weights["lora_down.weight"]
    )
    assert applied.changed[0][1] == hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_keys_the_layer_type_does_not_read_are_reported(model: LoadedModel, tmp_path: Path) -> None:
    weights = {**_lora_linear()[0][UNET_Q], "hada_w1_a": rand(4, seed=80)}  # LoRA wins; the LoHa key does nothing
    path = write_safetensors(
        tmp_path / "mixed.safetensors", {UNET_Q: weights, "lora_unet_nowhere": {"alpha": torch.tensor(1.0)}}
    )
    applied = activate_networks(model, [(request(), path)])
    ((_, network),) = applied.networks
    assert any(key.endswith("attn1.to_q.hada_w1_a") for key in network.unmatched)
    assert any(key.startswith("lora_unet_nowhere.") for key in network.unmatched)

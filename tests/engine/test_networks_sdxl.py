"""kohya SDXL LoRA files (sgm UNet names, `lora_te1_`, `lora_te2_`) on an SDXL-shaped model built here from diffusers
and transformers configs (tiny sizes, SDXL's block layout: 2 layers per block, attention in the lower two levels,
the added text/time embedding, two text encoders)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from shared.prompts.extra_networks import LoraRequest
from worker.engine.networks import ModelLayers, activate_networks, deactivate_networks

from .lora_files import rand, write_safetensors


@dataclass(eq=False)
class TinyXL:
    unet: Any
    text_encoder: Any
    text_encoder_2: Any
    dtype: torch.dtype = torch.float32


@pytest.fixture(scope="module")
def xl() -> TinyXL:
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=48,
        norm_num_groups=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 16,
    )
    small: dict[str, Any] = {
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 100,
    }
    small |= {"bos_token_id": 98, "eos_token_id": 99, "pad_token_id": 99}
    te1 = CLIPTextModel(CLIPTextConfig(hidden_size=16, **small))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=32, projection_dim=16, hidden_act="gelu", **small))
    return TinyXL(unet, te1, te2)


# sgm name (as in kohya SDXL files) → the diffusers module, from SDXL's layout: input block n = down block
# (n-1)//3, layer (n-1)%3 (its resnet at .0, attention at .1), the downsamplers at 3 and 6; output block n = up block
# n//3, layer n%3, upsamplers at .2 of output blocks 2 and 5 (attention blocks), middle_block 0/1/2 = resnet,
# attention, resnet.
SDXL_NAMES = {
    "input_blocks_0_0": "conv_in",
    "time_embed_0": "time_embedding.linear_1",
    "label_emb_0_2": "add_embedding.linear_2",
    "input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
    "input_blocks_2_0_emb_layers_1": "down_blocks.0.resnets.1.time_emb_proj",
    "input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
    "input_blocks_4_1_transformer_blocks_0_attn1_to_q": "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "input_blocks_4_0_skip_connection": "down_blocks.1.resnets.0.conv_shortcut",
    "input_blocks_8_1_transformer_blocks_1_ff_net_2": "down_blocks.2.attentions.1.transformer_blocks.1.ff.net.2",
    "middle_block_0_out_layers_3": "mid_block.resnets.0.conv2",
    "middle_block_1_proj_in": "mid_block.attentions.0.proj_in",
    "middle_block_2_in_layers_0": "mid_block.resnets.1.norm1",
    "output_blocks_0_1_transformer_blocks_0_attn2_to_k": "up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
    "output_blocks_5_2_conv": "up_blocks.1.upsamplers.0.conv",
    "output_blocks_4_1_proj_out": "up_blocks.1.attentions.1.proj_out",
    "output_blocks_8_0_out_layers_0": "up_blocks.2.resnets.2.norm2",
    "out_2": "conv_out",
}


def test_sgm_names_map_onto_the_diffusers_unet(xl: TinyXL) -> None:
    layers = ModelLayers(xl)
    for sgm, diffusers_name in SDXL_NAMES.items():
        target = layers.by_name.get(f"lora_unet_{sgm}")
        assert target is not None, sgm
        assert target.module is xl.unet.get_submodule(diffusers_name), sgm


def test_a_kohya_sdxl_file_changes_both_text_encoders_and_the_unet(xl: TinyXL, tmp_path: Path) -> None:
    to_q = xl.unet.get_submodule("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")  # 32 → 32
    te1_q = xl.text_encoder.get_submodule("encoder.layers.1.self_attn.q_proj")  # 16 → 16
    te2_fc1 = xl.text_encoder_2.get_submodule("text_model.encoder.layers.0.mlp.fc1")  # 32 → 37
    before = {name: m.weight.detach().clone() for name, m in (("q", to_q), ("te1", te1_q), ("te2", te2_fc1))}
    ups = {"q": rand(32, 2, seed=1), "te1": rand(16, 2, seed=2), "te2": rand(37, 2, seed=3)}
    downs = {"q": rand(2, 32, seed=4), "te1": rand(2, 16, seed=5), "te2": rand(2, 32, seed=6)}
    keys = {
        "q": "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
        "te1": "lora_te1_text_model_encoder_layers_1_self_attn_q_proj",
        "te2": "lora_te2_text_model_encoder_layers_0_mlp_fc1",
    }
    layers = {
        keys[n]: {"lora_up.weight": ups[n], "lora_down.weight": downs[n], "alpha": torch.tensor(1.0)} for n in keys
    }
    path = write_safetensors(tmp_path / "xl.safetensors", layers)
    applied = activate_networks(xl, [(LoraRequest("xl", 0.4, 0.9, None, "<lora:xl:0.4:0.9>"), path)])
    assert [r.name for r, _ in applied.changed] == ["xl"]
    for name, module, m in (("q", to_q, 0.9), ("te1", te1_q, 0.4), ("te2", te2_fc1, 0.4)):
        expected = before[name] + m * 0.5 * ups[name] @ downs[name]
        torch.testing.assert_close(module.weight.detach(), expected, msg=name)
    deactivate_networks(xl)
    for name, module in (("q", to_q), ("te1", te1_q), ("te2", te2_fc1)):
        assert torch.equal(module.weight, before[name])

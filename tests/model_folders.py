"""A webui-shaped `models/` folder built from real files, for the model-files tests (docs/engine.md "Model files").

models/Stable-diffusion/x.safetensors         the tiny model exported as one LDM checkpoint (renders)
models/Stable-diffusion/x.yaml                its config beside it
models/Stable-diffusion/x.vae.safetensors     a VAE beside the checkpoint (not a checkpoint)
models/Stable-diffusion/sub/m2.safetensors    header-only SD 1.x "checkpoints", for natural order
models/Stable-diffusion/sub/m10.ckpt
models/Lora/style.safetensors                 SD 1.x kohya keys (tiny widths), metadata with ss_output_name
models/Lora/old.pt                            a torch pickle LoRA
models/LyCORIS/xl_only.safetensors            SDXL kohya keys
models/LyCORIS/nothing.safetensors            keys of no known layer
models/VAE/vae-ft-mse.safetensors, models/VAE/deep/other.pt
models/hypernetworks/anime.pt
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.ldm_export import export_sgm_single_file

TINY_CONTEXT = 32  # the tiny models' cross-attention width
STYLE_METADATA = {
    "ss_output_name": "styleAlias",
    "ss_tag_frequency": json.dumps({"set": {"red": 3}}),
    "ss_network_dim": "4",
}


@dataclass(frozen=True)
class WebuiModels:
    root: Path  # the models folder (RENDERFARM_MODELS_DIR)
    checkpoint: Path
    sub_checkpoints: tuple[Path, Path]
    lora: Path
    pt_lora: Path
    sdxl_lora: Path
    no_layer_lora: Path
    vae: Path
    deep_vae: Path
    beside_vae: Path
    hypernetwork: Path


def _lora_sd1(rank: int = 4, context: int = TINY_CONTEXT) -> dict[str, torch.Tensor]:
    layer = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    return {
        f"{layer}.lora_down.weight": torch.randn(rank, context),
        f"{layer}.lora_up.weight": torch.randn(32, rank),
        f"{layer}.alpha": torch.tensor(float(rank)),
    }


def build_webui_models(root: Path, tiny_folder: Path) -> WebuiModels:
    """Build the folder under `root` (it becomes `root/models`); `tiny_folder` is a built tiny img2img model."""
    models = root / "models"
    sd = models / "Stable-diffusion"
    checkpoint = export_sgm_single_file(tiny_folder, sd / "x.safetensors")  # with its configs: loads offline
    (sd / "x.yaml").write_text("model: {}\n")
    beside_vae = sd / "x.vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.randn(4, 4, 3, 3)}, str(beside_vae))
    subs = []
    for name in ("m10.ckpt", "m2.safetensors"):
        path = sd / "sub" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.randn(4, 768)}
        if name.endswith(".ckpt"):
            torch.save({"state_dict": tensors}, path)
        else:
            save_file(tensors, str(path))
        subs.append(path)
    (models / "Lora").mkdir(parents=True)
    (models / "LyCORIS").mkdir(parents=True)
    lora = models / "Lora" / "style.safetensors"
    save_file(_lora_sd1(), str(lora), metadata=STYLE_METADATA)
    pt_lora = models / "Lora" / "old.pt"
    torch.save(_lora_sd1(), pt_lora)
    sdxl_lora = models / "LyCORIS" / "xl_only.safetensors"
    save_file(
        {
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(4, 768),
            "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.randn(4, 2048),
        },
        str(sdxl_lora),
    )
    no_layer_lora = models / "LyCORIS" / "nothing.safetensors"
    save_file({"something.else.weight": torch.randn(2, 2)}, str(no_layer_lora))
    vae = models / "VAE" / "vae-ft-mse.safetensors"
    vae.parent.mkdir(parents=True)
    save_file({"decoder.conv_in.weight": torch.randn(4, 4, 3, 3)}, str(vae))
    deep_vae = models / "VAE" / "deep" / "other.pt"
    deep_vae.parent.mkdir()
    torch.save({"decoder.conv_in.weight": torch.randn(4, 4, 3, 3)}, deep_vae)
    hypernetwork = models / "hypernetworks" / "anime.pt"
    hypernetwork.parent.mkdir()
    torch.save({"768": [torch.randn(2, 2)]}, hypernetwork)
    return WebuiModels(
        models, checkpoint, (subs[1], subs[0]), lora, pt_lora, sdxl_lora, no_layer_lora, vae, deep_vae, beside_vae,
        hypernetwork,
    )  # fmt: skip

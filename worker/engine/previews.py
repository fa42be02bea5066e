"""Live previews: a sampling step's latent drawn as a small picture (docs/engine.md "Live previews").

The reference's four preview methods (`show_progress_type`) and what the farm draws for each:

- "Approx cheap": a fixed linear map of the 4 latent channels to RGB (`approx_cheap`), H/8 × W/8;
- "TAESD": the tiny autoencoder's decoder (`TaesdDecoder`), H × W, with the published weights
  `<models>/VAE-taesd/taesd_decoder.pth` (SD 1/2) or `taesdxl_decoder.pth` (SDXL);
- "Approx NN" (the reference's default): drawn with TAESD, since the reference's own small network's weights are
  not distributed with the farm; the preview says so (`PreviewRenderer.notes`);
- "Full": the model's own VAE decode, H × W.

When the TAESD weights are missing, TAESD (and so Approx NN) fall back to Approx cheap, also with a note. The input is
whichever latent the caller gives (UNet space, i.e. with the VAE scale factor); every method's output is read as
[-1, 1] and turned into pixels as the reference does: `clamp((x + 1) / 2) · 255`, truncated.

Nothing here knows about jobs or watchers: `worker/preview_publisher.py` decides when a preview is drawn.
"""

from __future__ import annotations

import base64
import io
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, get_args

import torch
from PIL import Image
from torch import nn

from worker.engine.models import LoadedModel
from worker.engine.options import Options, PreviewMethod

PREVIEW_METHODS: Final[tuple[str, ...]] = get_args(PreviewMethod)
LatentFamily = Literal["sd", "sdxl"]

# The reference's "Approx cheap" coefficients, K[latent channel] = (R, G, B); no bias.
APPROX_CHEAP_SD: Final = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
APPROX_CHEAP_SDXL: Final = (
    (0.3448, 0.4168, 0.4395),
    (-0.1953, -0.0290, 0.0250),
    (0.1074, 0.0886, -0.0163),
    (-0.3730, -0.2499, -0.2088),
)
APPROX_CHEAP: Final[dict[LatentFamily, tuple[tuple[float, float, float], ...]]] = {
    "sd": APPROX_CHEAP_SD,
    "sdxl": APPROX_CHEAP_SDXL,
}

TAESD_FOLDER: Final = "VAE-taesd"  # under the models folder, as the reference keeps it
TAESD_FILES: Final[dict[LatentFamily, str]] = {"sd": "taesd_decoder.pth", "sdxl": "taesdxl_decoder.pth"}
SDXL_SCALE_FACTOR: Final = 0.13025  # the SDXL VAE's scaling factor (SD 1/2: 0.18215)

MAX_PREVIEW_SIDE: Final = 512  # pixels: a larger preview is scaled down (the reference sends it at full size)
MAX_PREVIEW_BYTES: Final = 192 * 1024  # encoded bytes: PNG when it fits, else JPEG (smaller again if needed)
JPEG_QUALITY: Final = 85
PNG_RAW_FACTOR: Final = 2  # PNG is tried only for pictures of at most this × MAX_PREVIEW_BYTES raw bytes


def latent_family(model: LoadedModel | None) -> LatentFamily:
    """Which latent space a model's latents live in; SDXL is told by its VAE's scaling factor."""
    if model is not None and math.isclose(model.latent_scale_factor, SDXL_SCALE_FACTOR, rel_tol=1e-3):
        return "sdxl"
    return "sd"


# ----------------------------------------------------------------------------------------------------------------
# Approx cheap


def approx_cheap(latent: torch.Tensor, family: LatentFamily = "sd") -> torch.Tensor:
    """(B, 4, h, w) latents → (B, 3, h, w) RGB in nominal [-1, 1]: rgb_c = Σ_l z_l · K[l][c]."""
    if latent.ndim != 4 or latent.shape[1] != len(APPROX_CHEAP[family]):
        raise ValueError(f"approx_cheap takes (B, 4, h, w) latents, not {tuple(latent.shape)}")
    coefficients = torch.tensor(APPROX_CHEAP[family], dtype=torch.float32, device=latent.device)
    return torch.einsum("blhw,lc->bchw", latent.float(), coefficients)


# ----------------------------------------------------------------------------------------------------------------
# TAESD: the tiny autoencoder's decoder (madebyollin/taesd, MIT), written from its published description. The
# module tree mirrors the published files so that their state dicts load as they are: a flat nn.Sequential whose
# indices are the keys' first part ("1.weight", "3.conv.0.weight", ..., "19.bias").

TAESD_CHANNELS: Final = 64


def _conv3(channels_in: int, channels_out: int, *, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=bias)


class _SoftClamp(nn.Module):
    """Squashes latents smoothly into (-3, 3): 3 · tanh(x / 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3.0) * 3.0


class TaesdBlock(nn.Module):
    """A residual block: three 3×3 convs with ReLUs between them, added to the input, then a ReLU."""

    def __init__(self, channels: int = TAESD_CHANNELS) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            _conv3(channels, channels), nn.ReLU(), _conv3(channels, channels), nn.ReLU(), _conv3(channels, channels)
        )
        self.skip = nn.Identity()  # the published decoder keeps 64 channels throughout: no projection
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class TaesdDecoder(nn.Sequential):
    """Latents (B, C, h, w) in UNet space → pictures (B, 3, 8h, 8w) in nominal [0, 1].

    Soft clamp, a 3×3 conv to 64 channels and a ReLU, then three stages of (3 blocks, ×2 nearest upsample, a
    bias-free 3×3 conv), one more block and a 3×3 conv to RGB.
    """

    def __init__(self, latent_channels: int = 4) -> None:
        layers: list[nn.Module] = [_SoftClamp(), _conv3(latent_channels, TAESD_CHANNELS), nn.ReLU()]
        for _ in range(3):
            layers += [TaesdBlock(), TaesdBlock(), TaesdBlock()]
            layers += [nn.Upsample(scale_factor=2), _conv3(TAESD_CHANNELS, TAESD_CHANNELS, bias=False)]
        layers += [TaesdBlock(), _conv3(TAESD_CHANNELS, 3)]
        super().__init__(*layers)


def taesd_path(models_dir: Path | None, family: LatentFamily) -> Path | None:
    """Where the TAESD decoder of `family` is kept: `<models>/VAE-taesd/<file>`; None without a models folder."""
    return None if models_dir is None else models_dir / TAESD_FOLDER / TAESD_FILES[family]


_DECODERS: dict[tuple[Path, str, torch.dtype], TaesdDecoder] = {}
_DECODERS_LOCK = threading.Lock()


def load_taesd_decoder(path: Path, device: torch.device, dtype: torch.dtype = torch.float32) -> TaesdDecoder:
    """The decoder with the weights of `path` (a published `*_decoder.pth` state dict), kept for later calls.

    Raises OSError when the file cannot be read and RuntimeError when its keys or shapes are not TAESD's.
    """
    key = (path.resolve(), str(device), dtype)
    with _DECODERS_LOCK:
        decoder = _DECODERS.get(key)
        if decoder is None:
            state = torch.load(path, map_location="cpu", weights_only=True)
            decoder = TaesdDecoder()
            decoder.load_state_dict(state)
            decoder = decoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
            _DECODERS[key] = decoder
        return decoder


# ----------------------------------------------------------------------------------------------------------------
# Settings and the renderer


@dataclass(frozen=True)
class PreviewSettings:
    """The reference's preview options of one job (docs/engine.md "Live previews")."""

    enabled: bool = True  # live_previews_enable
    every_n_steps: int = 10  # show_progress_every_n_steps: 0 every step, -1 only at the end of each batch
    method: PreviewMethod = "Approx NN"  # show_progress_type
    grid: bool = True  # show_progress_grid: every picture of the batch, else the first

    @classmethod
    def from_options(cls, options: Options) -> PreviewSettings:
        return cls(
            enabled=options.live_previews_enable,
            every_n_steps=options.show_progress_every_n_steps,
            method=options.show_progress_type,
            grid=options.show_progress_grid,
        )


@dataclass(frozen=True)
class PreviewNote:
    """Why a preview is not drawn with the method asked for (a job warning: `code`, `message`)."""

    code: str
    message: str


@dataclass
class PreviewRenderer:
    """Draws previews of one job's latents with the method its settings ask for, or the documented substitute.

    Nothing is loaded until the first `render`: a job nobody watches never reads the TAESD file. `method_used` and
    `notes` are known after the first render.
    """

    settings: PreviewSettings
    model: LoadedModel | None = None
    models_dir: Path | None = None
    method_used: PreviewMethod | None = field(default=None, init=False)
    notes: list[PreviewNote] = field(default_factory=list, init=False)
    _taesd: TaesdDecoder | None = field(default=None, init=False, repr=False)

    def render(self, latent: torch.Tensor) -> Image.Image:
        """The preview of a (B, 4, h, w) latent: a grid of the batch, or its first picture."""
        if self.method_used is None:
            self._choose(latent.device)
        batch = latent if self.settings.grid else latent[:1]
        with torch.no_grad():
            decoded = self._decode(batch.detach())
        return image_grid(to_images(decoded))

    def _choose(self, device: torch.device) -> None:
        requested = self.settings.method
        family = latent_family(self.model)
        if requested == "Full" and self.model is not None:
            self.method_used = "Full"
            return
        if requested == "Approx cheap":
            self.method_used = "Approx cheap"
            return
        if requested == "Full":  # no model to decode with (the stand-in engine)
            note = "live previews: 'Full' needs the model's VAE, which this engine has not; drawn with Approx cheap"
            self.notes.append(PreviewNote("preview_method_substituted", note))
            self.method_used = "Approx cheap"
            return
        path = taesd_path(self.models_dir, family)
        if requested == "Approx NN":
            self.notes.append(
                PreviewNote(
                    "preview_method_substituted",
                    "live previews: 'Approx NN' is drawn with TAESD (the reference's Approx NN weights are not "
                    "distributed with the farm)",
                )
            )
        if path is not None and path.is_file():
            self._taesd = load_taesd_decoder(path, device)
            self.method_used = "TAESD"
            return
        where = str(path) if path is not None else f"<models folder>/{TAESD_FOLDER}/{TAESD_FILES[family]}"
        self.notes.append(
            PreviewNote(
                "preview_decoder_missing",
                f"live previews: no TAESD decoder at {where}; drawn with Approx cheap (H/8 × W/8)",
            )
        )
        self.method_used = "Approx cheap"

    def _decode(self, latent: torch.Tensor) -> torch.Tensor:
        if self.method_used == "Full":
            assert self.model is not None
            return self.model.vae_decode(latent).float()
        if self.method_used == "TAESD":
            assert self._taesd is not None
            pictures = self._taesd(latent.to(torch.float32))
            return pictures * 2.0 - 1.0  # TAESD draws in [0, 1]; the common path reads [-1, 1]
        return approx_cheap(latent, latent_family(self.model))


# ----------------------------------------------------------------------------------------------------------------
# Pictures


def to_images(decoded: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in nominal [-1, 1] → RGB pictures: clamp((x + 1) / 2) · 255, truncated (the reference's way)."""
    pixels = (torch.clamp((decoded.float() + 1.0) / 2.0, 0.0, 1.0) * 255.0).to(torch.uint8)
    arrays = pixels.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(array, "RGB") for array in arrays]


def image_grid(images: Sequence[Image.Image]) -> Image.Image:
    """The pictures in a grid of round(√n) rows on white (one picture: itself)."""
    if len(images) == 1:
        return images[0]
    rows = max(1, round(math.sqrt(len(images))))
    cols = math.ceil(len(images) / rows)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height), "white")
    for index, image in enumerate(images):
        grid.paste(image, ((index % cols) * width, (index // cols) * height))
    return grid


@dataclass(frozen=True)
class EncodedPreview:
    mime: str
    data: bytes
    width: int
    height: int

    @property
    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


def encode_preview(
    image: Image.Image, *, max_side: int = MAX_PREVIEW_SIDE, max_bytes: int = MAX_PREVIEW_BYTES
) -> EncodedPreview:
    """PNG (the reference's format) when it fits in `max_bytes`, else JPEG, halved until it fits; scaled down first
    so that its longest side is at most `max_side`.

    PNG is only tried when the raw pixels are at most PNG_RAW_FACTOR × `max_bytes`: a PNG of a photo-like picture is
    barely smaller than its raw pixels (550 KB for 512²), and trying costs ~120 ms of the sampling thread.
    """
    picture = image.convert("RGB")
    if max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    while True:
        raw_bytes = picture.width * picture.height * 3
        formats = [("image/jpeg", "JPEG", {"quality": JPEG_QUALITY})]
        if raw_bytes <= PNG_RAW_FACTOR * max_bytes:
            formats.insert(0, ("image/png", "PNG", {}))
        for mime, fmt, options in formats:
            buffer = io.BytesIO()
            picture.save(buffer, format=fmt, **options)
            if buffer.tell() <= max_bytes or min(picture.size) <= 8:
                return EncodedPreview(mime, buffer.getvalue(), picture.width, picture.height)
        picture = picture.resize((max(1, picture.width // 2), max(1, picture.height // 2)), Image.Resampling.BOX)

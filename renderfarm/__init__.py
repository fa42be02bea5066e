"""renderfarm: a distributed img2img / inpainting render farm with AUTOMATIC1111 semantics on diffusers."""

__version__ = "0.1.0"

__all__ = ["__version__"]

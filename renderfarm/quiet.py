"""Quiet start-up: the server commands print their own lines, and third-party libraries only what matters.

Without this, `renderfarm up` and `demo` print transformers' progress bars and its notes about torchvision, kombu's
warnings, alembic's INFO lines for every migration check and uvicorn's four start-up lines, none of which a user can
act on. Third-party loggers show warnings and worse (errors only with `--log-level error`); `--log-level debug`
shows everything, for debugging those libraries. The environment variables are set before the libraries are
imported (they read them once) and reach the worker processes `renderfarm worker` starts.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Final

__all__ = ["quiet_third_party"]

# Read by the Hugging Face libraries when they are imported: no tqdm bars, no advisory notes.
QUIET_ENVIRONMENT: Final = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "DIFFUSERS_VERBOSITY": "error",
}
THIRD_PARTY_LOGGERS: Final = (
    "alembic",
    "kombu",
    "celery",
    "amqp",
    "transformers",
    "diffusers",
    "huggingface_hub",
    "httpx",
    "httpcore",
    "botocore",
    "boto3",
    "urllib3",
    "uvicorn.error",  # "Started server process", "Waiting for application startup", ...: our own line says it
)
WARNING_MODULES: Final = r"(torchvision|kombu|celery|transformers|diffusers|huggingface_hub|timm)(\..*)?"


def quiet_third_party(level: str) -> None:
    """Silence the libraries' noise for a server command run at `level` (a --log-level choice)."""
    if level.lower() == "debug":
        return
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    floor = max(logging.WARNING, logging.getLevelName(level.upper()))
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(floor)
    # The embedded farm's in-memory broker has no host, and kombu warns about that on every connection.
    logging.getLogger("kombu.connection").setLevel(max(logging.ERROR, floor))
    warnings.filterwarnings("ignore", module=WARNING_MODULES)
    _quiet_loaded_libraries()


def _quiet_loaded_libraries() -> None:
    """The libraries already imported read their environment too early: tell them directly."""
    import sys

    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    if "diffusers" in sys.modules:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
        diffusers_logging.disable_progress_bar()

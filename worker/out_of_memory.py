"""Out of GPU memory: how to recognise it, free memory after it, and split a batch to retry smaller."""

from __future__ import annotations

import gc

import torch

from shared.job.spec import Img2ImgJob


def smaller_batch(job: Img2ImgJob) -> Img2ImgJob | None:
    """The job split into batches of half the size or less (more n_iter, same images and seeds), or None.

    None when the batch cannot be split: one image per batch, or one init image per batch slot (the slots would
    change pictures).
    """
    size = job.batch_size
    if size <= 1 or len(job.init_images) > 1:
        return None
    smaller = max(d for d in range(1, size // 2 + 1) if size % d == 0)
    return job.model_copy(update={"batch_size": smaller, "n_iter": job.n_iter * (size // smaller)})


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or a RuntimeError whose message says so (older kernels, other backends)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def free_memory() -> None:
    """Give the memory of a failed render back (Python's garbage, then CUDA's cached blocks) before a retry."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

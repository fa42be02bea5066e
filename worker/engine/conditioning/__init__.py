"""Prompt conditioning: prompt text → scheduled CLIP conditionings for the CFG denoiser (docs/engine.md, "Prompt
encoding").

* :mod:`.emphasis` — the emphasis modes' maths.
* :mod:`.encoder` — chunks of 75 tokens → `(B, 77·K, C)` through a :class:`TextBackend`.
* :mod:`.clip` — the loaded model's CLIP as a backend.
* :mod:`.schedules` — scheduled conds, AND sub-prompts, the per-evaluation lookup.
* :mod:`.conds` — building a batch's scheduled conds from its prompts.
"""

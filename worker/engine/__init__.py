"""The renderer: the webui's img2img job on diffusers (img2img-semantics.md), with no farm in it.

`processing` (the job: init, sample, infotext, `process_images`), `pixel_stage` and `imaging` (everything before the
VAE), `latents` (the VAE side of init), `guidance` (classifier-free guidance), `results` (decode, `Processed`),
`color_correction`, `noise` (seeds), `options` (the webui options a job may override), `sampling` (schedules, the
plan, the steps, the loop), `models` (loading, the tiny models) and `diffusers_internals` (every reach past
diffusers' public API). It imports torch, diffusers and the pure job contract (`shared.job`, ...),
never the database, storage, live status, Celery or the broker: the farm side in `worker/` calls it
(tests/unit/test_layering.py holds it to that).
"""

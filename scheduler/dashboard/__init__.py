"""The web dashboard served by the scheduler under `/ui/` (docs/dashboard.md): queue, jobs, batches, workers."""

"""renderfarm's benchmarks: `python -m bench` (or `./dev.sh bench`, `make bench`). See bench/__main__.py.

One module per benchmark, each with `run(config) -> list[BenchResult]`:

    engine      the engine against diffusers' own pipelines on the same model and work (time ratio, pixel agreement)
    overhead    one job end to end through the farm against the engine alone (ratio, ms per job, breakdown)
    throughput  submissions, batch items and status reads per second, next to bare Celery publishing
    scaling     1..32 stand-in workers against the ideal N / render time; a 10,000-job drain, exactly once
    growth      status read latency with 10^3 and with 10^6 jobs in the table
"""

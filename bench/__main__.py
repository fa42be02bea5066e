"""`python -m bench`: run the benchmarks, print their figures, append a dated section to bench/RESULTS.md.

    python -m bench                      quick mode (the default; under 10 minutes on a 2-core machine)
    python -m bench --full               the long run (10,000-job drain, SD1.5-shaped model at 512×512, more repeats)
    python -m bench --only engine,growth some benchmarks only (engine, lora, overhead, throughput, scaling, growth)
    python -m bench --gpu                on a CUDA machine: engine (SD1.5-shaped, fp16, 512×512, 20 steps, batch 1
                                         and 4; SDXL-shaped, fp16 with its fp32 VAE, 1024×1024, engine only), LoRA
                                         switching and renders, and farm overhead at the SD1.5 settings
    python -m bench --results PATH       append to PATH instead of bench/RESULTS.md (--json PATH: also as JSON)

`./dev.sh bench [args]` (or `make bench`) sets up the virtual environment, starts PostgreSQL and Redis, and runs
this. Every benchmark makes its own database, Redis database number, S3 server and processes, and removes them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.config import Config, config_for
from bench.results import DEFAULT_RESULTS, BenchResult, append_results, machine_info, render_section, write_json

BENCHMARKS = ("engine", "lora", "overhead", "throughput", "scaling", "growth")
GPU_BENCHMARKS = ("engine", "lora", "overhead")


def machine_note(load_at_start: float, cores: int) -> str:
    """What the reader should know about the machine's load: busy (other work was running) or idle at the start."""
    if load_at_start >= 0.5 * cores:
        return (
            f"The machine was busy when this run began (load average {load_at_start:.1f} on {cores} cores): absolute "
            "times are noisy; the ratios come from alternating the two sides within one run."
        )
    return (
        f"The machine was idle when this run began (load average {load_at_start:.1f} on {cores} cores); the ratios "
        "come from alternating the two sides within one run."
    )


def _runner(name: str) -> Callable[[Config], list[BenchResult]]:
    # Imported on demand: the engine benchmark imports torch and diffusers, the others need neither in this process.
    module = __import__(f"bench.{name}", fromlist=["run"])
    run: Callable[[Config], list[BenchResult]] = module.run
    return run


def _shown_args(args: list[str]) -> list[str]:
    """The command line as the results file shows it: without --note text and output paths."""
    shown: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in ("--note", "--json", "--results"):
            skip = True
            continue
        if arg.startswith(("--note=", "--json=", "--results=")):
            continue
        shown.append(arg)
    return shown


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--quick", dest="mode", action="store_const", const="quick", help="quick mode (default)")
    modes.add_argument("--full", dest="mode", action="store_const", const="full", help="the long run")
    modes.add_argument(
        "--tiny",
        dest="mode",
        action="store_const",
        const="tiny",
        help="smallest sizes, for the smoke test (figures mean nothing)",
    )
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--gpu", action="store_true", help="run the GPU benchmarks (needs CUDA)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="the markdown file to append to")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    parser.add_argument("--note", action="append", default=[], help="a line to add to the section (repeatable)")
    parser.set_defaults(mode="quick")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # One torch thread unless told otherwise: on a small shared machine a second OpenMP thread that gets
    # descheduled stalls every kernel (see tests/engine/conftest.py). Recorded with the results.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = config_for(args.mode, gpu=args.gpu)
    available = GPU_BENCHMARKS if args.gpu else BENCHMARKS
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(available)
    unknown = [name for name in chosen if name not in available]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {', '.join(available)}", file=sys.stderr)
        return 2
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            print("--gpu: no CUDA device is visible (torch.cuda.is_available() is false)", file=sys.stderr)
            return 2
    load_at_start = os.getloadavg()[0]
    machine = machine_info()
    machine["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    print("machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()), flush=True)
    results: list[BenchResult] = []
    failed = False
    started = time.monotonic()
    for name in chosen:
        print(f"=== {name} ({config.mode}{', gpu' if config.gpu else ''})", flush=True)
        begin = time.monotonic()
        try:
            results += _runner(name)(config)
        except Exception as exc:  # one broken benchmark must not lose the others' figures
            traceback.print_exc()
            failed = True
            results.append(BenchResult(name, f"{name}: FAILED", skipped=f"failed: {type(exc).__name__}: {exc}"))
        print(f"=== {name} took {time.monotonic() - begin:.0f} s", flush=True)
    command = "python -m bench " + " ".join(_shown_args(list(argv if argv is not None else sys.argv[1:])))
    preface = [f"Total wall time {time.monotonic() - started:.0f} s.", ""]
    load_note = machine_note(load_at_start, os.cpu_count() or 1)
    preface += [*(f"{line}" for line in args.note), load_note if not args.gpu else "", ""]
    section = render_section(
        results, machine, mode=config.mode + (" gpu" if config.gpu else ""), command=command.strip(), preface=preface
    )
    append_results(args.results, section)
    if args.json is not None:
        write_json(args.json, results, machine, config.mode)
    print(f"appended to {args.results}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Forward-pass answers/s of run folders on their test split: the model's part of `dsrsd evaluate`.

    python benchmarks/eval_forward_bench.py RUN [RUN ...] [--batches 30] [--rounds 3] [--threads 2]
                                            [--eval-batch-size N]

Each run's first `--batches` test batches (the run's eval_batch_size, or N) are loaded once; then,
round after round, every run scores all of them under torch.inference_mode, the runs alternating
within a round so that the machine's drift hits them alike. Prints answers/s per round and the
median per run. Data loading, metrics and the predictions file are left out: `dsrsd evaluate RUN
--no-robustness` times the whole command (benchmarks/scale_bench.py does, on generated KT1 data).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dsrsd_cli.engine.runs import load_run


def load_test_batches(run_dir: str, n_batches: int, eval_batch_size: int | None):
    """(model, the first n_batches test batches, their scored answers) of a run folder."""
    run = load_run(run_dir)
    if eval_batch_size:
        run.cfg.train.eval_batch_size = eval_batch_size
    batches = [batch for _, batch in zip(range(n_batches), run.loader("test"))]
    if not batches:
        raise SystemExit(f"{run_dir}: its test split has no rows to score")
    return run.model, batches, sum(int(batch.mask.sum()) for batch in batches)


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Prints the figures; returns run -> median answers/s."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-batch-size", type=int, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = {run: load_test_batches(run, args.batches, args.eval_batch_size) for run in args.runs}
    rates: dict[str, list[float]] = {run: [] for run in args.runs}
    with torch.inference_mode():
        for model, batches, _ in loaded.values():
            model(batches[0])                                    # warm-up: first-call allocations
        for r in range(args.rounds):
            for run, (model, batches, answers) in loaded.items():
                start = time.perf_counter()
                for batch in batches:
                    model(batch)
                rates[run].append(answers / (time.perf_counter() - start))
                print(f"round {r}: {run}: {rates[run][-1]:,.0f} answers/s", flush=True)
    for run, (_, batches, answers) in loaded.items():
        print(f"{run}: median {statistics.median(rates[run]):,.0f} answers/s forward "
              f"({answers:,} scored answers in {len(batches)} batches, {args.threads} threads)")
    return {run: statistics.median(rates[run]) for run in args.runs}


if __name__ == "__main__":
    main()

"""Parameter count and median forward+backward time of every registered model.

Same fake batch for every model: EdNet B=64 x T=100 at real vocabulary sizes, OULAD
B=256; default ModelConfig sizes (d_model 64). Training mode, task + auxiliary losses.

    python benchmarks/model_bench.py [--reps 3] [--device cpu] [--threads 1]

One CPU thread by default: stable numbers for comparing models on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from model_fakes import ednet_batch, ednet_spec, oulad_batch, oulad_spec  # noqa: E402

from dsrsd_cli.config import DSRSDConfig, ModelConfig  # noqa: E402
from dsrsd_cli.model import build_model, model_names  # noqa: E402
from dsrsd_cli.model.losses import task_loss  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(model: torch.nn.Module, batch, n_outputs: int, device: torch.device, reps: int) -> float:
    """Median seconds of one forward + backward (after one warm-up step)."""
    times = []
    for i in range(reps + 1):
        sync(device)
        start = time.perf_counter()
        out = model(batch)
        loss = task_loss(out.logits, batch.target, batch.mask, n_outputs) + sum(out.aux["losses"].values())
        loss.backward()
        model.zero_grad(set_to_none=True)
        sync(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    # EdNet at its real vocabulary sizes (13,169 questions, 189 tags); OULAD at 40 weeks.
    ednet = ednet_spec(max_len=100, n_questions=13_170, n_bundles=9_535, n_tags=190, n_sources=10, tags_per_question=6)
    oulad = oulad_spec(weeks=40, activity_types=20, assessments=14)
    cases = [("ednet", ednet, ednet_batch(ednet, batch_size=64, seed=0)),
             ("oulad", oulad, oulad_batch(oulad, batch_size=256, seed=0))]

    print(f"device {device}, torch threads {torch.get_num_threads()}, median of {args.reps} steps")
    print(f"{'dataset':<8} {'model':<22} {'params':>10} {'fwd+bwd ms':>11}")
    for dataset, spec, batch in cases:
        batch = batch.to(device)
        for name in model_names(spec, kind="neural"):   # gbdt has no gradient step
            torch.manual_seed(0)
            model = build_model(spec, ModelConfig(name=name), DSRSDConfig()).to(device).train()
            params = sum(p.numel() for p in model.parameters())
            seconds = time_step(model, batch, spec.n_outputs, device, args.reps)
            print(f"{dataset:<8} {name:<22} {params:>10,} {seconds * 1e3:>11.1f}", flush=True)


if __name__ == "__main__":
    main()

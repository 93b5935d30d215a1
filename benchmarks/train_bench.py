"""Training throughput and peak memory of every registered model, on the SAME batches.

Prepares the built-in EdNet sample (small), takes the first warm-up + timed batches of the
train loader once (seeded, so every model sees the same ones), and for each model runs
training steps exactly like `dsrsd train` (forward, task loss + auxiliary losses, backward,
clipping, AdamW). Each model runs in its own subprocess so that its peak memory is its own,
and the models take turns for --rounds rounds (a, b, c, a, b, c, ...), so that a slow spell
of this shared machine falls on every model alike.

  rows/s     scored positions per second: median over every round's timed steps of rows / step time
  peak MiB   CPU: peak resident memory during the steps minus the resident memory before
             the model was built (Linux VmHWM, reset through /proc/self/clear_refs);
             CUDA: torch.cuda.max_memory_allocated

Prints a table and the ratios rows/s(dsrsd) / rows/s(single:item) (target >= 0.5) and
rows/s(dsrsd) / rows/s(concat) (same encoders, so the fusion's own cost; target >= 0.8).

  python benchmarks/train_bench.py --learners 300 --steps 8 --device cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _read_status(field: str) -> int | None:
    """A memory field of /proc/self/status, in bytes (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        pass


def run_one(args) -> dict:
    """One model: build, warm up, time; prints one JSON line."""
    import torch

    from dsrsd_cli.config import load_config
    from dsrsd_cli.data.loader import make_loader, make_spec, open_prepared
    from dsrsd_cli.engine.train import make_optimizer
    from dsrsd_cli.model.losses import combine, task_loss
    from dsrsd_cli.model.registry import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.preset, [f'data.path="{args.data}"', f"data.batch_size={args.batch_size}", f"model.name={json.dumps(args.one)}"])
    prepared = open_prepared(cfg.data.path)
    spec = make_spec(prepared, cfg.data)
    loader = make_loader(prepared, "train", cfg.data, shuffle=True, seed=0)
    batches = [b for _, b in zip(range(args.warmup + args.steps), loader)]
    device = torch.device(args.device)
    batches = [b.to(device) for b in batches]

    _reset_peak_rss()
    rss_before = _read_status("VmRSS")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(spec, cfg.model, cfg.dsrsd).to(device).train()
    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    rates = []
    for i, batch in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            output = model(batch)
            task = task_loss(output.logits, batch.target, batch.mask, spec.n_outputs)
            total, _ = combine(task, output.aux.get("losses", {}), cfg.loss)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            rates.append(int(batch.mask.sum()) / (time.perf_counter() - start))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        hwm = _read_status("VmHWM")
        peak = (hwm - rss_before) if hwm is not None and rss_before is not None else None
    return {
        "model": args.one,
        "rows_per_s": statistics.median(rates),
        "rates": rates,
        "peak_mib": None if peak is None else peak / 2**20,
        "parameters": sum(p.numel() for p in model.parameters()),
        "rows_per_step": statistics.mean(int(b.mask.sum()) for b in batches[args.warmup:]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--learners", type=int, default=300, help="learners in the built-in EdNet sample")
    parser.add_argument("--preset", default="default", help="model sizes come from this preset")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="turns each model takes (its medians pool every round)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", help="an already prepared EdNet folder (skips preparing the sample)")
    parser.add_argument("--models", help="comma-separated subset (default: every registered model)")
    parser.add_argument("--json", dest="json_out", help="also write the results to this JSON file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one model in this process
    args = parser.parse_args()

    if args.one:
        print(json.dumps(run_one(args)))
        return

    from rich.console import Console
    from rich.table import Table

    from dsrsd_cli.config import load_config
    from dsrsd_cli.data.loader import make_spec, open_prepared
    from dsrsd_cli.data.prepare import prepare_dataset
    from dsrsd_cli.model.registry import model_names

    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="dsrsd_bench_") as tmp:
        if args.data is None:
            args.data = str(Path(tmp) / "ednet")
            console.print(f"preparing the built-in EdNet sample ({args.learners} learners) ...")
            prepare_dataset(dataset="ednet", raw=None, out=Path(args.data), sample_size=args.learners, seed=0, workers=1)
        cfg = load_config(args.preset, [f'data.path="{args.data}"'])
        names = args.models.split(",") if args.models else model_names(make_spec(open_prepared(args.data), cfg.data), kind="neural")
        by_model: dict[str, dict] = {}
        for round_ in range(args.rounds):
            for name in names:
                cmd = [sys.executable, __file__, "--one", name, "--data", args.data, "--preset", args.preset,
                       "--batch-size", str(args.batch_size), "--warmup", str(args.warmup), "--steps", str(args.steps),
                       "--device", args.device, "--threads", str(args.threads)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    console.print(f"[red]{name} failed[/red]: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
                    continue
                one = json.loads(done.stdout.strip().splitlines()[-1])
                console.print(f"  round {round_ + 1}, {name}: {one['rows_per_s']:,.0f} rows/s")
                if name in by_model:   # pool the rounds: every timed step, the largest peak
                    kept = by_model[name]
                    kept["rates"] += one["rates"]
                    kept["rows_per_s"] = statistics.median(kept["rates"])
                    if one["peak_mib"] is not None and kept["peak_mib"] is not None:
                        kept["peak_mib"] = max(kept["peak_mib"], one["peak_mib"])
                else:
                    by_model[name] = one
        results = list(by_model.values())

    table = Table(title=f"Training throughput, {args.device}, batch {args.batch_size}, preset {args.preset} sizes")
    for column in ("model", "rows/s", "peak MiB", "parameters"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in results:
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        table.add_row(r["model"], f"{r['rows_per_s']:,.0f}", peak, f"{r['parameters']:,}")
    console.print(table)
    by_name = {r["model"]: r for r in results}
    ratio = ratio_concat = None
    if "dsrsd" in by_name and "single:item" in by_name:
        ratio = by_name["dsrsd"]["rows_per_s"] / by_name["single:item"]["rows_per_s"]
        console.print(f"rows/s ratio dsrsd / single:item = {ratio:.2f} (target >= 0.5): {'ok' if ratio >= 0.5 else 'BELOW TARGET'}")
    if "dsrsd" in by_name and "concat" in by_name:   # the same encoders: what the fusion itself costs
        ratio_concat = by_name["dsrsd"]["rows_per_s"] / by_name["concat"]["rows_per_s"]
        console.print(f"rows/s ratio dsrsd / concat = {ratio_concat:.2f} (target >= 0.8): "
                      f"{'ok' if ratio_concat >= 0.8 else 'BELOW TARGET'}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"results": results, "ratio_dsrsd_single_item": ratio, "ratio_dsrsd_concat": ratio_concat}, indent=2) + "\n")


if __name__ == "__main__":
    main()

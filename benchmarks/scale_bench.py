"""Issue 12 at scale: prepare, train and evaluate on generated KT1 zips of N learners.

    python benchmarks/scale_bench.py                                 # N = 100,000 and 200,000
    python benchmarks/scale_bench.py --full --work /data/sb --keep   # also N = 784,309 (the whole KT1)
    python benchmarks/scale_bench.py --sizes 2000 --work /tmp/sb --keep --json sb.json   # a quick check
    python benchmarks/scale_bench.py --sizes "" --kt4 10000                 # KT4: prepare alone
    python benchmarks/scale_bench.py --full --prepare-only --work /data/sb  # KT1: prepare alone, every size

For each N, in --work (default a temp folder; the command outputs go to WORK/logs/). Without
--keep a size's zip, prepared folder and runs are removed once it is done; with --keep a rerun
reuses the zip of the same N, and the prepared folder with its measured figures while
dsrsd_cli/data/*.py is unchanged (--redo-prepare measures it again):
  generate   a KT1-format zip of N learners (~120 answers each; prepare_bench.write_kt1_zip),
             timed apart: no target;
  prepare    `dsrsd prepare --dataset ednet --workers 2` in a child process: wall seconds,
             answers/s (manifest rows_out / wall seconds, imports included);
  train      `dsrsd train --preset default --device cpu`, 1 epoch of 30 steps, with 1 and with
             2 processes (--nproc 2, torchrun): the whole command (it also validates, then
             evaluates valid + test) and the time from launch to the run log's
             `first step done:` line (when this script saw it, polling every 50 ms, and the
             seconds the line states itself; n/a when the line never appears);
  evaluate   `dsrsd evaluate RUN --no-robustness` on test, on the CPU (CUDA hidden), with 1
             process and, if `dsrsd evaluate --help` lists --nproc, with 2: answers/s from
             the n of RUN/eval/test.json;
  kt4        with --kt4 N: a KT4-format zip of N learners (each a real learner of the KT4
             extract in tests/fixtures, time-shifted; ~2,150 actions each) and its prepare alone:
             actions/s (manifest rows_in / wall seconds) and peak RSS, same targets per action;
  cuda       only when torch.cuda.is_available(): default preset, bf16 (cfg.train.bf16), in
             this process with dsrsd_cli's loader and model: answers/s over 50 steps after 10
             warm-up steps (batches loaded inline, as `dsrsd train` does) and the projected
             time of one epoch over every train batch.
Memory of a command: peak RSS (and PSS) summed over its whole process tree (the child, the
prepare workers, torchrun and its workers), and the peak RSS of any one process in it, from
/proc every 40 ms (prepare_bench._tree; PSS every second, as reading it slows the measured
command). --train-timeout kills a train command (its process
group) and reports it as killed.

Targets (issue 12; 2 cores): prepare >= 1,000,000 answers/s end to end and peak RSS < 1 GB
over all processes; train peak RSS < 3 GB per process at full size (784,309 learners) and
flat, < 1.2x from 200,000 to 784,309; time to first step < 30 s at full size; evaluate
>= 100,000 answers/s per process on the CPU for model dsrsd.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_bench import _tree, write_kt1_zip, write_kt4_zip  # noqa: E402

FULL_KT1 = 784_309
MB = 2**20
DSRSD = [sys.executable, "-m", "dsrsd_cli"]
RUN_LOG = "log.txt"   # dsrsd_cli.engine.runs.LOG_FILE (importing it would import torch)
FIRST_STEP = re.compile(r"first step done:(.*)")
# disk per learner, measured at N = 2,000 (zip 3.4 MB; prepared folder 26 MB, 21 MB of it arrays/)
ZIP_BYTES_PER_LEARNER, PREPARED_BYTES_PER_LEARNER = 1_800, 14_000


# ---------------------------------------------------------------- measuring a command

class TreeSampler(threading.Thread):
    """Peak RSS and PSS summed over a process tree, peak RSS of any one process in it, and
    the CPU seconds of the tree, sampled every `interval` seconds (PSS every PSS_EVERY-th)."""

    def __init__(self, pid: int, interval: float = 0.04):   # one sample: ~1-2 ms of CPU
        super().__init__(daemon=True)
        self.pid, self.interval, self.done = pid, interval, threading.Event()
        self.rss = self.pss = self.proc_rss = 0
        self.proc = ""   # the command line of the process with the peak RSS
        self.cpu: dict[int, float] = {}

    PSS_EVERY = 25   # samples: PSS (smaps_rollup) is costly to read, RSS (statm) is not

    def run(self) -> None:
        n = 0
        while not self.done.is_set():
            rss, pss, tree, sizes = _tree(self.pid, with_pss=n % self.PSS_EVERY == 0)
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            n += 1
            top, pid = max((size, p) for p, size in sizes.items())
            if top > self.proc_rss:
                self.proc_rss, self.proc = top, _cmdline(pid)
            self.cpu.update(tree)   # cumulative per process: the last reading before it exits
            time.sleep(self.interval)

    def stop(self) -> dict:
        self.done.set()
        self.join()
        return {"peak_tree_rss_mb": self.rss / MB, "peak_tree_pss_mb": self.pss / MB,
                "peak_process_rss_mb": self.proc_rss / MB, "peak_process": self.proc, "tree_cpu_s": sum(self.cpu.values())}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160].strip()
    except OSError:
        return ""


def run_command(cmd: list[str], log: Path, *, timeout: float | None = None, env: dict | None = None, watch=None) -> dict:
    """Run `cmd` (output to `log`) in its own process group, sampling its process tree;
    `watch(elapsed_s)` is called every 50 ms. Past `timeout` the group is killed."""
    killed, load = False, os.getloadavg()[0]   # the machine is shared: how busy it was at the start
    with open(log, "w") as out:
        start = time.perf_counter()
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        sampler = TreeSampler(child.pid)
        sampler.start()
        while child.poll() is None:
            if watch:
                watch(time.perf_counter() - start)
            if timeout and time.perf_counter() - start > timeout:
                _kill_group(child)
                killed = True
            time.sleep(0.05)
        seconds = time.perf_counter() - start
    if watch:
        watch(seconds)   # a line written just before the exit
    result = {"seconds": seconds, "returncode": child.returncode, "killed": killed, "load_1m": load, **sampler.stop()}
    if child.returncode and not killed:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        print(f"  FAILED ({child.returncode}): {' '.join(cmd[2:])}\n    " + "\n    ".join(tail), flush=True)
    return result


def _kill_group(child: subprocess.Popen) -> None:
    """SIGTERM to the command's process group and every descendant (train saves its state),
    then SIGKILL to what is left. Descendants are named one by one: torchrun's workers may
    leave the group, and a killed agent's workers were seen running on, holding GBs."""
    family = set(_tree(child.pid)[2]) | {child.pid}
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)
        for pid in family:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(15 if sig == signal.SIGTERM else None)
        time.sleep(0.5 if sig == signal.SIGTERM else 0)


class FirstStepWatch:
    """The first `first step done:` line of the given files: when it was seen (seconds after
    launch) and the seconds it states (the first `<number> s` in it)."""

    def __init__(self, *files: Path):
        self.files, self.seen_s, self.stated_s, self.line = files, None, None, None

    def __call__(self, elapsed: float) -> None:
        for path in self.files if self.seen_s is None else ():
            try:
                match = FIRST_STEP.search(path.read_text(errors="replace"))
            except OSError:
                continue
            if match:
                self.seen_s, self.line = elapsed, match.group(0).strip()
                number = re.search(r"(\d+(?:\.\d+)?)\s*s\b", match.group(1))
                self.stated_s = float(number.group(1)) if number else None
                return


# ---------------------------------------------------------------- the stages

def ensure_zip(n: int, work: Path) -> tuple[Path, dict]:
    path = work / f"kt1_{n}.zip"
    if path.exists():
        return path, {"reused": True, "zip_mb": path.stat().st_size / MB}
    part = path.with_suffix(".zip.part")
    start = time.perf_counter()
    answers = write_kt1_zip(part, n, seed=0)
    part.rename(path)
    return path, {"seconds": time.perf_counter() - start, "answers": answers, "zip_mb": path.stat().st_size / MB}


def _data_code() -> str:
    """A hash of dsrsd_cli/data/*.py: a kept prepared folder is reused only while it is unchanged."""
    import hashlib

    data = Path(__file__).resolve().parents[1] / "dsrsd_cli" / "data"
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(data.glob("*.py")))).hexdigest()[:16]


def prepare_command(zip_path: Path, out: Path) -> list[str]:
    return [*DSRSD, "prepare", "--dataset", "ednet", "--raw", str(zip_path), "--out", str(out), "--force", "--workers", "2"]


def ensure_prepared(n: int, zip_path: Path, work: Path, redo: bool) -> tuple[Path, dict]:
    """The prepared folder and its figures; those of an earlier run when both were kept and
    the preparing code is the same."""
    out, figures = work / f"prepared_{n}", work / f"prepared_{n}.bench.json"
    kept = json.loads(figures.read_text()) if figures.exists() and (out / "manifest.json").exists() else {}
    if not redo and kept.get("data_code") == _data_code():
        return out, {**kept, "reused": True}
    r = run_command(prepare_command(zip_path, out), work / "logs" / f"prepare_{n}.txt")
    if r["returncode"] == 0:
        r["answers"] = json.loads((out / "manifest.json").read_text())["rows_out"]
        r["answers_per_s"], r["data_code"] = r["answers"] / r["seconds"], _data_code()
        figures.write_text(json.dumps(r, indent=2))
    return out, r


def train(n: int, data: Path, work: Path, nproc: int, timeout: float) -> dict:
    run = work / f"run_{n}_np{nproc}"
    shutil.rmtree(run, ignore_errors=True)
    log = work / "logs" / f"train_{n}_np{nproc}.txt"
    cmd = [*DSRSD, "train", "--preset", "default", "--data", str(data), "--out", str(run), "--device", "cpu",
           "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=30", *(["--nproc", str(nproc)] if nproc > 1 else [])]
    watch = FirstStepWatch(run / RUN_LOG, log)
    r = run_command(cmd, log, timeout=timeout, watch=watch)
    return {**r, "run": str(run), "first_step_s": watch.seen_s, "first_step_stated_s": watch.stated_s, "first_step_line": watch.line}


def evaluate(n: int, run: Path, work: Path, nproc: int) -> dict:
    if not (run / "model.safetensors").exists():
        return {"skipped": "the train run left no weights"}
    cmd = [*DSRSD, "evaluate", str(run), "--no-robustness", *(["--nproc", str(nproc)] if nproc > 1 else [])]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}   # the target is on the CPU; evaluate has no --device
    r = run_command(cmd, work / "logs" / f"evaluate_{n}_np{nproc}.txt", env=env)
    if r["returncode"] == 0:
        r["answers"] = json.loads((run / "eval" / "test.json").read_text())["metrics"]["n"]
        r["answers_per_s"] = r["answers"] / r["seconds"]
        r["answers_per_s_per_process"] = r["answers_per_s"] / nproc
    return r


def cuda_throughput(data: Path, *, warmup: int = 10, steps: int = 50, device: str = "cuda") -> dict:
    """Training steps at the default preset, bf16 as cfg.train.bf16 says, batches loaded inline."""
    import torch

    from dsrsd_cli.config import load_config
    from dsrsd_cli.data.loader import make_loader, make_spec, open_prepared
    from dsrsd_cli.engine.train import make_optimizer
    from dsrsd_cli.model import losses
    from dsrsd_cli.model.registry import build_model

    def step(batch) -> int:   # as Trainer._step
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cfg.train.bf16 and device == "cuda"):
            output = model(batch)
            task = losses.task_loss(output.logits, batch.target, batch.mask, spec.n_outputs)
            total, _ = losses.combine(task, output.aux.get("losses", {}), cfg.loss)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.clip_grad)
        optimizer.step()
        return int(batch.mask.sum())

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    cfg = load_config("default", [f"data.path={json.dumps(str(data))}"])
    prepared = open_prepared(cfg.data.path)
    spec = make_spec(prepared, cfg.data)
    loader = make_loader(prepared, "train", cfg.data, shuffle=True, seed=0)
    torch.manual_seed(0)
    model = build_model(spec, cfg.model, cfg.dsrsd).to(device).train()
    optimizer = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    rows = timed = 0
    for i, batch in zip(range(warmup + steps), loader):
        if i == warmup:
            sync()
            start = time.perf_counter()
        n = step(batch.to(device))
        rows, timed = rows + n * (i >= warmup), timed + (i >= warmup)
    if not timed:
        return {"skipped": f"the train split has only {len(loader)} batches (< {warmup + 1})"}
    sync()
    seconds = time.perf_counter() - start
    return {"device": device, "bf16": cfg.train.bf16, "steps": timed, "answers_per_s": rows / seconds,
            "batches_per_epoch": len(loader), "epoch_s": len(loader) * seconds / timed}


def bench_kt4(n: int, work: Path) -> dict:
    """Prepare of a generated KT4 zip of n learners: actions/s and memory (no training)."""
    path, out = work / f"kt4_{n}.zip", work / f"prepared_kt4_{n}"
    start = time.perf_counter()
    actions = write_kt4_zip(path, n, seed=0)
    generated = time.perf_counter() - start
    r = run_command(prepare_command(path, out), work / "logs" / f"prepare_kt4_{n}.txt")
    r.update(learners=n, generate_s=generated, zip_mb=path.stat().st_size / MB, actions_written=actions)
    if r["returncode"] == 0:
        manifest = json.loads((out / "manifest.json").read_text())
        r["actions"], r["answers"] = manifest["rows_in"], manifest["rows_out"]
        r["actions_per_s"] = r["actions"] / r["seconds"]
    return r


def bench_size(n: int, work: Path, args, eval_nproc: bool) -> dict:
    r = {"learners": n}
    zip_path, r["generate"] = ensure_zip(n, work)
    data, r["prepare"] = ensure_prepared(n, zip_path, work, args.redo_prepare)
    if args.prepare_only:
        skipped = {"skipped": "--prepare-only"}
        return {**r, "train_np1": skipped, "train_np2": skipped, "evaluate_np1": skipped, "evaluate_np2": skipped, "cuda": skipped}
    for p in (1, 2):
        print(f"N={n:,}: zip and prepared folder ready; training with {p} process(es)", flush=True)
        r[f"train_np{p}"] = train(n, data, work, p, args.train_timeout)
    if args.evaluate_max is not None and n > args.evaluate_max:
        r["evaluate_np1"] = r["evaluate_np2"] = {"skipped": f"--evaluate-max {args.evaluate_max:,}"}
    else:
        r["evaluate_np1"] = evaluate(n, work / f"run_{n}_np1", work, 1)
        r["evaluate_np2"] = evaluate(n, work / f"run_{n}_np1", work, 2) if eval_nproc else {"skipped": "dsrsd evaluate has no --nproc"}
    import torch

    r["cuda"] = cuda_throughput(data) if torch.cuda.is_available() else {"skipped": "no CUDA device"}
    return r


# ---------------------------------------------------------------- report

def _f(value, spec: str = ",.0f") -> str:
    return "n/a" if value is None else format(value, spec)


def print_size(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"N = {r['learners']:,} learners")
    for column in ("stage", "wall s", "answers/s", "tree RSS MB", "tree PSS MB", "max proc RSS MB", "tree CPU s", "first step s", "load", "note"):
        table.add_column(column, justify="left" if column in ("stage", "note") else "right")
    g = r["generate"]
    table.add_row("generate zip", "" if g.get("reused") else f"{g['seconds']:.1f}", "", "", "", "", "", "", "", f"{g['zip_mb']:.0f} MB zip" + (", reused" if g.get("reused") else ""))
    for key, label in (("prepare", "prepare (2 workers)"), ("train_np1", "train, 1 process"), ("train_np2", "train, 2 processes"),
                       ("evaluate_np1", "evaluate, 1 process"), ("evaluate_np2", "evaluate, 2 processes")):
        s = r[key]
        if "skipped" in s:
            table.add_row(label, "", "", "", "", "", "", "", "", s["skipped"])
            continue
        first = f"{_f(s['first_step_s'], '.1f')} / {_f(s['first_step_stated_s'], '.1f')}" if "first_step_s" in s else ""
        note = "KILLED (timeout)" if s["killed"] else ("reused figures" if s.get("reused") else ("" if s["returncode"] == 0 else f"exit {s['returncode']}"))
        rate = "" if key.startswith("train") else _f(s.get("answers_per_s"))
        table.add_row(label, f"{s['seconds']:.1f}", rate, f"{s['peak_tree_rss_mb']:.0f}", f"{s['peak_tree_pss_mb']:.0f}",
                      f"{s['peak_process_rss_mb']:.0f}", f"{s['tree_cpu_s']:.1f}", first, f"{s['load_1m']:.1f}", note)
    Console(width=160).print(table)
    print("first step s: seen in the log after launch / stated by the line itself (seconds after its process started); "
          "load: 1-minute load average when the command started (2 cores: above ~0.5 the figures are not clean)")
    c = r["cuda"]
    print(f"cuda: {c['skipped']}" if "skipped" in c else
          f"cuda ({'bf16' if c['bf16'] else 'fp32'}): {c['answers_per_s']:,.0f} answers/s over {c['steps']} steps; "
          f"one epoch ({c['batches_per_epoch']:,} batches) ~ {c['epoch_s'] / 60:.1f} min")


def _verdict(value, ok) -> str:
    return "n/a" if value is None else ("met" if ok(value) else "MISSED")


def print_kt4(r: dict) -> None:
    print(f"KT4, N = {r['learners']:,} learners ({r.get('actions', r['actions_written']):,} actions, {r.get('answers', 0):,} answers; "
          f"zip {r['zip_mb']:.0f} MB, generated in {r['generate_s']:.0f} s): prepare {r['seconds']:.1f} s, "
          f"{_f(r.get('actions_per_s'))} actions/s, peak tree RSS {r['peak_tree_rss_mb']:.0f} MB "
          f"(max process {r['peak_process_rss_mb']:.0f} MB), tree CPU {r['tree_cpu_s']:.1f} s, load {r['load_1m']:.1f}"
          + ("" if r["returncode"] == 0 else f", exit {r['returncode']}"))


def targets(results: list[dict], kt4: dict | None = None) -> list[dict]:
    rows = []

    def add(name, value, unit, ok):
        rows.append({"target": name, "value": value, "unit": unit, "verdict": _verdict(value, ok)})

    if kt4 is not None:
        add(f"prepare >= 1,000,000 actions/s, KT4 N={kt4['learners']:,}", kt4.get("actions_per_s"), "actions/s", lambda v: v >= 1e6)
        add(f"prepare peak tree RSS < 1 GB, KT4 N={kt4['learners']:,}", kt4.get("peak_tree_rss_mb"), "MB", lambda v: v < 1024)
    if not results:
        return rows

    for r in results:
        n, p = r["learners"], r["prepare"]
        add(f"prepare >= 1,000,000 answers/s, N={n:,}", p.get("answers_per_s"), "answers/s", lambda v: v >= 1e6)
        add(f"prepare peak tree RSS < 1 GB, N={n:,}", p.get("peak_tree_rss_mb"), "MB", lambda v: v < 1024)
        for k in (1, 2):
            e = r[f"evaluate_np{k}"]
            add(f"evaluate >= 100,000 answers/s per process (CPU, {k} proc), N={n:,}", e.get("answers_per_s_per_process"), "answers/s", lambda v: v >= 1e5)
    big = max(results, key=lambda r: r["learners"])
    at = "full size" if big["learners"] == FULL_KT1 else f"N={big['learners']:,}, not full size"
    base = next((r for r in results if r["learners"] == 200_000), None)
    for k in (1, 2):
        t = big[f"train_np{k}"]
        if "skipped" in t:
            continue
        add(f"train peak RSS < 3 GB per process ({k} proc), {at}", t["peak_process_rss_mb"], "MB", lambda v: v < 3072)
        add(f"time to first step < 30 s ({k} proc), {at}", t["first_step_s"], "s", lambda v: v < 30)
        if base is not None and big is not base:
            ratio = t["peak_process_rss_mb"] / base[f"train_np{k}"]["peak_process_rss_mb"]
            add(f"train RSS flat: N={big['learners']:,} / N=200,000 < 1.2 ({k} proc)", ratio, "x", lambda v: v < 1.2)
    return rows


def print_targets(rows: list[dict]) -> None:
    print("\nIssue 12 targets:")
    for row in rows:
        value = _f(row["value"], ".2f" if row["unit"] == "x" else ",.1f")
        print(f"  {row['verdict']:6}  {row['target']}: {value} {row['unit']}")


# ---------------------------------------------------------------- main

def check_disk(sizes: list[int], work: Path, keep: bool) -> None:
    """Without --keep each size's files are removed before the next size: the largest counts."""
    need = [n * (ZIP_BYTES_PER_LEARNER * (not (work / f"kt1_{n}.zip").exists())
                 + PREPARED_BYTES_PER_LEARNER * (not (work / f"prepared_{n}").exists())) for n in sizes]
    need, free = (sum(need) if keep else max(need, default=0)) + 200 * MB, shutil.disk_usage(work).free   # + run folders
    print(f"disk: ~{need / 2**30:.1f} GB needed in {work} (zips, prepared folders, runs), {free / 2**30:.0f} GB free", flush=True)
    if need > free:
        raise SystemExit("not enough free disk; choose another --work or fewer --sizes")


def remove_size(n: int, work: Path) -> None:
    for path in (work / f"kt1_{n}.zip", work / f"prepared_{n}.bench.json"):
        path.unlink(missing_ok=True)
    for path in (work / f"prepared_{n}", work / f"run_{n}_np1", work / f"run_{n}_np2"):
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,200000", help="comma-separated learner counts")
    parser.add_argument("--full", action="store_true", help=f"also N = {FULL_KT1:,}, the whole KT1 (~{FULL_KT1 * (ZIP_BYTES_PER_LEARNER + PREPARED_BYTES_PER_LEARNER) / 2**30:.0f} GB of disk)")
    parser.add_argument("--work", help="working folder (default: a temp folder); its logs/ are kept")
    parser.add_argument("--keep", action="store_true", help="keep the zips, prepared folders and runs (a rerun reuses the first two)")
    parser.add_argument("--redo-prepare", action="store_true", help="measure prepare again even if a kept prepared folder exists")
    parser.add_argument("--train-timeout", type=float, default=1800, help="seconds before a train command is killed")
    parser.add_argument("--evaluate-max", type=int, help="evaluate only sizes up to this many learners (evaluate's "
                        "answers/s hardly depends on N, and the full test split takes long on a CPU)")
    parser.add_argument("--prepare-only", action="store_true", help="KT1 sizes: generate and prepare only (no train, evaluate, cuda)")
    parser.add_argument("--kt4", type=int, help="also prepare a generated KT4 zip of this many learners (~2,150 actions each)")
    parser.add_argument("--json", dest="json_out", help="also write every figure to this JSON file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s] + ([FULL_KT1] if args.full and str(FULL_KT1) not in args.sizes.split(",") else [])
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dsrsd-scale-"))
    (work / "logs").mkdir(parents=True, exist_ok=True)
    check_disk(sizes, work, args.keep)
    eval_nproc = "--nproc" in subprocess.run([*DSRSD, "evaluate", "--help"], capture_output=True, text=True,
                                             env={**os.environ, "COLUMNS": "200"}).stdout
    if not eval_nproc:
        print("note: `dsrsd evaluate --help` lists no --nproc; evaluate runs with 1 process only", flush=True)
    results = []
    for n in sizes:
        try:
            results.append(bench_size(n, work, args, eval_nproc))
        finally:
            if not args.keep:
                remove_size(n, work)
        print_size(results[-1])
    kt4 = None
    if args.kt4:
        try:
            kt4 = bench_kt4(args.kt4, work)
        finally:
            if not args.keep:
                (work / f"kt4_{args.kt4}.zip").unlink(missing_ok=True)
                shutil.rmtree(work / f"prepared_kt4_{args.kt4}", ignore_errors=True)
        print_kt4(kt4)
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    rows = targets(results, kt4)
    print_targets(rows)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"sizes": results, "kt4": kt4, "targets": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

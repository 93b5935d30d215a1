"""Benchmark of `prepare --dataset ednet`: throughput and peak memory on generated KT1 zips.

    python benchmarks/prepare_bench.py                      # N = 10,000 and 100,000 learners
    python benchmarks/prepare_bench.py --sizes 2000,20000 --workers 2

For each N it writes, in a temp folder, a KT1-format zip of N learners (~120 answers
each, bundles drawn from tests/fixtures/ednet/questions.csv) plus the contents files,
then runs prepare_ednet(workers=2) in a fresh child process and reports end-to-end
interactions/s and peak memory: the largest sum over the child and all its descendants
(the forkserver and its worker processes) of RSS, and of PSS (shared pages split between
the processes sharing them), sampled from /proc every 20 ms (PSS once a second: reading it
walks each process's page tables and slowed the measured run). getrusage(RUSAGE_CHILDREN)
cannot see the workers: they are children of the forkserver, not of the main process.

The CPU seconds of the whole process tree are printed too: on a machine shared with other
work, wall-clock throughput understates what the code does with two free cores.

Targets (2-core machine, 2 workers): >= 1,000,000 interactions/s; peak RSS < 1 GB;
RSS at 100,000 learners < 1.3x RSS at 10,000.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "ednet"
KT1_HEADER = b"timestamp,solving_id,question_id,user_answer,elapsed_time\n"
ANSWERS_PER_LEARNER = 120


def write_kt1_zip(path: Path, n_learners: int, *, seed: int = 0, chunk: int = 2000) -> int:
    """A zip laid out like EdNet-KT1 + contents; returns the number of answers written."""
    rng = np.random.default_rng(seed)
    questions = pacsv.read_csv(FIXTURES / "questions.csv").to_pandas()
    bundle_of = questions.groupby("bundle_id", sort=False).indices          # bundle -> row numbers
    members = [np.asarray(v) for v in bundle_of.values()]
    sizes = np.array([len(m) for m in members])
    flat = np.concatenate(members)
    starts = np.cumsum(sizes) - sizes
    qids = questions["question_id"].to_numpy()
    correct = questions["correct_answer"].to_numpy()
    bundles_per_learner = int(round(ANSWERS_PER_LEARNER / sizes.mean()))
    total = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.write(FIXTURES / "questions.csv", "contents/questions.csv")
        zf.write(FIXTURES / "lectures.csv", "contents/lectures.csv")
        for first in range(0, n_learners, chunk):
            n = min(chunk, n_learners - first)
            n_b = rng.poisson(bundles_per_learner, n).clip(1)
            b_user = np.repeat(np.arange(n), n_b)
            b = rng.integers(len(members), size=len(b_user))
            b_solving = np.arange(len(b)) - np.repeat(np.cumsum(n_b) - n_b, n_b) + 1
            b_time = (1_565_000_000_000 + rng.integers(0, 10**9, n)[b_user]
                      + np.cumsum(rng.integers(20_000, 600_000, len(b))))
            b_elapsed = rng.integers(5, 120, len(b)) * 1000
            rows = np.repeat(np.arange(len(b)), sizes[b])
            k = np.arange(len(rows)) - np.repeat(np.cumsum(sizes[b]) - sizes[b], sizes[b])
            q = flat[starts[b][rows] + k]
            answer = np.where(rng.random(len(q)) < 0.65, correct[q], rng.choice(list("abcd"), len(q)))
            table = pa.table({
                "timestamp": b_time[rows] + k * 50,
                "solving_id": b_solving[rows],
                "question_id": qids[q],
                "user_answer": answer,
                "elapsed_time": b_elapsed[rows],
            })
            buf = io.BytesIO()
            pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False, quoting_style="none"))
            text = buf.getvalue()
            ends = np.flatnonzero(np.frombuffer(text, np.uint8) == 10) + 1
            per_user = np.bincount(b_user[rows], minlength=n)
            cut = np.concatenate([[0], ends[np.cumsum(per_user) - 1]])
            for i in range(n):
                zf.writestr(f"KT1/u{first + i + 1}.csv", KT1_HEADER + text[cut[i] : cut[i + 1]])
            total += len(q)
    return total


def write_kt4_zip(path: Path, n_learners: int, *, seed: int = 0) -> int:
    """A zip laid out like EdNet-KT4 + contents, of n_learners action logs; returns the number of
    actions written. Each learner is one of the real KT4 extract's learners (tests/fixtures),
    drawn at random, its timestamps shifted by a random offset: real action mixes (enter,
    respond, submit, erase_choice, lectures, purchases) at any size."""
    rng = np.random.default_rng(seed)
    logs = [f.read_bytes() for f in sorted((FIXTURES / "KT4").glob("u*.csv"))]
    header = logs[0].split(b"\n", 1)[0] + b"\n"
    tables = [pacsv.read_csv(io.BytesIO(log), convert_options=pacsv.ConvertOptions(strings_can_be_null=True)) for log in logs]
    total = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.write(FIXTURES / "questions.csv", "contents/questions.csv")
        zf.write(FIXTURES / "lectures.csv", "contents/lectures.csv")
        for i, k in enumerate(rng.integers(len(tables), size=n_learners)):
            table = tables[k]
            shifted = table.set_column(0, "timestamp", pa.array(table["timestamp"].to_numpy() + int(rng.integers(0, 10**10))))
            buf = io.BytesIO()
            pacsv.write_csv(shifted, buf, pacsv.WriteOptions(include_header=False, quoting_style="none"))
            zf.writestr(f"KT4/u{i + 1}.csv", header + buf.getvalue())
            total += table.num_rows
    return total


def _rss(pid: int) -> int:
    """A process's resident bytes (0 once it has exited), from statm: cheap to read."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _tree(pid: int, with_pss: bool = True) -> tuple[int, int, dict[int, float], dict[int, int]]:
    """(RSS, PSS) in bytes of a process and all its descendants, the CPU seconds used so far
    by each of them, and each one's RSS, from /proc. RSS counts the pages that the forked workers share
    once per process; PSS splits them between the processes sharing them. with_pss=False: PSS 0,
    RSS from statm (smaps_rollup walks each process's page tables under its memory lock:
    read every 40 ms it slowed the measured prepare by about a tenth)."""
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
            cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    pss = 0
    tree: dict[int, float] = {}
    sizes: dict[int, int] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        tree[p] = cpu.get(p, 0.0)
        if not with_pss:
            sizes[p] = _rss(p)
            continue
        sizes[p] = 0
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        sizes[p] = int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            continue
    return sum(sizes.values()), pss, tree, sizes


def run_once(zip_path: Path, out: Path, workers: int) -> dict:
    """prepare_ednet in a fresh child process, sampling the RSS of its process tree."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", str(zip_path), str(out), str(workers)],
        stdout=subprocess.PIPE, text=True,
    )
    peak, peak_pss, cpu, done = 0, 0, {}, threading.Event()

    def sample():
        nonlocal peak, peak_pss
        n = 0
        while not done.is_set():
            rss, pss, tree, _ = _tree(child.pid, with_pss=n % 50 == 0)   # PSS once a second: costly to read
            peak, peak_pss = max(peak, rss), max(peak_pss, pss)
            cpu.update(tree)  # cumulative per process: the last reading before it exits
            n += 1
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = child.communicate()
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"prepare failed with exit code {child.returncode}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_tree_rss_mb"] = peak / 2**20
    result["peak_tree_pss_mb"] = peak_pss / 2**20
    result["tree_cpu_s"] = sum(cpu.values())
    return result


def _child(zip_path: str, out: str, workers: int) -> None:
    import resource

    from dsrsd_cli.data.ednet import prepare_ednet

    start = time.perf_counter()
    manifest = prepare_ednet(Path(zip_path), Path(out), workers=workers)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "seconds": seconds,
        "rows": manifest["rows_out"],
        "users": manifest["users"],
        "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu_seconds_main": time.process_time(),  # this process only (the workers are not its children)
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated learner counts")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="dsrsd-bench-") as tmp:
        for n in sizes:
            zip_path = Path(tmp) / f"kt1_{n}.zip"
            t = time.perf_counter()
            answers = write_kt1_zip(zip_path, n)
            print(f"N={n:,}: generated {answers:,} answers in {time.perf_counter() - t:.1f} s "
                  f"({zip_path.stat().st_size / 2**20:.0f} MB zip)", flush=True)
            r = run_once(zip_path, Path(tmp) / f"out_{n}", args.workers)
            peaks[n] = r["peak_tree_rss_mb"]
            print(f"N={n:,}: {r['rows']:,} interactions in {r['seconds']:.2f} s = "
                  f"{r['rows'] / r['seconds']:,.0f} interactions/s; peak memory of the process tree: "
                  f"RSS {r['peak_tree_rss_mb']:.0f} MB, PSS {r['peak_tree_pss_mb']:.0f} MB "
                  f"(main process maxrss {r['self_maxrss_mb']:.0f} MB)", flush=True)
            print(f"N={n:,}: CPU time of the process tree {r['tree_cpu_s']:.1f} s (main process "
                  f"{r['cpu_seconds_main']:.1f} s, including imports) = {r['rows'] / r['tree_cpu_s']:,.0f} "
                  f"interactions per CPU-second", flush=True)
            zip_path.unlink()
    if len(sizes) > 1:
        lo, hi = min(sizes), max(sizes)
        print(f"RSS ratio N={hi:,} / N={lo:,}: {peaks[hi] / peaks[lo]:.2f}")


if __name__ == "__main__":
    main()

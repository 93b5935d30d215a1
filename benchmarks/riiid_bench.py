"""Benchmark of `prepare --dataset riiid`: throughput and peak memory on a generated train.csv.

    python benchmarks/riiid_bench.py                    # 2,000,000 rows (and 500,000 to compare memory)
    python benchmarks/riiid_bench.py --rows 500000,2000000 --zip --interleave

For each size it writes, in a temp folder, Riiid-format files (tests/riiid_fakes.py: the
Kaggle headers, ~40 containers per learner, 5% lecture rows), then runs prepare_riiid in
a fresh child process and reports train.csv rows/s end to end and the child's peak RSS
(VmHWM of /proc/self/status: the parser is one process, pyarrow's CSV threads are inside
it; getrusage's ru_maxrss would report the generating parent's peak, kept across exec).
--zip reads the files from a .zip (the competition download), --interleave breaks the
learners' contiguity so that the spill path (two passes) is measured.

The real train.csv has 101M rows (5.4 GB): memory must not grow with the rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from riiid_fakes import write_riiid  # noqa: E402

CHILD = """
import json, resource, sys, time
from pathlib import Path
from dsrsd_cli.data.riiid import prepare_riiid
t = time.perf_counter()
m = prepare_riiid(Path(sys.argv[1]), Path(sys.argv[2]))
wall = time.perf_counter() - t
cpu = resource.getrusage(resource.RUSAGE_SELF)
hwm = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])  # kB; ru_maxrss would include the parent's before exec
print(json.dumps({"wall_s": wall, "cpu_s": cpu.ru_utime + cpu.ru_stime, "peak_rss_mb": hwm / 1024,
                  "rows_in": m["rows_in"], "rows_out": m["rows_out"], "users": m["users"],
                  "contiguous": m["source"]["learners_contiguous"], "dropped": m["dropped"]}))
"""


def run(rows: int, folder: Path, *, as_zip: bool, interleave: bool) -> dict:
    containers = 40
    # ~1.5 rows per container (bundles of 1..5 questions, 5% lectures)
    users = max(1, round(rows / (containers * 1.46)))
    raw = folder / f"raw_{rows}"
    t = time.perf_counter()
    write_riiid(raw, users, containers, seed=1, interleave=interleave, n_bundles=9_000)
    gen_s = time.perf_counter() - t
    source = raw
    if as_zip:
        source = folder / f"riiid_{rows}.zip"
        with zipfile.ZipFile(source, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for name in ("train.csv", "questions.csv", "lectures.csv"):
                zf.write(raw / name, name)
    out = folder / f"out_{rows}"
    res = subprocess.run([sys.executable, "-c", CHILD, str(source), str(out)], capture_output=True, text=True,
                         cwd=ROOT)
    if res.returncode:
        raise SystemExit(res.stderr)
    result = json.loads(res.stdout)
    result.update(generate_s=gen_s, csv_mb=(raw / "train.csv").stat().st_size / 2**20,
                  rows_per_s=result["rows_in"] / result["wall_s"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="500000,2000000")
    parser.add_argument("--zip", action="store_true", help="read the files from a .zip")
    parser.add_argument("--interleave", action="store_true", help="learners not contiguous: the spill path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for rows in (int(r) for r in args.rows.split(",")):
            r = run(rows, Path(tmp), as_zip=args.zip, interleave=args.interleave)
            print(f"{r['rows_in']:>10,} rows ({r['csv_mb']:.0f} MB, {r['users']:,} learners, contiguous={r['contiguous']}): "
                  f"{r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, {r['rows_per_s']:,.0f} rows/s, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB; {r['rows_out']:,} interactions", flush=True)


if __name__ == "__main__":
    main()

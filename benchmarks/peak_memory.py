"""Peak memory of the jobs issue 11 names, as whole processes (the largest process of the job's tree).

    .venv/bin/python benchmarks/peak_memory.py [--workdir /tmp/pairs-memory]

1. A forced broadcast of 500,000 right records on 20 left records (10M pairs, about 1.4 GB of output).
2. A sampled grid job: 20,000 x 20,000 records at --sample_rate 1e-4 (about 40,000 of 400M pairs).
Records are ``run.make_input``'s (about 100 bytes, four features). Prints wall time, peak RSS and the plan's
grid for each.
"""

import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # pylint: disable=wrong-import-position

JOBS = {
    "forced broadcast, 20 x 500,000": (20, 500_000, ["--strategy", "broadcast"]),
    "sampled grid, 20,000 x 20,000 at 1e-4": (20_000, 20_000, ["--strategy", "grid", "--sample_rate", "1e-4",
                                                              "--seed", "7"]),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="/tmp/pairs-memory")
  args = parser.parse_args()
  print(f"{'job':40} {'wall s':>7} {'peak RSS MB':>12} {'pairs':>12} {'shards':>7}  grid")
  for name, (left_count, right_count, flags) in JOBS.items():
    folder = os.path.join(args.workdir, name.split(",")[0].replace(" ", "-"))
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    left, right = os.path.join(folder, "left.tfrecord"), os.path.join(folder, "right.tfrecord")
    run.make_input(left, left_count, "left")
    run.make_input(right, right_count, "right")
    out = os.path.join(folder, "out", "pairs")
    wall, rss = run.timed([sys.executable, "-m", "beam_job", "--left", left, "--right", right, "--output", out,
                           "--collision", "prefix", *flags], dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    with open(out + "-summary.json") as f:
      summary = json.load(f)
    grid = summary["grid"]
    print(f"{name:40} {wall:7.2f} {rss / 1e6:12.0f} {summary['pairs']:12,} {len(summary['shards']):7}  "
          f"{grid['rows']} x {grid['cols']} chunks of {grid['row_chunk']:,} x {grid['col_chunk']:,}")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
  main()

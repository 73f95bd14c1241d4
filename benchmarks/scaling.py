"""Scaling and memory of this job alone, both strategies:

    .venv/bin/python benchmarks/scaling.py [--sizes 500x500 1000x1000 2000x2000 3000x3000 3000x6000] [--runs 2]

For each size LxR it writes the same uniform inputs as run.py, runs ``python -m beam_job`` with
``--collision prefix`` and each ``--strategy``, and prints wall time (best of --runs), pairs/s, MB/s, peak RSS
of the largest process, and the shuffle volume (record bytes moved between stages) from the summary.
"""

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import make_input, timed  # pylint: disable=wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", nargs="+", default=["500x500", "1000x1000", "2000x2000", "3000x3000", "3000x6000"])
  parser.add_argument("--strategies", nargs="+", default=["broadcast", "grid"])
  parser.add_argument("--runs", type=int, default=2)
  parser.add_argument("--workdir", default="/tmp/pairs-scaling")
  parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="More flags for the job.")
  args = parser.parse_args()
  print(f"{'size':>11} {'strategy':>9} {'pairs':>11} {'wall s':>7} {'pairs/s':>11} {'MB/s':>6} {'RSS MB':>7} "
        f"{'shuffle MB':>10}")
  for size in args.sizes:
    n, m = (int(x) for x in size.split("x"))
    folder = os.path.join(args.workdir, size)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    left, right = os.path.join(folder, "left.tfrecord"), os.path.join(folder, "right.tfrecord")
    make_input(left, n, "left")
    make_input(right, m, "right")
    for strategy in args.strategies:
      best = None
      for _ in range(args.runs):
        out = os.path.join(folder, "out", "pairs")
        shutil.rmtree(os.path.dirname(out), ignore_errors=True)
        wall, rss = timed([sys.executable, "-m", "beam_job", "--left", left, "--right", right, "--output", out,
                           "--collision", "prefix", "--strategy", strategy, *args.extra])
        best = min(best or (wall, rss), (wall, rss))
      summary = json.load(open(out + "-summary.json"))
      wall, rss = best
      print(f"{size:>11} {strategy:>9} {summary['pairs']:>11,} {wall:7.2f} {summary['pairs'] / wall:11,.0f} "
            f"{summary['bytes'] / 1e6 / wall:6.0f} {rss / 1e6:7.0f} {summary['shuffle_bytes'] / 1e6:10.2f}")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
  main()

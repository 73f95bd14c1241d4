"""Time and memory of ``python -m beam_job.verify`` beside the job it checks:

    .venv/bin/python benchmarks/verify_memory.py [--size 2000x2000] [--output_compression gzip] [--extra ...]

It writes the same uniform inputs as run.py (about 100 bytes a record), runs ``python -m beam_job`` once with
``--collision prefix``, then ``python -m beam_job.verify`` with the same flags (every record is compared up to
5,000,000 pairs, and checked against the independent definition up to 100,000 pairs, else 34 records a shard),
and prints the wall time and peak RSS of each. verify should need memory for both inputs, as read and
prepared, and nothing that grows with the output: its peak should stay flat as the output grows.
"""

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import make_input, output_bytes, timed  # pylint: disable=wrong-import-position


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="2000x2000", help="LEFTxRIGHT records.")
  parser.add_argument("--output_compression", default="uncompressed", choices=["uncompressed", "gzip"])
  parser.add_argument("--workdir", default="/tmp/pairs-verify")
  parser.add_argument("--keep", action="store_true", help="Leave the inputs and output in --workdir.")
  parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="More flags for both commands.")
  args = parser.parse_args()
  n, m = (int(x) for x in args.size.split("x"))
  shutil.rmtree(args.workdir, ignore_errors=True)
  os.makedirs(args.workdir)
  left, right = os.path.join(args.workdir, "left.tfrecord"), os.path.join(args.workdir, "right.tfrecord")
  make_input(left, n, "left")
  make_input(right, m, "right")
  out = os.path.join(args.workdir, "out", "pairs")
  flags = ["--left", left, "--right", right, "--output", out, "--collision", "prefix",
           "--output_compression", args.output_compression, *args.extra]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  job_wall, job_rss = timed([sys.executable, "-m", "beam_job", *flags], env)
  summary = json.load(open(out + "-summary.json"))
  verify_wall, verify_rss = timed([sys.executable, "-m", "beam_job.verify", *flags], env)
  inputs = os.path.getsize(left) + os.path.getsize(right)
  print(f"{args.size}: {summary['pairs']:,} pairs in {len(summary['shards'])} shard(s), "
        f"{output_bytes(out + '-*-of-*'):,} output bytes ({args.output_compression}), inputs {inputs:,} bytes")
  print(f"{'command':28} {'wall s':>8} {'peak RSS MB':>12}")
  print(f"{'python -m beam_job':28} {job_wall:8.2f} {job_rss / 1e6:12.0f}")
  print(f"{'python -m beam_job.verify':28} {verify_wall:8.2f} {verify_rss / 1e6:12.0f}")
  print(f"verify time / job time = {verify_wall / job_wall:.2f}")
  if not args.keep:
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
  main()

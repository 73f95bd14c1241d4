"""Pairs within groups and K per record (issue 14) against what one would do without them.

    .venv/bin/python benchmarks/grouped.py [--size 10000] [--groups 100] [--k 10] [--full_size SIZE]
        [--workdir /tmp/grouped-bench] [-- FLAG...]

Writes --size left and --size right records (about 100 bytes: an int64 key q = i % --groups, an id, 8 floats),
then times the whole job (``python -m beam_job``, ``--collision prefix``) for

- ``--group_by q``: size^2 / groups pairs;
- the full product, then a filter keeping the pairs whose two keys are equal (read back with the job's frame
  reader, parsed, written again): size^2 pairs. At 10k x 10k that is 100M pairs, 25 GB of disk and about 9
  minutes; a smaller --full_size runs it at --full_size x --full_size and scales its time, less the start-up
  of a 1 x 1 job, by (size / full_size)^2 (both steps are per pair; stated in the output). The full
  product's shards are deleted once filtered;
- ``--pairs_per_left K`` (exactly K per left record) against ``--sample_rate K / size`` (K per left record on
  average), both over the whole size x size product.

Prints wall seconds, pairs and output MB of each. Flags after ``--`` go to every job (e.g. a runner).
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from beam_job import tfrecord  # pylint: disable=wrong-import-position
from beam_job.example_proto import Example  # pylint: disable=wrong-import-position


def make_input(path: str, count: int, groups: int, side: str) -> None:
  with open(path, "wb") as f:
    for i in range(count):
      example = Example()
      features = example.features.feature
      features["q"].int64_list.value.append(i % groups)
      features["id"].int64_list.value.append(i)
      features["x"].float_list.value.extend(float((i * 7 + k) % 13) for k in range(8))
      features["side"].bytes_list.value.append(side.encode())
      f.write(tfrecord.frame(example.SerializeToString()))


def job(workdir: str, name: str, left: str, right: str, *flags) -> tuple:
  output = os.path.join(workdir, name, "pairs")
  shutil.rmtree(os.path.dirname(output), ignore_errors=True)
  os.makedirs(os.path.dirname(output))
  start = time.perf_counter()
  subprocess.run([sys.executable, "-m", "beam_job", "--left", left, "--right", right, "--output", output,
                  "--collision", "prefix", *flags], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
  wall = time.perf_counter() - start
  shards = sorted(glob.glob(output + "-*-of-*.tfrecord"))
  return wall, shards, sum(os.path.getsize(s) for s in shards)


def filter_equal_keys(shards, out_path: str) -> tuple:
  """The full product's pairs whose left_q equals right_q, written again: what one does without --group_by."""
  start = time.perf_counter()
  kept = 0
  with open(out_path, "wb") as out:
    for shard in shards:
      with open(shard, "rb") as f:
        for record in tfrecord.read_frames(f):
          features = Example.FromString(record.payload).features.feature
          if features["left_q"].int64_list.value[0] == features["right_q"].int64_list.value[0]:
            out.write(tfrecord.frame(record.payload))
            kept += 1
  return time.perf_counter() - start, kept


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", type=int, default=10_000)
  parser.add_argument("--groups", type=int, default=100)
  parser.add_argument("--k", type=int, default=10)
  parser.add_argument("--full_size", type=int, default=None, help="default: --size (measured, not scaled)")
  parser.add_argument("--workdir", default="/tmp/grouped-bench")
  args, extra = parser.parse_known_args()
  args.full_size = args.full_size or args.size
  extra = [flag for flag in extra if flag != "--"]
  os.makedirs(args.workdir, exist_ok=True)
  paths = {}
  for side, size in (("left", args.size), ("right", args.size), ("full_left", args.full_size),
                     ("full_right", args.full_size)):
    paths[side] = os.path.join(args.workdir, f"{side}.tfrecord")
    make_input(paths[side], size, args.groups, side)
  rows = []
  tiny = os.path.join(args.workdir, "tiny.tfrecord")
  make_input(tiny, 1, 1, "tiny")
  base, _, _ = job(args.workdir, "tiny", tiny, tiny, *extra)  # starting the job: not scaled with the pairs
  wall, shards, size = job(args.workdir, "grouped", paths["left"], paths["right"], "--group_by", "q", *extra)
  pairs = args.size * args.size // args.groups
  rows.append((f"--group_by q ({args.size:,} x {args.size:,}, {args.groups} groups)", wall, pairs, size))
  wall, shards, size = job(args.workdir, "full", paths["full_left"], paths["full_right"], "--max_pairs", "1e12",
                           *extra)
  filtered, kept = filter_equal_keys(shards, os.path.join(args.workdir, "full", "filtered.tfrecord"))
  for shard in shards:  # tens of GB at full size
    os.remove(shard)
  scale = (args.size / args.full_size) ** 2
  rows.append((f"full product {args.full_size:,} x {args.full_size:,}, measured", wall, args.full_size ** 2, size))
  rows.append((f"  then filtered to equal keys (kept {kept:,}), measured", filtered, kept, None))
  if scale != 1:
    rows.append((f"full product + filter scaled to {args.size:,} x {args.size:,} (x{scale:,.0f})",
                 base + (wall - base + filtered) * scale, args.size ** 2, size * scale))
  else:
    rows.append(("full product + filter", wall + filtered, args.size ** 2, size))
  rows.append(("(a job of 1 x 1 record, the start-up not scaled)", base, 1, None))
  wall, _, size = job(args.workdir, "k", paths["left"], paths["right"], "--pairs_per_left", str(args.k), *extra)
  rows.append((f"--pairs_per_left {args.k} ({args.size:,} x {args.size:,})", wall, args.size * args.k, size))
  rate = args.k / args.size
  wall, shards, size = job(args.workdir, "sampled", paths["left"], paths["right"], "--sample_rate", repr(rate),
                           *extra)
  count = sum(1 for s in shards for _ in tfrecord.read_frames(open(s, "rb")))  # pylint: disable=consider-using-with
  rows.append((f"--sample_rate {rate:g} (same expected count)", wall, count, size))
  print(f"{'contender':<62} {'wall s':>9} {'pairs':>13} {'output MB':>10}")
  for name, wall, pairs, size in rows:
    mb = f"{size / 1e6:,.1f}" if size is not None else ""
    print(f"{name:<62} {wall:>9.2f} {pairs:>13,} {mb:>10}")


if __name__ == "__main__":
  main()

"""Side-by-side benchmark: the nested-loop script, the naive Beam pipeline, this job, and a raw write.

    .venv/bin/python benchmarks/run.py --sizes 1000 3000 [--skip naive] [--workdir /tmp/pairs-bench] [--repeat N]

For each size N it writes N left and N right records of about 100 bytes (the same four feature names on both
sides: an int64 id, 8 floats, a short string, a small int), then times each contender as a whole process,
with its peak RSS (the largest process of its tree), and prints one table per size and the ratios. At sizes
up to --check_max pairs it checks that the nested loop and this job wrote the same multiset of Examples.
"""

import argparse
import glob
import os
import random
import shutil
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from beam_job import tfrecord  # pylint: disable=wrong-import-position
from beam_job.example_proto import Example  # pylint: disable=wrong-import-position

# Runs a command and prints the peak RSS (KiB) of its largest process: RUSAGE_CHILDREN of a fresh wrapper
# covers only that command's tree.
_WRAPPER = "import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); " \
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(rc)"


def make_input(path: str, count: int, seed: str) -> None:
  rng = random.Random(seed)
  with open(path, "wb") as f:
    for i in range(count):
      example = Example()
      feature = example.features.feature
      feature["id"].int64_list.value.append(i)
      feature["embedding"].float_list.value.extend(rng.random() for _ in range(8))
      feature["name"].bytes_list.value.append(f"item-{i:06d}".encode())
      feature["bucket"].int64_list.value.append(i % 10)
      f.write(tfrecord.frame(example.SerializeToString()))


def timed(command, env=None):
  start = time.perf_counter()
  done = subprocess.run([sys.executable, "-c", _WRAPPER, *command], capture_output=True, text=True, env=env,
                        check=False)
  wall = time.perf_counter() - start
  if done.returncode:
    raise SystemExit(f"{command} failed:\n{done.stderr[-3000:]}")
  rss_kib = int(done.stderr.strip().splitlines()[-1])
  return wall, rss_kib * 1024


def output_bytes(pattern: str) -> int:
  return sum(os.path.getsize(p) for p in glob.glob(pattern))


def canonical(paths):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.get_logger().setLevel("ERROR")
  records = []
  for path in paths:
    for raw in tf.compat.v1.python_io.tf_record_iterator(path):
      records.append(tf.train.Example.FromString(raw).SerializeToString(deterministic=True))
  return sorted(records)


def bench(size: int, workdir: str, skip, check_max: int, repeat: int = 1):
  folder = os.path.join(workdir, f"n{size}")
  shutil.rmtree(folder, ignore_errors=True)
  os.makedirs(folder)
  left, right = os.path.join(folder, "left.tfrecord"), os.path.join(folder, "right.tfrecord")
  make_input(left, size, "left")
  make_input(right, size, "right")
  python = sys.executable
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  rows = {}
  if "nested" not in skip:
    out = os.path.join(folder, "nested.tfrecord")
    rows["nested loop (tf_record_iterator)"] = timed(
        [python, os.path.join(HERE, "nested_loop.py"), left, right, out], env) + (output_bytes(out),)
  if "naive" not in skip:
    out = os.path.join(folder, "naive", "pairs")
    rows["naive Beam (AsList + FlatMap)"] = timed(
        [python, os.path.join(HERE, "naive_beam.py"), left, right, out], env) + (output_bytes(out + "*"),)
  # The trivial pipeline, the job and the raw write of its bytes in turn, ``repeat`` times: each row is the run
  # of median wall time (on a VM the time to write fresh pages varies several-fold from one run to the next).
  out = os.path.join(folder, "job", "pairs")
  raw = os.path.join(folder, "raw.bin")
  rounds = {"trivial two-input Beam pipeline": [], "this job (python -m beam_job)": [],
            "raw write (dd from memory)": []}
  for _ in range(repeat):
    subprocess.run(["sync"], check=True)  # each timed write starts with no earlier one being flushed
    rounds["trivial two-input Beam pipeline"].append(timed(
        [python, os.path.join(HERE, "trivial_beam.py"), left, right], env) + (0,))
    shutil.rmtree(os.path.dirname(out), ignore_errors=True)  # the previous run's output, not timed
    subprocess.run(["sync"], check=True)
    rounds["this job (python -m beam_job)"].append(timed(
        [python, "-m", "beam_job", "--left", left, "--right", right, "--output", out, "--collision", "prefix"],
        env) + (output_bytes(out + "-*.tfrecord"),))
    job_bytes = rounds["this job (python -m beam_job)"][-1][2]
    if os.path.exists(raw):
      os.remove(raw)
    subprocess.run(["sync"], check=True)
    rounds["raw write (dd from memory)"].append(timed(
        ["dd", "if=/dev/zero", f"of={raw}", "bs=1M", f"count={max(1, job_bytes >> 20)}", "status=none"]) + (
            max(1, job_bytes >> 20) << 20,))
  for name, runs in rounds.items():
    rows[name] = sorted(runs)[(len(runs) - 1) // 2]
  job_bytes = rows["this job (python -m beam_job)"][2]
  pairs = size * size
  print(f"\n{size} x {size} = {pairs:,} pairs, {job_bytes / 1e6:,.0f} MB")
  print(f"{'contender':36} {'wall s':>8} {'pairs/s':>12} {'MB/s':>8} {'peak RSS MB':>12}")
  for name, (wall, rss, nbytes) in rows.items():
    rate = f"{pairs / wall:12,.0f}" if not name.startswith(("raw", "trivial")) else f"{'':12}"
    print(f"{name:36} {wall:8.2f} {rate} {nbytes / 1e6 / wall:8.0f} {rss / 1e6:12.0f}")
  job_wall = rows["this job (python -m beam_job)"][0]
  for name, (wall, _, _) in rows.items():
    if not name.startswith(("this job", "raw", "trivial")):
      print(f"this job is {wall / job_wall:.1f}x faster than {name}")
  raw_wall, trivial_wall = rows["raw write (dd from memory)"][0], rows["trivial two-input Beam pipeline"][0]
  print(f"raw write time / job time = {raw_wall / job_wall:.2f}")
  fixed = job_wall - trivial_wall - raw_wall
  print(f"the job's own fixed cost (job - trivial Beam pipeline - raw write) = {fixed:.2f} s"
        + (f" (medians of {repeat} runs each)" if repeat > 1 else ""))
  if "nested" not in skip and pairs <= check_max:
    same = canonical([os.path.join(folder, "nested.tfrecord")]) == canonical(
        sorted(glob.glob(out + "-*.tfrecord")))
    print(f"nested loop and this job wrote the same multiset of Examples: {same}")
    if not same:
      raise SystemExit("outputs differ")
  shutil.rmtree(folder, ignore_errors=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sizes", type=int, nargs="+", default=[1000])
  parser.add_argument("--workdir", default="/tmp/pairs-bench")
  parser.add_argument("--skip", nargs="*", default=[], choices=["nested", "naive"])
  parser.add_argument("--check_max", type=int, default=1_000_000)
  parser.add_argument("--repeat", type=int, default=1, help="runs of the trivial pipeline, the job and the raw "
                      "write, in turn; the median of each is shown")
  args = parser.parse_args()
  for size in args.sizes:
    bench(size, args.workdir, set(args.skip), args.check_max, args.repeat)


if __name__ == "__main__":
  main()

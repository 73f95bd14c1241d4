"""More than 99,999 shards end to end: names widen to 6 digits, verify finds them all, --overwrite removes them.

    .venv/bin/python benchmarks/many_shards.py [--workdir /tmp/many-shards]

Writes 400 x 251 tiny records, runs the job with one pair per cell (100,400 shards), verifies the output, then
reruns with --overwrite and the default shard size (1 shard) and checks that no old shard is left. Prints the
wall time and peak RSS of each step.
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from beam_job import outputs, tfrecord  # pylint: disable=wrong-import-position
from beam_job.example_proto import Example  # pylint: disable=wrong-import-position


def _write(path: str, count: int, name: str) -> None:
  with open(path, "wb") as f:
    for i in range(count):
      example = Example()
      example.features.feature[name].int64_list.value.append(i)
      f.write(tfrecord.frame(example.SerializeToString()))


def _timed(argv) -> None:
  start = time.time()
  subprocess.run([sys.executable, *argv], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
  print(f"{' '.join(argv[:3])}: {time.time() - start:.1f} s, peak RSS so far {peak} MB")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", default="/tmp/many-shards")
  args = parser.parse_args()
  shutil.rmtree(args.workdir, ignore_errors=True)
  os.makedirs(args.workdir)
  left, right = os.path.join(args.workdir, "l.tfrecord"), os.path.join(args.workdir, "r.tfrecord")
  _write(left, 400, "a")
  _write(right, 251, "b")
  prefix = os.path.join(args.workdir, "out", "p")
  flags = ["--left", left, "--right", right, "--output", prefix, "--strategy", "grid", "--target_shard_mb", "0.00001"]
  _timed(["-m", "beam_job", *flags])
  shards = [o for o in outputs.list_owned(prefix) if o.kind == "shard"]
  assert len(shards) == 100_400 and shards[-1].path.endswith("-100399-of-100400.tfrecord"), shards[-1]
  _timed(["-m", "beam_job.verify", *flags])
  _timed(["-m", "beam_job", "--left", left, "--right", right, "--output", prefix, "--overwrite"])
  assert sorted(os.listdir(os.path.dirname(prefix))) == ["p-00000-of-00001.tfrecord", "p-schema.pbtxt",
                                                         "p-summary.json"]
  print("100,400 shards written, verified and replaced; no old shard left")


if __name__ == "__main__":
  main()

"""What gzip output costs: the same pairs written uncompressed and as gzip shards.

    .venv/bin/python benchmarks/gzip_output.py [--size 1000] [--repeat 3] [--collision prefix|right]
        [--workdir /tmp/gzip-bench] [-- FLAG...]

Writes --size left and --size right records made as ``run.py`` makes them (about 100 bytes each), then

- the writer alone, in this process: ``cells.write_cell`` of all pairs into ``sinks.open_shard`` uncompressed
  and gzip, and into the one-thread writer gzip output used before (``gzip.GzipFile`` over the file), checking
  that both gzip writers give the same bytes;
- the whole job: ``python -m beam_job`` with ``--output_compression uncompressed`` and ``gzip``.

Each contender runs --repeat times, alternating, so a busy neighbour weighs on all of them. It prints the best
and median wall time, the CPU time (of the process tree for the job), the job's peak RSS and the bytes written.
Flags after ``--`` go to the job (e.g. a runner).

Both sides have the same feature names: ``--collision prefix`` (the default) takes the native framing path,
where framing is cheap and deflate is nearly all of gzip's cost; ``--collision right`` takes the reference
path (``cells.write_reference``, framing in Python), where framing and deflate cost about the same.
"""

import argparse
import contextlib
import gzip
import glob
import os
import shutil
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # pylint: disable=wrong-import-position  # the benchmark inputs, made the same way
from beam_job import cells, examples, sinks, tfrecord  # pylint: disable=wrong-import-position

# Runs the job and prints the children's peak RSS (KiB) and CPU seconds: a fresh wrapper's RUSAGE_CHILDREN
# covers exactly that command's tree.
_WRAPPER = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(u.ru_maxrss, u.ru_utime + u.ru_stime, file=sys.stderr); sys.exit(rc)")


def _once(argv, env):
  start = time.perf_counter()
  done = subprocess.run([sys.executable, "-c", _WRAPPER, sys.executable, "-m", "beam_job", *argv],
                        capture_output=True, text=True, env=env, check=False, cwd=run.ROOT)
  wall = time.perf_counter() - start
  if done.returncode:
    raise SystemExit(f"{argv} failed:\n{done.stderr[-3000:]}")
  rss_kib, cpu = done.stderr.strip().splitlines()[-1].split()
  return wall, float(cpu), int(rss_kib) * 1024


@contextlib.contextmanager
def _one_thread_gzip(path):
  """The gzip writer of open_shard before it compressed in a thread."""
  with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0, compresslevel=6) as out:
    yield out


def _side(path):
  with open(path, "rb") as f:
    return [(record.index, examples.prepare(record.payload)) for record in tfrecord.read_frames(f)]


def _writers(left, right, folder, repeat, collision):
  """Times write_cell of every pair into each writer; returns {name: [(wall, cpu, bytes)]}."""
  left, right = _side(left), _side(right)
  merge = {"collision": "prefix"} if collision == "prefix" else {"collision": collision,
                                                                  "collisions": left[0][1].keys}
  writers = {"uncompressed": lambda p: sinks.open_shard(p, "uncompressed"),
             "gzip, one thread (before)": _one_thread_gzip,
             "gzip (open_shard)": lambda p: sinks.open_shard(p, "gzip")}
  rows = {name: [] for name in writers}
  for _ in range(repeat):
    for name, writer in writers.items():
      path = os.path.join(folder, "shard")
      start, cpu = time.perf_counter(), time.process_time()
      with writer(path) as out:
        cells.write_cell(left, right, out, **merge)
      rows[name].append((time.perf_counter() - start, time.process_time() - cpu, os.path.getsize(path)))
      if name.startswith("gzip"):
        with open(path, "rb") as f:
          digest = f.read()
        if rows.setdefault("gzip bytes", digest) != digest:
          raise SystemExit("the gzip writers wrote different bytes")
      os.remove(path)
  del rows["gzip bytes"]
  return rows


def _print(title, rows, with_rss):
  print(title)
  print(f"{'':28} {'wall s':>8} {'median':>8} {'cpu s':>8} {'peak RSS MB' if with_rss else '':>12} {'MB written':>11}")
  for name, runs in rows.items():
    walls = [r[0] for r in runs]
    rss = f"{max(r[3] for r in runs) / 1e6:12.0f}" if with_rss else f"{'':12}"
    print(f"{name:28} {min(walls):8.2f} {statistics.median(walls):8.2f} {min(r[1] for r in runs):8.2f} {rss} "
          f"{runs[-1][2] / 1e6:11.1f}")


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", type=int, default=1000)
  parser.add_argument("--repeat", type=int, default=3)
  parser.add_argument("--collision", default="prefix", choices=["prefix", "right"])
  parser.add_argument("--workdir", default="/tmp/gzip-bench")
  parser.add_argument("job_flags", nargs="*")
  args = parser.parse_args()
  shutil.rmtree(args.workdir, ignore_errors=True)
  os.makedirs(args.workdir)
  left, right = os.path.join(args.workdir, "left.tfrecord"), os.path.join(args.workdir, "right.tfrecord")
  run.make_input(left, args.size, "left")
  run.make_input(right, args.size, "right")
  pairs = (f"{args.size} x {args.size} = {args.size ** 2:,} pairs, --collision {args.collision}, "
           f"best / median of {args.repeat}")
  _print(f"writer alone, {pairs}", _writers(left, right, args.workdir, args.repeat, args.collision), with_rss=False)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=run.ROOT)
  rows = {"uncompressed": [], "gzip": []}
  for _ in range(args.repeat):
    for compression, runs in rows.items():
      prefix = os.path.join(args.workdir, compression, "pairs")
      shutil.rmtree(os.path.dirname(prefix), ignore_errors=True)
      wall, cpu, rss = _once(["--left", left, "--right", right, "--output", prefix, "--collision", args.collision,
                              "--output_compression", compression, *args.job_flags], env)
      runs.append((wall, cpu, sum(os.path.getsize(p) for p in glob.glob(prefix + "-*.tfrecord*")), rss))
  _print(f"python -m beam_job{' ' + ' '.join(args.job_flags) if args.job_flags else ''}, {pairs}", rows,
         with_rss=True)
  shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
  main()

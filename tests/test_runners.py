"""The same inputs give byte-identical shards, with the same names, on every local runner.

(a) the DirectRunner's in-memory FnApiRunner (the CLI's default, via ``cli.local_runner``), (b) the same with
``--direct_running_mode=multi_processing --direct_num_workers=2`` (SDK workers in subprocesses), (c)
``--runner=PortableRunner --job_endpoint=embed --environment_type=LOOPBACK`` (an in-process job service,
workers in this process). Each with ``--strategy broadcast`` and ``grid`` and a tiny ``--target_shard_mb`` so
that there are many cells.

Each job runs in its own ``python`` process, killed (with its process group) after ``_TIMEOUT`` seconds, so a
hang fails the test instead of the session. The process disables Prism and every network lookup that is not
local before the job starts and logs at INFO, so a download attempt shows up in its stderr.
"""

import collections
import json
import os
import signal
import subprocess
import sys

import pytest
import tensorflow as tf

from tests.helpers import make_example, read_tfrecords, write_tfrecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TIMEOUT = 240

RUNNERS = {
    "direct": [],
    "multi_processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "portable": ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
}
STRATEGIES = {
    "broadcast": ["--strategy", "broadcast", "--target_shard_mb", "0.001"],
    "grid": ["--strategy", "grid", "--target_shard_mb", "0.0003"],
}

# Runs the job like ``python -m beam_job`` would, after making Prism and remote name lookups fail loudly.
_DRIVER = r"""
import json, logging, socket, sys
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
_LOCAL = {"localhost", "ip6-localhost", "::1", "0.0.0.0", "::", "", "None", socket.gethostname()}
_real_getaddrinfo = socket.getaddrinfo
def _guarded(host, *args, **kwargs):
  name = host.decode() if isinstance(host, bytes) else str(host)
  if name not in _LOCAL and not name.startswith("127.") and not name.startswith("[::"):
    print("NETWORK-LOOKUP " + name, file=sys.stderr, flush=True)
    raise OSError("remote name lookups are disabled by the test: " + name)
  return _real_getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = _guarded
from apache_beam.runners.portability import prism_runner
def _no_prism(*args, **kwargs):
  print("PRISM-STARTED", file=sys.stderr, flush=True)
  raise RuntimeError("the test forbids Prism")
prism_runner.PrismRunner.run_pipeline = _no_prism
prism_runner.PrismJobServer.local_bin = _no_prism
from beam_job import cli
summary = cli.run(sys.argv[1:])
print("SUMMARY " + json.dumps(summary, sort_keys=True))
"""


def _spawn(argv, driver=True):
  """Runs the job in a new process group; returns (returncode, stdout, stderr); kills it on timeout."""
  command = [sys.executable, "-c", _DRIVER] if driver else [sys.executable, "-m", "beam_job"]
  proc = subprocess.Popen(command + [str(a) for a in argv], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    out, err = proc.communicate(timeout=_TIMEOUT)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    pytest.fail(f"{argv} did not finish within {_TIMEOUT} s (hang?); stderr ends with:\n{err[-3000:]}")
  return proc.returncode, out, err


def _canon(serialized: bytes) -> bytes:
  return tf.train.Example.FromString(serialized).features.SerializeToString(deterministic=True)


def _merge(left: bytes, right: bytes) -> bytes:
  merged = tf.train.Example()
  merged.MergeFrom(tf.train.Example.FromString(left))
  merged.MergeFrom(tf.train.Example.FromString(right))
  return merged.features.SerializeToString(deterministic=True)


L1 = [make_example({"id": [i], "blob": [bytes([i]) * (i + 1)], "w": [i / 4]}) for i in range(5)]
L2 = [make_example({"id": [-2 ** 63]}), make_example({}), make_example({"id": [2 ** 63 - 1], "blob": [b"\x00\xff"]})]
R1 = [make_example({"item": [b"item-%d" % i], "price": [1.5 * i]}) for i in range(4)]
R2 = [make_example({"item": [b"\xfe\xff"]}), make_example({})]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runner_inputs")
  write_tfrecord(root / "l1.tfrecord", L1)
  write_tfrecord(root / "l2.tfrecord.zlib", L2, "zlib")
  write_tfrecord(root / "r1.tfrecord.gz", R1, "gzip")
  write_tfrecord(root / "r2.tfrecord", R2)
  expected = collections.Counter(_merge(l, r) for l in L1 + L2 for r in R1 + R2)
  return {"root": root, "left": f"{root}/l*", "right": f"{root}/r1.tfrecord.gz,{root}/r2.tfrecord",
          "expected": expected, "runs": {}, "out": tmp_path_factory.mktemp("runner_outputs")}


def _job(inputs, runner: str, strategy: str, extra=()):
  """Runs (once per module) the job on ``runner`` with ``strategy``; returns (summary, shards, stderr)."""
  key = (runner, strategy, tuple(extra))
  if key not in inputs["runs"]:
    prefix = str(inputs["out"] / f"{runner}-{strategy}{'-'.join(extra)}".replace("=", "_") / "pairs")
    rc, out, err = _spawn(["--left", inputs["left"], "--right", inputs["right"], "--output", prefix,
                           *STRATEGIES[strategy], *RUNNERS.get(runner, []), *extra])
    assert rc == 0, err[-5000:]
    (line,) = [line for line in out.splitlines() if line.startswith("SUMMARY ")]
    summary = json.loads(line[len("SUMMARY "):])
    shards = []
    for path in summary["shards"]:
      assert path.startswith(prefix + "-")
      with open(path, "rb") as f:
        shards.append((path[len(prefix):], f.read()))
    # No temporary folder left; besides shards and summary at most a schema sidecar.
    assert sorted(n for n in os.listdir(os.path.dirname(prefix)) if n != "pairs-schema.pbtxt") == sorted(
        [os.path.basename(p) for p in summary["shards"]] + ["pairs-summary.json"])
    inputs["runs"][key] = (summary, shards, err)
  return inputs["runs"][key]


def _assert_no_download(err: str) -> None:
  assert "PRISM-STARTED" not in err
  assert "NETWORK-LOOKUP" not in err
  assert "prism" not in err.lower(), err[-3000:]
  assert "download" not in err.lower(), err[-3000:]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("runner", list(RUNNERS))
def test_runner_writes_the_same_bytes_as_the_in_memory_direct_runner(inputs, runner, strategy):
  summary, shards, err = _job(inputs, runner, strategy)
  _assert_no_download(err)
  assert (summary["left_records"], summary["right_records"], summary["pairs"], summary["corrupt_records"],
          summary["strategy"]) == (8, 6, 48, 0, strategy)
  assert len(shards) > 2 and len(shards) == summary["grid"]["cells"]
  assert [name for name, _ in shards] == [f"-{i:05d}-of-{len(shards):05d}.tfrecord" for i in range(len(shards))]
  assert collections.Counter(_canon(r) for r in read_tfrecords(summary["shards"])) == inputs["expected"]
  if runner != "direct":
    base_summary, base_shards, _ = _job(inputs, "direct", strategy)
    assert [name for name, _ in shards] == [name for name, _ in base_shards]
    for (name, data), (_, base) in zip(shards, base_shards):
      assert data == base, f"shard {name} differs between {runner} and the in-memory DirectRunner"
    # The whole summary is the same once each run's own output prefix is blanked out.
    def normalized(s):  # the run token differs by design
      return json.loads(json.dumps({k: v for k, v in s.items() if k != "run"}).replace(
          json.dumps(s["output"])[1:-1], "PREFIX"))
    assert normalized(summary) == normalized(base_summary)


def test_strategies_write_the_same_records(inputs):
  (_, broadcast, _), (_, grid, _) = _job(inputs, "direct", "broadcast"), _job(inputs, "direct", "grid")
  assert len(broadcast) != len(grid)  # different cuts of the same pairs
  records = {}
  for name, shards in (("broadcast", broadcast), ("grid", grid)):
    summary = _job(inputs, "direct", name)[0]
    records[name] = collections.Counter(_canon(r) for r in read_tfrecords(summary["shards"]))
  assert records["broadcast"] == records["grid"] == inputs["expected"]


def test_explicit_direct_runner_does_not_try_prism(inputs):
  summary, shards, err = _job(inputs, "explicit-direct", "grid", ("--runner=DirectRunner",))
  _assert_no_download(err)
  assert shards == _job(inputs, "direct", "grid")[1]


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_user_error_message_on_every_runner(inputs, tmp_path, runner):
  """A corrupt record fails the job on every runner with the same one-line message (with multi-processing the
  error crosses a process boundary as text), no traceback, and no shard and no summary. (Beam's
  ``SdkWorker._execute`` prints worker tracebacks straight to descriptor 2, past any logging filter;
  ``beam_job.quiet`` filters that descriptor.)"""
  bad = tmp_path / "bad.tfrecord"
  write_tfrecord(bad, L1)
  with open(bad, "r+b") as f:
    data = bytearray(f.read())
    first = 16 + int.from_bytes(data[:8], "little")
    second = first + 16 + int.from_bytes(data[first:first + 8], "little")
    data[second + 12 + 2] ^= 0x01  # record 2's payload
    f.seek(0)
    f.write(bytes(data))
  prefix = str(tmp_path / "out" / "pairs")
  rc, out, err = _spawn(["--left", bad, "--right", inputs["right"], "--output", prefix, *RUNNERS[runner]],
                        driver=False)
  assert rc == 2, err[-5000:]
  assert out == ""
  assert err.rstrip("\n").splitlines()[-1] == (
      f"error: corrupt input {bad}: record 2 (byte {second}): bad data CRC (--on_corrupt skip leaves it out)")
  out_dir = tmp_path / "out"
  assert not out_dir.exists() or [n for n in os.listdir(out_dir) if not n.startswith("pairs-temp-")] == []
  assert "Traceback" not in err, f"a user error printed a traceback on {runner}:\n{err[:2500]}"

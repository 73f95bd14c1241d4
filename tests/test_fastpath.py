"""The native frame writer gives the same shards, byte for byte, as the plain-Python reference path, through
the whole job: both strategies, gzip and plain output, every collision policy, random inputs."""

import glob
import os
import random

import pytest

from beam_job import cells, cli
from tests.helpers import make_example, write_tfrecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _random_example(rng: random.Random, names):
  features = {}
  for name in rng.sample(names, rng.randint(0, len(names))):
    kind = rng.choice(["int", "float", "bytes"])
    size = rng.randint(0, 40)
    if kind == "int":
      features[name] = [rng.randint(-2 ** 63, 2 ** 63 - 1) for _ in range(size)] or [0]
    elif kind == "float":
      features[name] = [rng.uniform(-1e6, 1e6) for _ in range(size)] or [0.5]
    else:
      features[name] = [rng.randbytes(rng.randint(0, 300)) for _ in range(size)] or [b""]
  return make_example(features)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  folder = tmp_path_factory.mktemp("fast")
  rng = random.Random(2026)
  for side, count in (("left", 23), ("right", 17)):
    write_tfrecord(str(folder / f"{side}.tfrecord"),
                   [_random_example(rng, ["a", "b", "c", f"{side}_only"]) for _ in range(count)])
  return folder


def _shards(prefix):
  return [open(p, "rb").read() for p in sorted(glob.glob(f"{prefix}-*-of-*"))]


@pytest.mark.parametrize("strategy", ["broadcast", "grid"])
@pytest.mark.parametrize("compression", ["uncompressed", "gzip"])
@pytest.mark.parametrize("collision", ["prefix", "left", "right"])
def test_native_and_reference_paths_write_identical_shards(inputs, tmp_path, monkeypatch, strategy, compression,
                                                           collision):
  argv = ["--left", str(inputs / "left.tfrecord"), "--right", str(inputs / "right.tfrecord"), "--strategy",
          strategy, "--output_compression", compression, "--collision", collision, "--target_shard_mb", "0.05"]
  assert cells._fastframes is not None, "the native writer was not built"
  fast = cli.run(argv + ["--output", str(tmp_path / "fast" / "pairs")])
  monkeypatch.setattr(cells, "_fastframes", None)
  reference = cli.run(argv + ["--output", str(tmp_path / "reference" / "pairs")])
  assert fast["pairs"] == reference["pairs"] == 23 * 17
  assert len(fast["shards"]) > 1
  assert _shards(tmp_path / "fast" / "pairs") == _shards(tmp_path / "reference" / "pairs")


def test_native_frames_equal_the_reference_for_payloads_of_every_size_around_the_crc_combine():
  """The native writer combines each payload's CRC into the record's (payloads of 16 bytes and more) and scans
  shorter ones: every size from 0 to 40 and a few long ones, on both sides, in blocks with and without starts."""
  from beam_job import _fastframes, examples, tfrecord  # pylint: disable=import-outside-toplevel
  rng = random.Random(7)
  sizes = list(range(41)) + [127, 128, 129, 1000, 16383, 16384, 70000]
  payloads = [rng.randbytes(size) for size in sizes]
  for _ in range(200):
    lefts = rng.sample(payloads, rng.randint(0, 5))
    rights = rng.sample(payloads, rng.randint(0, 8))
    starts = [rng.randint(0, len(rights)) for _ in lefts] if rng.random() < 0.5 else None
    expected = b"".join(tfrecord.frame(examples.example_bytes(left, right)) for i, left in enumerate(lefts)
                        for right in rights[(starts[i] if starts else 0):])
    assert _fastframes.frame_block(lefts, rights, starts) == expected


def test_native_frames_of_a_payload_over_512_mib_have_the_right_crc():
  """The CRC shift constant x^(8 * size - 33) needs powers x^(2^k) beyond k = 31 once 8 * size - 33 >= 2^32 (a
  payload of 536,870,917 bytes or more): CRC32C's powers do not repeat with period 32 as CRC-32's do."""
  import google_crc32c  # pylint: disable=import-outside-toplevel
  from beam_job import _fastframes, examples  # pylint: disable=import-outside-toplevel
  left, right = bytes(536_870_917), b"r" * 20
  frame = _fastframes.frame_block([left], [right], None)
  crc = google_crc32c.value(b"\x0a" + examples.varint(len(left) + len(right)))
  crc = google_crc32c.extend(google_crc32c.extend(crc, left), right)
  masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF  # as tfrecord.masked_crc, without a copy
  assert frame[-4:] == masked.to_bytes(4, "little")


def test_the_portable_build_without_sse42_writes_the_same_frames(tmp_path):
  """CPUs without SSE4.2 (or PCLMUL), e.g. ARM workers, take the table CRC and scan every record: the module
  built that way (``-DBEAM_JOB_PORTABLE_CRC``) gives the same frames as the reference."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  import shutil  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sysconfig  # pylint: disable=import-outside-toplevel
  from beam_job import examples, tfrecord  # pylint: disable=import-outside-toplevel
  compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
  assert compiler, "no C compiler: the native writer could not have been built either"
  source = os.path.join(os.path.dirname(cells.__file__), "_fastframes.c")
  built = str(tmp_path / ("_fastframes" + sysconfig.get_config_var("EXT_SUFFIX")))
  subprocess.run([compiler, "-O2", "-fPIC", "-shared", "-DBEAM_JOB_PORTABLE_CRC",
                  "-I" + sysconfig.get_paths()["include"], source, "-o", built], check=True)
  spec = importlib.util.spec_from_file_location("_fastframes", built)
  portable = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(portable)
  assert portable.crc_implementation == "table"
  rng = random.Random(11)
  payloads = [rng.randbytes(size) for size in list(range(41)) + [128, 1000, 70000]]
  for _ in range(100):
    lefts, rights = rng.sample(payloads, rng.randint(0, 4)), rng.sample(payloads, rng.randint(0, 6))
    starts = [rng.randint(0, len(rights)) for _ in lefts] if rng.random() < 0.5 else None
    expected = b"".join(tfrecord.frame(examples.example_bytes(left, right)) for i, left in enumerate(lefts)
                        for right in rights[(starts[i] if starts else 0):])
    assert portable.frame_block(lefts, rights, starts) == expected


_EMPTIED_WHILE_FRAMING = """
import threading, time
from beam_job import _fastframes, examples, tfrecord
rights = [bytes([k]) * (1 << 20) for k in range(48)]  # 1 MiB each: freed memory goes back to the system
expected = b"".join(tfrecord.frame(examples.example_bytes(b"l", right)) for right in rights)
got = []
framing = threading.Thread(target=lambda: got.append(_fastframes.frame_block([b"l"] * 12, rights, None)))
framing.start()
time.sleep(0.002)
rights[:] = []  # the caller's list emptied while the native writer runs without the GIL
framing.join()
assert got[0] == expected * 12, "frames differ"
print("ok")
"""


def test_the_native_writer_keeps_its_payloads_when_the_callers_list_changes_during_the_call():
  """``frame_block`` releases the GIL while it frames: it holds its own references to the payloads, so a list
  emptied by another thread meanwhile frees nothing under it. Before, it read freed (unmapped) buffers."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  proc = subprocess.run([sys.executable, "-c", _EMPTIED_WHILE_FRAMING], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, check=False)
  assert (proc.returncode, proc.stdout) == (0, "ok\n"), proc.stderr[-2000:]

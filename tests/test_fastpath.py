"""The native frame writer gives the same shards, byte for byte, as the plain-Python reference path, through
the whole job: both strategies, gzip and plain output, every collision policy, random inputs."""

import glob
import random

import pytest

from beam_job import cells, cli
from tests.helpers import make_example, write_tfrecord


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

"""``python -m beam_job.verify`` streams every shard: a correct shard is compared block by block against the
native writer's frames, and a wrong one is read again frame by frame only to name the first wrong record.

Each output is written once per module and copied for each test, which then damages its copy."""

import glob
import gzip
import random
import re
import shutil
import zlib

import pytest

from beam_job import cells, cli, verify
from tests.helpers import make_example, split_frames, write_tfrecord

N_LEFT, N_RIGHT = 12, 6


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  folder = tmp_path_factory.mktemp("inputs")
  left = [make_example({"id": [i], "vec": [i / 4, 2.5], "name": [b"q%d" % i]}) for i in range(N_LEFT)]
  right = [make_example({"id": [50 + j], "tag": [b"d%d" % j]}) for j in range(N_RIGHT)]
  write_tfrecord(str(folder / "left.tfrecord"), left)
  write_tfrecord(str(folder / "right.tfrecord"), right)
  return folder


# name -> the job's flags (besides --left, --right and --output), also given to verify
_OUTPUTS = {
    "grid": ["--collision", "prefix", "--strategy", "grid", "--target_shard_mb", "0.002"],
    "gzip": ["--collision", "prefix", "--strategy", "broadcast", "--target_shard_mb", "0.004",
             "--output_compression", "gzip"],
    # (a sampled cell holds at most a quarter of each side, a sixteenth of the left when broadcast: rows of 6)
    "sampled": ["--collision", "left", "--strategy", "broadcast", "--target_shard_mb", "0.002", "--sample_rate",
                "0.9", "--seed", "3"],
}


@pytest.fixture(scope="module")
def written(inputs, tmp_path_factory):
  folders = {}
  for name in _OUTPUTS:
    folder = tmp_path_factory.mktemp(name)
    cli.run(_flags(inputs, folder / "pairs", name))
    folders[name] = folder
  return folders


def _flags(inputs, prefix, name, *more):
  return ["--left", str(inputs / "left.tfrecord"), "--right", str(inputs / "right.tfrecord"),
          "--output", str(prefix), *_OUTPUTS[name], *more]


@pytest.fixture()
def output(inputs, written, tmp_path):
  """``copy(name)`` -> (prefix, shards, run): a fresh copy of that output, and ``run(*more)`` runs verify on it
  with the job's flags and returns (exit status, stderr)."""

  def copy(name):
    folder = tmp_path / name
    shutil.copytree(written[name], folder)
    prefix = folder / "pairs"
    shards = sorted(glob.glob(f"{prefix}-*-of-*.tfrecord*"))
    assert len(shards) > 2

    def run(*more):
      return verify.main(_flags(inputs, prefix, name, *more))

    return prefix, shards, run
  return copy


def _read(path):
  data = open(path, "rb").read()
  return gzip.decompress(data) if path.endswith(".gz") else data


def _write(path, data):
  open(path, "wb").write(gzip.compress(data) if path.endswith(".gz") else data)


def _failure(run, capsys, *more):
  capsys.readouterr()
  assert run(*more) == 1
  return capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(_OUTPUTS))
def test_a_correct_output_is_compared_without_the_reference_pairs(name, output, monkeypatch, capsys):
  prefix, shards, run = output(name)

  def never(*args, **kwargs):
    raise AssertionError("a correct shard needs no frame-by-frame comparison")

  if name != "sampled" and cells._fastframes is not None:  # sampled cells take the reference path to write
    monkeypatch.setattr(cells, "pair_examples", never)
  capsys.readouterr()
  assert run() == 0
  assert capsys.readouterr().out.endswith(f" pairs in {len(shards)} shard(s) under {prefix}: every record compared\n")


@pytest.mark.parametrize("name", sorted(_OUTPUTS))
def test_an_altered_record_is_named_reading_only_up_to_it(name, output, monkeypatch, capsys):
  _, shards, run = output(name)
  shard = max(shards, key=lambda s: len(split_frames(_read(s))))
  frames = split_frames(_read(shard))
  assert len(frames) > 4
  _write(shard, b"".join(frames[:3] + [frames[4]] + frames[4:]))  # record 3 is a valid frame, not its pair
  yielded = []  # per call: how many pairs it gave
  reference = cells.pair_examples

  def counted(*args, **kwargs):
    yielded.append(0)
    for example in reference(*args, **kwargs):
      yielded[-1] += 1
      yield example

  monkeypatch.setattr(cells, "pair_examples", counted)
  assert _failure(run, capsys) == f"verify failed: {shard}: record 3 is not the expected merged pair\n"
  assert yielded[-1] == 4  # the expected pairs are generated one at a time, up to the first wrong one


@pytest.mark.parametrize("name", sorted(_OUTPUTS))
def test_a_truncated_shard(name, output, capsys):
  _, shards, run = output(name)
  frames = split_frames(_read(shards[1]))
  kept = b"".join(frames[:-1])
  _write(shards[1], kept + frames[-1][:30])
  length = len(frames[-1]) - 16  # 18 bytes follow the header; the reader counts them less a footer, as ever
  assert _failure(run, capsys) == (f"verify failed: {shards[1]}: record {len(frames) - 1} (byte {len(kept)}): "
                                   f"record claims {length} bytes but the file ends after 14\n")


@pytest.mark.parametrize("name", sorted(_OUTPUTS))
def test_an_extra_record(name, output, capsys):
  _, shards, run = output(name)
  frames = split_frames(_read(shards[-1]))
  _write(shards[-1], b"".join(frames + frames[-1:]))
  assert _failure(run, capsys) == (f"verify failed: {shards[-1]} holds {len(frames) + 1} records, expected "
                                   f"{len(frames)} (records dropped or duplicated)\n")


@pytest.mark.parametrize("damage, problem", [
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "Incorrect length of data produced"),
    (lambda data: data[:-8], "Compressed file ended before the end-of-stream marker was reached"),
], ids=["bad length in the trailer", "trailer cut off"])
def test_a_gzip_shard_with_a_damaged_tail(damage, problem, output, capsys):
  _, shards, run = output("gzip")
  records = len(split_frames(_read(shards[0])))
  data = open(shards[0], "rb").read()
  open(shards[0], "wb").write(damage(data))
  assert _failure(run, capsys) == (f"verify failed: {shards[0]}: the gzip stream is broken after record "
                                   f"{records}: {problem}\n")


def test_a_shard_not_compared_is_counted(output, capsys):
  _, shards, run = output("grid")
  compared = random.Random(0).sample(range(len(shards)), 1)
  shard = shards[min(set(range(len(shards))) - set(compared))]
  frames = split_frames(_read(shard))
  _write(shard, b"".join(frames[:-1]))
  assert _failure(run, capsys, "--full_check_max", "1", "--sample_shards", "1") == (
      f"verify failed: {shard} holds {len(frames) - 1} records, expected {len(frames)}\n")


def test_bad_deflate_data_in_a_gzip_shard_is_a_broken_stream(output, capsys):
  _, shards, run = output("gzip")
  data = open(shards[0], "rb").read()
  for at in range(10, len(data) - 8):  # the first damaged byte zlib itself refuses (a block header)
    damaged = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
    try:
      gzip.decompress(damaged)
    except zlib.error:
      break
  else:
    pytest.fail("no byte of the shard makes its deflate data invalid")
  open(shards[0], "wb").write(damaged)
  message = _failure(run, capsys)
  assert re.fullmatch(rf"verify failed: {re.escape(shards[0])}: the gzip stream is broken after record \d+: "
                      r"Error -3 while decompressing data: [^\n]+\n", message), message


@pytest.mark.parametrize("text, problem", [("{not json", "is not JSON (Expecting property name"),
                                           ("[1, 2]", "is not a JSON object")])
def test_a_summary_that_is_not_a_json_object_is_a_verify_failure(text, problem, output, capsys):
  prefix, _, run = output("grid")
  _write(f"{prefix}-summary.json", text.encode())
  assert _failure(run, capsys).startswith(f"verify failed: {prefix}-summary.json {problem}")

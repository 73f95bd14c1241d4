"""Hostile inputs, faults and reruns: each case asserts the message, the exit status and what the output
folder holds afterwards."""

import glob
import gzip
import json
import os
import resource
import struct
import subprocess
import sys

import pytest

from beam_job import cli, tfrecord, verify
from tests.helpers import failing_cell, make_example, read_tfrecords, write_tfrecord


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  folder = tmp_path_factory.mktemp("small")
  left = [make_example({"a": [i], "s": [b"x" * i]}) for i in range(6)]
  right = [make_example({"b": [float(j)]}) for j in range(4)]
  write_tfrecord(str(folder / "left.tfrecord"), left)
  write_tfrecord(str(folder / "right.tfrecord"), right)
  return {"left": str(folder / "left.tfrecord"), "right": str(folder / "right.tfrecord"), "folder": folder}


def _outputs(folder):
  """Everything under ``folder`` that a reader could take for output (temporary folders excluded)."""
  return sorted(name for name in os.listdir(folder) if "-temp-" not in name) if os.path.isdir(folder) else []


def _fails(capsys, argv, *parts):
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err, err
  line = [l for l in err.splitlines() if l.startswith("error: ")]
  assert len(line) == 1, err
  for part in parts:
    assert part in line[0], line[0]
  return line[0]


def _shard_bytes(prefix):
  return [open(p, "rb").read() for p in sorted(glob.glob(f"{prefix}-*-of-*.tfrecord*"))]


def test_a_cell_that_fails_leaves_no_shard_and_no_summary_and_the_rerun_is_identical(small, tmp_path, monkeypatch):
  argv = ["--left", small["left"], "--right", small["right"], "--strategy", "grid", "--target_shard_mb", "0.0003"]
  clean = tmp_path / "clean" / "pairs"
  summary = cli.run(argv + ["--output", str(clean)])
  assert summary["grid"]["cells"] >= 4
  out = tmp_path / "faulty" / "pairs"
  with pytest.raises(Exception, match=r"injected failure in cell \(1, 0\)"):
    with failing_cell(monkeypatch, (1, 0)):
      cli.run(argv + ["--output", str(out)])
  assert os.listdir(out.parent) == []  # the failed run removed its temporary objects and its lease
  rerun = cli.run(argv + ["--output", str(out)])  # no --overwrite needed: nothing final was published
  assert _shard_bytes(out) == _shard_bytes(clean)
  assert rerun["pairs"] == summary["pairs"] == 24
  assert _outputs(out.parent) == sorted(os.path.basename(p) for p in rerun["shards"]) + [
      "pairs-schema.pbtxt", "pairs-summary.json"]


def test_overwrite_replaces_every_old_shard_even_with_another_shard_count(small, tmp_path, capsys):
  prefix = tmp_path / "pairs"
  argv = ["--left", small["left"], "--right", small["right"], "--output", str(prefix)]
  many = cli.run(argv + ["--strategy", "grid", "--target_shard_mb", "0.0003"])
  assert len(many["shards"]) > 1
  _fails(capsys, argv, "already holds", "--overwrite", str(prefix))
  assert len(_shard_bytes(prefix)) == len(many["shards"])  # refused: the earlier output is untouched
  one = cli.run(argv + ["--overwrite"])
  assert [os.path.basename(p) for p in one["shards"]] == ["pairs-00000-of-00001.tfrecord"]
  assert _outputs(tmp_path) == ["pairs-00000-of-00001.tfrecord", "pairs-schema.pbtxt", "pairs-summary.json"]
  assert len(read_tfrecords(one["shards"])) == 24


def test_leftover_temporary_files_are_not_output(small, tmp_path):
  prefix = tmp_path / "pairs"
  leftover = tmp_path / "pairs-temp-0123456789ab"
  leftover.mkdir()
  (leftover / ("shard-00000-" + "0" * 32)).write_bytes(b"garbage of a crashed run")
  summary = cli.run(["--left", small["left"], "--right", small["right"], "--output", str(prefix)])
  assert summary["shards"] == [f"{prefix}-00000-of-00001.tfrecord"]
  assert len(read_tfrecords(summary["shards"])) == 24
  assert not leftover.exists()  # a dead run's temporary folder, named by the job, is removed by the next run


@pytest.mark.parametrize("strategy", ["broadcast", "grid"])
def test_max_pairs_is_enforced_before_any_write_on_every_strategy(small, tmp_path, capsys, strategy):
  prefix = tmp_path / "out" / "pairs"
  _fails(capsys, ["--left", small["left"], "--right", small["right"], "--output", str(prefix), "--max_pairs", "23",
                  "--strategy", strategy], "24 pairs", "--max_pairs 23")
  assert _outputs(prefix.parent) == []


def _corrupt_case(tmp_path, name, data):
  path = tmp_path / name
  path.write_bytes(data)
  return str(path)


GOOD = tfrecord.frame(make_example({"a": [1]})) + tfrecord.frame(make_example({"a": [2]}))
F = len(GOOD) // 2  # bytes per frame
FORGED = struct.pack("<Q", 2 ** 60)


@pytest.mark.parametrize("name,data,parts", [
    ("forged.tfrecord", GOOD + FORGED + struct.pack("<I", tfrecord.masked_crc(FORGED)) + b"abc",
     [f"forged.tfrecord: record 2 (byte {2 * F})", f"record claims {2 ** 60} bytes but the file ends after 0"]),
    ("claims_more.tfrecord", GOOD[:-3], [f"claims_more.tfrecord: record 1 (byte {F})",
                                         f"record claims {F - 16} bytes but the file ends after {F - 19}"]),
    ("garbage.tfrecord", GOOD[:F] + b"\x00garbage\x00" + GOOD[F:], [f"garbage.tfrecord: record 1 (byte {F})",
                                                                  "bad length CRC"]),
    ("bad_length_crc.tfrecord", GOOD[:8] + b"\x00\x00\x00\x00" + GOOD[12:],
     ["bad_length_crc.tfrecord: record 0 (byte 0)", "bad length CRC", "set --compression"]),
    ("not_example.tfrecord", tfrecord.frame(b"\xff\xff\xff"), ["not_example.tfrecord: record 0",
                                                               "not a tf.train.Example"]),
    ("gzip_as_plain.tfrecord", gzip.compress(GOOD), ["gzip_as_plain.tfrecord: record 0", "--compression"]),
    ("empty.tfrecord.gz", b"", ["empty.tfrecord.gz: record 0", "cannot decompress gzip data"]),
], ids=["forged-length", "length-past-end", "garbage-between", "bad-length-crc", "not-an-example",
        "gzip-read-plain", "empty-gzip"])
def test_corrupt_input_fails_with_file_and_position_and_no_output(small, tmp_path, capsys, name, data, parts):
  path = _corrupt_case(tmp_path, name, data)
  prefix = tmp_path / "out" / "pairs"
  _fails(capsys, ["--left", path, "--right", small["right"], "--output", str(prefix)], "corrupt input", *parts)
  assert _outputs(prefix.parent) == []


def test_plain_file_read_as_gzip_is_a_clear_error(small, tmp_path, capsys):
  prefix = tmp_path / "out" / "pairs"
  _fails(capsys, ["--left", small["left"], "--right", small["right"], "--output", str(prefix), "--compression",
                  "gzip"], ".tfrecord: record 0", "cannot decompress gzip data", "Not a gzipped file")
  assert _outputs(prefix.parent) == []


def test_gzip_cut_anywhere_fails_the_job(tmp_path, capsys):
  whole = gzip.compress(GOOD * 3, mtime=0)
  right = write_tfrecord(str(tmp_path / "right.tfrecord"), [make_example({"b": [1]})])
  # Every cut point is checked at the reader level in test_sources.py; here a spread of them through the job.
  for cut in sorted({1, 10, len(whole) // 2, len(whole) - 8, len(whole) - 4, len(whole) - 1}):
    path = tmp_path / f"cut{cut}.tfrecord.gz"
    path.write_bytes(whole[:cut])
    prefix = tmp_path / f"out{cut}" / "pairs"
    _fails(capsys, ["--left", str(path), "--right", right, "--output", str(prefix)], f"cut{cut}.tfrecord.gz: record",
           "cannot decompress gzip data")
    assert _outputs(prefix.parent) == []


def test_explicit_compression_for_files_without_extension(tmp_path, capsys):
  left, right = tmp_path / "left_data", tmp_path / "right_data"
  left.write_bytes(gzip.compress(GOOD))
  right.write_bytes(gzip.compress(tfrecord.frame(make_example({"b": [1]}))))
  argv = ["--left", str(left), "--right", str(right), "--output", str(tmp_path / "pairs")]
  _fails(capsys, argv, "_data: record 0", "set --compression")  # auto: no extension, read as plain
  summary = cli.run(argv + ["--compression", "gzip"])
  assert summary["pairs"] == 2 and len(read_tfrecords(summary["shards"])) == 2


def test_zero_length_file_and_empty_side(small, tmp_path):
  empty = tmp_path / "empty.tfrecord"
  empty.write_bytes(b"")
  summary = cli.run(["--left", str(empty), "--right", small["right"], "--output", str(tmp_path / "pairs")])
  assert (summary["left_records"], summary["right_records"], summary["pairs"]) == (0, 4, 0)
  assert summary["shards"] == [f"{tmp_path}/pairs-00000-of-00001.tfrecord"]
  assert os.path.getsize(summary["shards"][0]) == 0


def test_the_same_file_on_both_sides(small, tmp_path):
  summary = cli.run(["--left", small["left"], "--right", small["left"], "--output", str(tmp_path / "pairs"),
                     "--collision", "prefix"])
  assert summary["pairs"] == 36


def test_a_missing_directory_is_a_pattern_that_matches_nothing(small, tmp_path, capsys):
  missing = str(tmp_path / "nowhere" / "*.tfrecord")
  _fails(capsys, ["--left", missing, "--right", small["right"], "--output", str(tmp_path / "pairs")],
         f"--left pattern {missing!r} matches no file")


def test_unwritable_output_fails_before_reading(small, tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  _fails(capsys, ["--left", small["left"], "--right", small["right"], "--output", str(blocker / "pairs")],
         "cannot write under --output", str(blocker / "pairs"))


def test_output_prefix_inside_an_input_pattern_is_refused(small, tmp_path, capsys):
  pattern = str(small["folder"] / "*")
  _fails(capsys, ["--left", pattern, "--right", small["right"], "--output", str(small["folder"] / "pairs")],
         "falls inside input pattern")
  assert not glob.glob(str(small["folder"] / "pairs*"))


def test_skip_lists_every_skipped_record_in_the_dead_letter_file(small, tmp_path):
  bad = bytearray(GOOD * 2)
  bad[14] ^= 1  # record 0's data: its CRC fails, the rest is readable
  path = _corrupt_case(tmp_path, "bad.tfrecord", bytes(bad) + b"\x01\x02")
  summary = cli.run(["--left", path, "--right", small["right"], "--output", str(tmp_path / "pairs"),
                     "--on_corrupt", "skip"])
  assert summary["left_records"] == 3 and summary["pairs"] == 12 and summary["corrupt_records"] == 2
  lines = [json.loads(l) for l in open(summary["dead_letter"])]
  assert lines == [
      {"file": path, "record": 0, "offset": 0, "problem": "bad data CRC", "rest_of_file_lost": False},
      {"file": path, "record": 4, "offset": 4 * F, "problem": "truncated header (2 of 12 bytes)",
       "rest_of_file_lost": True}]
  assert lines == summary["corrupt"]


def test_a_huge_record_on_one_side(tmp_path):
  huge = make_example({"blob": [b"\x07" * (50 << 20)]})
  left = write_tfrecord(str(tmp_path / "huge.tfrecord"), [huge])
  right = write_tfrecord(str(tmp_path / "right.tfrecord"), [make_example({"b": [j]}) for j in range(3)])
  summary = cli.run(["--left", left, "--right", right, "--output", str(tmp_path / "pairs")])
  records = read_tfrecords(summary["shards"])
  assert len(records) == 3 and all(len(r) > 50 << 20 for r in records)


def test_load_ten_files_per_side_64_cells_two_processes(tmp_path):
  """Many files and cells on the multi-processing runner: complete and exact (checked by verify)."""
  for side, count in (("left", 10), ("right", 10)):
    for f in range(count):
      write_tfrecord(str(tmp_path / f"{side}-{f:02d}.tfrecord"),
                     [make_example({f"{side}_id": [f * 100 + i], "v": [float(i)] * 3}) for i in range(8)])
  argv = ["--left", str(tmp_path / "left-*.tfrecord"), "--right", str(tmp_path / "right-*.tfrecord"),
          "--output", str(tmp_path / "out" / "pairs"), "--collision", "prefix", "--strategy", "grid",
          "--target_shard_mb", "0.005"]
  before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  done = subprocess.run([sys.executable, "-m", "beam_job", *argv, "--direct_running_mode=multi_processing",
                         "--direct_num_workers=2"], capture_output=True, text=True, check=False, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  summary = json.load(open(tmp_path / "out" / "pairs-summary.json"))
  assert summary["grid"]["cells"] >= 64 and summary["pairs"] == 80 * 80
  assert len(read_tfrecords(summary["shards"])) == 6400
  assert verify.main(argv) == 0
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  print(f"load run: {summary['grid']['cells']} cells, peak RSS of a process {max(peak, before) / 1024:.0f} MB")


def test_a_misspelled_job_flag_is_an_error_not_a_dropped_beam_option(small, tmp_path, capsys):
  prefix = tmp_path / "pairs"
  _fails(capsys, ["--left", small["left"], "--right", small["right"], "--output", str(prefix), "--colision",
                  "prefix"], "unknown flag --colision; did you mean --collision?")
  assert _outputs(tmp_path) == []
  # Beam's own options, and ones the job does not know but Beam does, still pass.
  summary = cli.run(["--left", small["left"], "--right", small["right"], "--output", str(prefix), "--labels",
                     "team=ml", "--project", "p", "--job_name", "pairs"])
  assert summary["pairs"] == 24


def test_zstd_input_is_refused_before_reading(small, tmp_path, capsys):
  path = tmp_path / "left.tfrecord.zst"
  path.write_bytes(b"\x28\xb5\x2f\xfd\x00")
  _fails(capsys, ["--left", str(path), "--right", small["right"], "--output", str(tmp_path / "out" / "pairs")],
         "left.tfrecord.zst: zstd input is not supported")
  assert _outputs(tmp_path / "out") == []


def test_bz2_input_through_the_job(small, tmp_path):
  import bz2  # pylint: disable=import-outside-toplevel
  path = tmp_path / "left.tfrecord.bz2"
  path.write_bytes(bz2.compress(open(small["left"], "rb").read()))
  summary = cli.run(["--left", str(path), "--right", small["right"], "--output", str(tmp_path / "pairs")])
  assert summary["pairs"] == 24 and len(read_tfrecords(summary["shards"])) == 24

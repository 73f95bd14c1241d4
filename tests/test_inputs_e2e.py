"""Inputs that must not be lost on the way in, through the CLI: payloads that are not tf.train.Example, and
paths that cannot be read as files. Each is one ``error: ...`` line and exit status 2, or, for a payload under
``--on_corrupt skip``, a counted and listed corrupt record."""

import glob
import gzip
import json
import os
import struct
import threading

import tensorflow as tf

from beam_job import cli, tfrecord
from tests.helpers import make_example, read_tfrecords, to_dict, write_tfrecord

SEQUENCE_PROBLEM = ("payload has field 2 (length-delimited), not a tf.train.Example (whose only field is 1, "
                    "Features); it looks like a tf.train.SequenceExample, whose feature_lists would be lost")


def _sequence_example() -> bytes:
  example = tf.train.SequenceExample()
  example.context.feature["user"].int64_list.value.append(7)
  example.feature_lists.feature_list["clicks"].feature.add().int64_list.value.extend([1, 2])
  return example.SerializeToString()


def _main(capsys, *argv):
  capsys.readouterr()
  rc = cli.main([str(a) for a in argv])
  captured = capsys.readouterr()
  return rc, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def _no_output(prefix) -> None:
  assert glob.glob(glob.escape(str(prefix)) + "*") == []


def _error(capsys, tmp_path, *argv) -> str:
  prefix = tmp_path / "out" / "pairs"
  rc, out, err = _main(capsys, *argv, "--output", prefix)
  assert (rc, out, len(err)) == (2, "", 1), err
  assert err[0].startswith("error: ")
  _no_output(prefix)
  return err[0][len("error: "):]


def test_sequence_example_fails_the_job_naming_the_record(tmp_path, capsys):
  os.makedirs(tmp_path / "in")
  left = write_tfrecord(tmp_path / "in" / "left.tfrecord", [make_example({"a": [1]}), _sequence_example()])
  right = write_tfrecord(tmp_path / "in" / "right.tfrecord", [make_example({"b": [2]})])
  assert _error(capsys, tmp_path, "--left", left, "--right", right) == \
      f"corrupt input {left}: record 1 (byte {16 + len(make_example({'a': [1]}))}): {SEQUENCE_PROBLEM} " \
      "(--on_corrupt skip leaves it out)"


def test_sequence_example_is_counted_and_listed_under_skip(tmp_path, capsys):
  os.makedirs(tmp_path / "in")
  left = write_tfrecord(tmp_path / "in" / "left.tfrecord", [make_example({"a": [1]}), _sequence_example()])
  right = write_tfrecord(tmp_path / "in" / "right.tfrecord", [make_example({"b": [2]})])
  prefix = tmp_path / "out" / "pairs"
  rc, _, _ = _main(capsys, "--left", left, "--right", right, "--output", prefix, "--on_corrupt", "skip")
  assert rc == 0
  with open(f"{prefix}-summary.json") as f:
    summary = json.load(f)
  assert (summary["left_records"], summary["pairs"], summary["corrupt_records"]) == (1, 1, 1)
  assert summary["corrupt"] == [{"file": left, "record": 1, "offset": 16 + len(make_example({"a": [1]})),
                                 "problem": SEQUENCE_PROBLEM,
                                 "rest_of_file_lost": False}]
  assert [to_dict(r) for r in read_tfrecords(summary["shards"])] == [{"a": ("int64_list", (1,)),
                                                                      "b": ("int64_list", (2,))}]


def test_directory_as_the_pattern(tmp_path, capsys):
  folder = tmp_path / "data"
  os.makedirs(folder)
  write_tfrecord(folder / "a.tfrecord", [make_example({"a": [1]})])
  assert _error(capsys, tmp_path, "--left", folder) == \
      f"--left: {folder} is a directory, not a TFRecord file; to read the files in it, pass '{folder}/*'"


def test_dangling_link_in_a_glob(tmp_path, capsys):
  os.makedirs(tmp_path / "in")
  good = write_tfrecord(tmp_path / "in" / "a.tfrecord", [make_example({"a": [1]})])
  os.symlink("../.git/annex/objects/missing", tmp_path / "in" / "b.tfrecord")
  assert _error(capsys, tmp_path, "--left", good, "--right", tmp_path / "in" / "*.tfrecord") == \
      (f"--right: {tmp_path / 'in' / 'b.tfrecord'} is a symbolic link to '../.git/annex/objects/missing', which "
       "does not exist (a git-annex or DVC file whose content is not here?)")


def test_fifo_fails_at_once_instead_of_blocking(tmp_path, capsys):
  os.makedirs(tmp_path / "in")
  write_tfrecord(tmp_path / "in" / "a.tfrecord", [make_example({"a": [1]})])
  os.mkfifo(tmp_path / "in" / "b.tfrecord")
  result = []
  # A thread, so that a reader that opens the FIFO fails this test instead of hanging the suite.
  worker = threading.Thread(target=lambda: result.append(_error(capsys, tmp_path, "--left",
                                                                tmp_path / "in" / "*.tfrecord")), daemon=True)
  worker.start()
  worker.join(120)
  assert result == [f"--left: {tmp_path / 'in' / 'b.tfrecord'} is a named pipe (FIFO), not a regular file: the "
                    "job reads each input more than once, so write the data to a file"]


def test_forged_length_in_a_gzip_file_names_the_record(tmp_path, capsys):
  os.makedirs(tmp_path / "in")
  length = struct.pack("<Q", 2 ** 60)
  path = write_tfrecord(tmp_path / "in" / "a.tfrecord.gz", [make_example({"a": [1]})], "gzip")
  with open(path, "ab") as f:  # a second gzip member: a frame that claims 2^60 bytes, then 1 MB of zeros
    f.write(gzip.compress(length + struct.pack("<I", tfrecord.masked_crc(length)) + bytes(1 << 20)))
  first = len(tfrecord.frame(make_example({"a": [1]})))
  assert _error(capsys, tmp_path, "--left", path) == (
      f"corrupt input {path}: record 1 (byte {first} of the decompressed gzip data): record claims {2 ** 60} bytes but the file ends after "
      f"{(1 << 20) - 4}; the rest of the file cannot be read (--on_corrupt skip leaves it out)")

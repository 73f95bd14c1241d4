"""Small edges of the command line (issue 12): each a one-line refusal, a warning or a quiet exit.

Refusals are checked through ``beam_job.cli.main``: exit status 2, exactly one line ``error: ...`` on stderr,
nothing on stdout, and nothing written.
"""

import json
import re
import os
import shlex
import subprocess
import sys

import pytest
import tensorflow as tf

from beam_job import cli, sources
from tests.helpers import make_example, read_tfrecords, write_tfrecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SHARDS = "shards are PREFIX-00000-of-00001.tfrecord"


@pytest.fixture(name="left")
def _left(tmp_path):
  """One input of 3 records, alone in its own folder so that nothing else is written there."""
  os.makedirs(tmp_path / "in")
  return write_tfrecord(str(tmp_path / "in" / "users.tfrecord"), [make_example({"u": [k]}) for k in range(3)])


def _refused(capsys, argv, message):
  capsys.readouterr()
  rc = cli.main(argv)
  captured = capsys.readouterr()
  assert (rc, captured.out, captured.err) == (2, "", f"error: {message}\n")


@pytest.mark.parametrize("extra", [[], ["--dry_run"]], ids=["run", "dry_run"])
def test_output_ending_in_a_slash_is_refused(left, tmp_path, capsys, extra):
  out = str(tmp_path / "out") + "/"
  _refused(capsys, ["--left", left, "--output", out, "--collision", "left", *extra],
           f"--output {out!r} ends with '/': give a prefix such as {out}pairs ({SHARDS})")
  assert not os.path.exists(out)


def test_output_ending_in_repeated_slashes_is_refused(left, tmp_path, capsys):
  out = str(tmp_path / "out")
  _refused(capsys, ["--left", left, "--output", out + "//", "--collision", "left"],
           f"--output {out + '/'!r} ends with '/': give a prefix such as {out}/pairs ({SHARDS})")


def test_gcs_output_ending_in_a_slash_is_refused_before_anything_is_read(left, capsys):
  _refused(capsys, ["--left", left, "--output", "gs://bucket/out/", "--collision", "left"],
           f"--output 'gs://bucket/out/' ends with '/': give a prefix such as gs://bucket/out/pairs ({SHARDS})")


@pytest.mark.parametrize("extra", [[], ["--dry_run"]], ids=["run", "dry_run"])
def test_output_naming_an_existing_folder_is_refused(left, tmp_path, capsys, extra):
  out = tmp_path / "out"
  os.makedirs(out)
  _refused(capsys, ["--left", left, "--output", str(out), "--collision", "left", *extra],
           f"--output {str(out)!r} is a directory: give a prefix inside it such as {out}/pairs ({SHARDS})")
  assert not os.listdir(out) and sorted(os.listdir(tmp_path)) == ["in", "out"]


def _piped(argv, reader, tmp_path):
  """Runs the job in a real shell pipeline ``python -m beam_job ... | reader``: returns the job's own exit
  status, what the reader printed and the job's stderr."""
  err = tmp_path / "stderr.txt"
  job = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "beam_job", *argv])
  proc = subprocess.run(["bash", "-c", f"{job} 2>{shlex.quote(str(err))} | {reader}; exit ${{PIPESTATUS[0]}}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  return proc.returncode, proc.stdout, err.read_text()


@pytest.mark.parametrize("reader", ["head -1", "head -c 0"])
def test_output_piped_into_head_ends_quietly_after_publishing(left, tmp_path, reader):
  """``head -c 0`` leaves before the job prints, so its first write meets a closed pipe every time; ``head -1``
  reads the first line. Either way no traceback, and the job's output is complete."""
  prefix = str(tmp_path / "out" / "pairs")
  rc, out, err = _piped(["--left", left, "--output", prefix, "--collision", "left"], reader, tmp_path)
  assert "Traceback" not in err and "BrokenPipeError" not in err, err[-3000:]
  if reader == "head -1":  # 0 when head read all before leaving, 1 when the job wrote after: a race
    assert (rc in (0, 1), out) == (True, f"wrote 9 pairs in 1 shard(s) under {prefix}-*\n")
  else:
    assert (rc, out) == (1, "")
  with open(f"{prefix}-summary.json", encoding="utf-8") as f:
    summary = json.load(f)
  assert (summary["pairs"], len(read_tfrecords(summary["shards"]))) == (9, 9)


def test_dry_run_piped_into_a_reader_that_left_ends_quietly(left, tmp_path):
  rc, out, err = _piped(["--left", left, "--output", str(tmp_path / "out" / "pairs"), "--collision", "left",
                         "--dry_run"], "head -c 0", tmp_path)
  assert (rc, out) == (1, "")
  assert "Traceback" not in err and "BrokenPipeError" not in err, err[-3000:]
  assert not os.path.exists(tmp_path / "out")


def _empty(path):
  open(path, "wb").close()
  return str(path)


def test_an_empty_input_is_named_in_one_warning_and_the_job_succeeds(left, tmp_path, capsys):
  empty = _empty(tmp_path / "in" / "empty.tfrecord")
  prefix = str(tmp_path / "out" / "pairs")
  capsys.readouterr()
  assert cli.main(["--left", left, "--right", empty, "--output", prefix]) == 0
  captured = capsys.readouterr()
  assert captured.err == f"warning: --right input {empty} holds no records (0 bytes)\n"
  assert captured.out.splitlines()[0] == f"wrote 0 pairs in 1 shard(s) under {prefix}-*"
  with open(f"{prefix}-summary.json", encoding="utf-8") as f:
    summary = json.load(f)
  assert (summary["left_records"], summary["right_records"], summary["pairs"]) == (3, 0, 0)


def test_several_empty_inputs_make_one_line_per_flag(tmp_path, capsys):
  os.makedirs(tmp_path / "in")
  empties = [_empty(tmp_path / "in" / f"{k}.tfrecord") for k in range(5)]
  capsys.readouterr()
  assert cli.main(["--left", str(tmp_path / "in" / "*.tfrecord"), "--output", str(tmp_path / "out" / "pairs"),
                   "--dry_run"]) == 0
  named = ", ".join(empties[:3])
  assert capsys.readouterr().err == f"warning: --left inputs {named} and 2 more hold no records (0 bytes)\n"
  assert not os.path.exists(tmp_path / "out")


def test_no_warning_when_every_input_holds_bytes(left, tmp_path, capsys):
  capsys.readouterr()
  assert cli.main(["--left", left, "--output", str(tmp_path / "out" / "pairs"), "--collision", "left"]) == 0
  assert capsys.readouterr().err == ""


@pytest.mark.parametrize("extra, prefixes, renamed", [
    ([], ("left_", "right_"), ("", "")),
    (["--collision", "left", "--left_prefix", "L_", "--right_prefix", "R_"], ("L_", "R_"), ("", "")),
    (["--collision", "prefix"], ("left_", "right_"), ("left_", "right_")),
    (["--collision", "prefix", "--left_prefix", "L_", "--right_prefix", ""], ("L_", ""), ("L_", "")),
], ids=["default", "prefixes_given_but_not_used", "prefix_defaults", "prefix_given"])
def test_summary_options_show_the_prefix_flags_which_rename_only_under_collision_prefix(left, tmp_path, capsys,
                                                                                        extra, prefixes, renamed):
  """The summary records the prefix flags (defaults included), which rename features only under --collision
  prefix."""
  right = write_tfrecord(str(tmp_path / "in" / "items.tfrecord"), [make_example({"r": [k]}) for k in range(2)])
  prefix = str(tmp_path / "out" / "pairs")
  assert cli.main(["--left", left, "--right", right, "--output", prefix, *extra]) == 0
  with open(f"{prefix}-summary.json", encoding="utf-8") as f:
    options = json.load(f)["options"]
  assert (options["left_prefix"], options["right_prefix"]) == prefixes
  names = {name for record in read_tfrecords([f"{prefix}-00000-of-00001.tfrecord"])
           for name in tf.train.Example.FromString(record).features.feature}
  assert names == {renamed[0] + "u", renamed[1] + "r"}
  capsys.readouterr()



def test_compression_help_lists_every_extension_auto_detects(capsys):
  capsys.readouterr()
  with pytest.raises(SystemExit) as info:
    cli.main(["--help"])
  assert info.value.code == 0
  out = capsys.readouterr().out
  text = " ".join(out[out.index("\n  --compression "):out.index("\n  --output_compression ")].split())
  assert set(re.findall(r"\.[a-z0-9]+\b", text)) >= set(sources._SUFFIXES)  # pylint: disable=protected-access
  for suffix, kind in sources._SUFFIXES.items():  # pylint: disable=protected-access
    assert re.search(re.escape(suffix) + r"(, \.[a-z0-9]+)* -> " + kind, text), (suffix, text)
  assert "(.gz, .gzip -> gzip; .zlib, .deflate -> zlib; .bz2 -> bzip2; .lzma, .xz -> lzma; .zst, .zstd -> zstd " \
         "(refused)), other names are read uncompressed." in text


# --- A comma in a file name ----------------------------------------------------------------------------------


def test_split_patterns_keeps_an_escaped_comma():
  here = os.getcwd()
  assert sources.split_patterns(r"a\,b.tfrecord, c*,gs://b/x\,y-*.gz") == [
      os.path.join(here, "a,b.tfrecord"), os.path.join(here, "c*"), "gs://b/x,y-*.gz"]
  assert sources.split_patterns(sources.escape_commas("/d/1,2,3.tfrecord")) == ["/d/1,2,3.tfrecord"]


@pytest.fixture(name="comma")
def _comma(tmp_path):
  """``in/a,b.tfrecord`` (2 records) beside ``in/users.tfrecord`` (3 records)."""
  os.makedirs(tmp_path / "in")
  write_tfrecord(str(tmp_path / "in" / "users.tfrecord"), [make_example({"u": [k]}) for k in range(3)])
  return write_tfrecord(str(tmp_path / "in" / "a,b.tfrecord"), [make_example({"c": [k]}) for k in range(2)])


@pytest.mark.parametrize("how", ["escaped", "escaped_with_equals", "literal_file", "shell_expanded"])
def test_a_file_with_a_comma_in_its_name_is_read(comma, tmp_path, capsys, how):
  users = str(tmp_path / "in" / "users.tfrecord")
  left = {"escaped": ["--left", sources.escape_commas(comma)],
          "escaped_with_equals": ["--left=" + sources.escape_commas(comma)],  # as the templates pass it
          "literal_file": ["--left", comma],
          "shell_expanded": ["--left", comma, users]}[how]  # an unquoted in/*: each name its own value
  prefix = str(tmp_path / "out" / "pairs")
  assert cli.main([*left, "--right", users, "--output", prefix, "--collision", "prefix"]) == 0
  with open(f"{prefix}-summary.json", encoding="utf-8") as f:
    summary = json.load(f)
  left_records = 5 if how == "shell_expanded" else 2
  assert (summary["left_records"], summary["right_records"], summary["pairs"]) == (left_records, 3, left_records * 3)
  capsys.readouterr()


def test_verify_reads_a_file_with_a_comma_in_its_name(comma, tmp_path, capsys):
  from beam_job import verify
  users = str(tmp_path / "in" / "users.tfrecord")
  flags = ["--left", sources.escape_commas(comma), "--right", users, "--output", str(tmp_path / "out" / "pairs"),
           "--collision", "prefix"]
  assert cli.main(flags) == 0
  assert verify.main(flags) == 0
  assert capsys.readouterr().out.splitlines()[-1].startswith("verified 6 pairs in 1 shard(s)")


def test_a_name_cut_at_a_comma_is_refused_with_the_escape_hint(comma, tmp_path, capsys):
  pattern = str(tmp_path / "in" / "a,b*.tfrecord")  # a glob, so not an existing file: split at the comma
  _refused(capsys, ["--left", pattern, "--output", str(tmp_path / "out" / "pairs")],
           f"--left pattern {str(tmp_path / 'in' / 'a')!r} matches no file (a comma separates patterns; write \\, "
           "for a comma inside a file name)")


def test_a_missing_pattern_beside_one_that_matches_gets_no_comma_hint(comma, tmp_path, capsys):
  missing = str(tmp_path / "in" / "missing.tfrecord")
  users = str(tmp_path / "in" / "users.tfrecord")
  _refused(capsys, ["--left", f"{missing},{users}", "--output", str(tmp_path / "out" / "pairs")],
           f"--left pattern {missing!r} matches no file")


def test_a_gcs_object_with_a_comma_in_its_name_is_read(gcs_prefix, tmp_path, capsys):
  from apache_beam.io.filesystem import CompressionTypes
  from apache_beam.io.filesystems import FileSystems
  os.makedirs(tmp_path / "in")
  local = write_tfrecord(str(tmp_path / "in" / "x.tfrecord"), [make_example({"c": [k]}) for k in range(2)])
  with open(local, "rb") as f, FileSystems.create(f"{gcs_prefix}/x,y.tfrecord",
                                                   compression_type=CompressionTypes.UNCOMPRESSED) as out:
    out.write(f.read())
  users = write_tfrecord(str(tmp_path / "in" / "users.tfrecord"), [make_example({"u": [k]}) for k in range(3)])
  summary = cli.run(["--left", f"{gcs_prefix}/x\\,y.tfrecord", "--right", users, "--output",
                     str(tmp_path / "out" / "pairs")])
  assert (summary["left_records"], summary["pairs"]) == (2, 6)
  _refused(capsys, ["--left", f"{gcs_prefix}/x,y.tfrecord", "--right", users, "--output",
                    str(tmp_path / "out2" / "pairs")],
           f"--left pattern '{gcs_prefix}/x' matches no file (a comma separates patterns; write \\, for a comma "
           "inside a file name)")


# --- The byte offset of a payload that is not an Example ------------------------------------------------------

NOT_AN_EXAMPLE = b"\x12\x03abc"  # field 2: what a SequenceExample's feature_lists look like
NOT_AN_EXAMPLE_PROBLEM = ("payload has field 2 (length-delimited), not a tf.train.Example (whose only field is 1, "
                          "Features); it looks like a tf.train.SequenceExample, whose feature_lists would be lost")


def _with_a_bad_payload(path, compression=None):
  """Records 0, 1 good, record 2 not an Example; returns (path, the frame offset of record 2)."""
  good = [make_example({"c": [k]}) for k in range(2)]
  write_tfrecord(path, good + [NOT_AN_EXAMPLE], compression)
  return str(path), sum(16 + len(record) for record in good)


@pytest.mark.parametrize("name, compression, where", [
    ("bad.tfrecord", "auto", ""),
    ("bad.tfrecord.gz", "auto", " of the decompressed gzip data"),
    ("bad.tfrecord", "gzip", " of the decompressed gzip data"),  # gzip data, named as if not
    ("bad.zz", "zlib", " of the decompressed zlib data"),
], ids=["plain", "gzip", "gzip_without_suffix", "zlib"])
def test_a_payload_that_is_not_an_example_is_named_with_its_byte_offset(left, tmp_path, capsys, name, compression,
                                                                        where):
  kind = {"auto": "GZIP" if name.endswith(".gz") else None, "gzip": "GZIP", "zlib": "ZLIB"}[compression]
  bad, offset = _with_a_bad_payload(tmp_path / "in" / name, kind)
  expected = (f"corrupt input {bad}: record 2 (byte {offset}{where}): {NOT_AN_EXAMPLE_PROBLEM} "
              "(--on_corrupt skip leaves it out)")
  _refused(capsys, ["--left", bad, "--output", str(tmp_path / "out" / "pairs"), "--compression", compression],
           expected)
  from beam_job import verify
  prefix = str(tmp_path / "out" / "pairs")
  assert cli.main(["--left", bad, "--output", prefix, "--compression", compression, "--on_corrupt", "skip",
                   "--collision", "prefix"]) == 0
  capsys.readouterr()
  assert verify.main(["--output", prefix, "--on_corrupt", "fail"]) == 1
  assert capsys.readouterr().err == (f"verify failed: {expected} (flags that differ from the summary: "  # the same
                                     "--on_corrupt fail (the run: skip))\n")  # words as the job's


def test_the_dead_letter_entry_of_a_payload_that_is_not_an_example_has_its_offset(tmp_path, capsys):
  os.makedirs(tmp_path / "in")
  bad, offset = _with_a_bad_payload(tmp_path / "in" / "bad.tfrecord.gz", "GZIP")
  users = write_tfrecord(str(tmp_path / "in" / "users.tfrecord"), [make_example({"u": [k]}) for k in range(3)])
  prefix = str(tmp_path / "out" / "pairs")
  assert cli.main(["--left", bad, "--right", users, "--output", prefix, "--on_corrupt", "skip"]) == 0
  with open(f"{prefix}-corrupt.jsonl", encoding="utf-8") as f:
    assert [json.loads(line) for line in f] == [{"file": bad, "record": 2, "offset": offset,
                                                 "problem": NOT_AN_EXAMPLE_PROBLEM, "rest_of_file_lost": False}]
  capsys.readouterr()


def test_a_record_not_from_a_file_gets_no_offset(tmp_path):
  """``CrossProduct`` on a PCollection of your own: its sources are not files, and a file of the same name that
  holds other bytes gives no offset either (it is not where the record came from)."""
  finder = sources.RecordFinder()
  path, offset = _with_a_bad_payload(tmp_path / "bad.tfrecord")
  assert finder.find("items", 2, NOT_AN_EXAMPLE) is None
  assert finder.find(path, 2, NOT_AN_EXAMPLE + b"x") is None
  assert sources.RecordFinder().find(path, 2, NOT_AN_EXAMPLE) == (offset, "uncompressed")
  assert sources.describe_record("items", 2, -1, "bad") == "items: record 2: bad"


def test_many_bad_records_of_one_file_are_found_in_one_more_read(tmp_path, monkeypatch):
  path = write_tfrecord(str(tmp_path / "bad.tfrecord.gz"), [NOT_AN_EXAMPLE + bytes([k]) for k in range(50)], "GZIP")
  opened = []
  read_file = sources.read_file
  monkeypatch.setattr(sources, "read_file", lambda *args: opened.append(args) or read_file(*args))
  finder = sources.RecordFinder()
  offsets = [finder.find(path, k, NOT_AN_EXAMPLE + bytes([k])) for k in range(50)]
  finder.close()
  assert offsets == [(k * (16 + len(NOT_AN_EXAMPLE) + 1), "gzip") for k in range(50)]
  assert opened == [(path, "gzip")]


# --- Multi-processing runs: the error line is the only line -------------------------------------------------


def _with_a_bad_crc(path) -> str:
  """Two records, the second's data CRC broken (its last byte flipped)."""
  bad = write_tfrecord(str(path), [make_example({"c": [k]}) for k in range(2)])
  with open(bad, "r+b") as f:
    f.seek(-1, os.SEEK_END)
    last = f.read(1)
    f.seek(-1, os.SEEK_END)
    f.write(bytes([last[0] ^ 1]))
  return bad


@pytest.mark.parametrize("problem", ["not_an_example", "bad_crc"])
def test_a_failing_multi_processing_run_prints_only_the_error_line(left, tmp_path, problem):
  """Beam's SDK workers log startup warnings that the runner relays, and print the traceback of the failing
  DoFn; a worker that starts late would print after the error line."""
  if problem == "not_an_example":
    bad, offset = _with_a_bad_payload(tmp_path / "in" / "bad.tfrecord")
    expected = f"record 2 (byte {offset}): {NOT_AN_EXAMPLE_PROBLEM}"
  else:
    bad = _with_a_bad_crc(tmp_path / "in" / "bad.tfrecord")
    expected = f"record 1 (byte {16 + len(make_example({'c': [0]}))}): bad data CRC"
  proc = subprocess.run([sys.executable, "-m", "beam_job", "--left", left, "--right", bad, "--output",
                         str(tmp_path / "out" / "pairs"), "--direct_running_mode", "multi_processing",
                         "--direct_num_workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        check=False)
  assert (proc.returncode, proc.stdout, proc.stderr) == (
      2, "", f"error: corrupt input {bad}: {expected} (--on_corrupt skip leaves it out)\n")



def test_a_failing_multi_processing_run_ends_when_a_worker_connects_late(left, tmp_path):
  """A run that fails before every SDK worker has connected: Beam's close skipped the late worker, which then
  connected and waited for a request forever, and the run never ended, printing nothing (about half such runs,
  when the failing bundle lands on the other worker; 2 of 270 plain runs on a loaded machine, and once in CI).
  The worker that starts first here is 8 s late."""
  bad = _with_a_bad_crc(tmp_path / "in" / "bad.tfrecord")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests", "late_worker"), ROOT]),
             LATE_WORKER_SECONDS="8")
  proc = subprocess.run([sys.executable, "-m", "beam_job", "--left", left, "--right", bad, "--output",
                         str(tmp_path / "out" / "pairs"), "--direct_running_mode", "multi_processing",
                         "--direct_num_workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                        env=env, check=False)
  assert (proc.returncode, proc.stdout) == (2, "")
  assert proc.stderr.startswith(f"error: corrupt input {bad}: record 1 ") and proc.stderr.count("\n") == 1

def test_a_skipped_payload_that_is_not_an_example_is_logged_like_a_bad_frame(tmp_path, caplog):
  (tmp_path / "in").mkdir()
  bad, offset = _with_a_bad_payload(tmp_path / "in" / "bad.tfrecord")
  with caplog.at_level("WARNING", logger="beam_job"):
    summary = cli.run(["--left", bad, "--output", str(tmp_path / "out" / "pairs"), "--on_corrupt", "skip",
                       "--collision", "prefix"])
  assert summary["corrupt_records"] == 1
  assert f"skipping corrupt input {bad}: record 2 (byte {offset}): {NOT_AN_EXAMPLE_PROBLEM}" in [
      record.getMessage() for record in caplog.records]


def test_an_input_whose_name_is_not_utf8_is_a_one_line_error(tmp_path, capsys):
  """Records name their source as UTF-8 text between stages (and the summary lists it): a file name that is
  not valid UTF-8 is refused up front, naming its bytes, instead of failing in the pipeline."""
  folder = tmp_path / "in"
  folder.mkdir()
  with open(os.fsencode(folder) + b"/\xff.tfrecord", "wb") as f:
    f.write(b"\x00" * 16)  # not even a record: its name is refused first
  out = tmp_path / "out"
  out.mkdir()
  assert cli.main(["--left", str(folder / "*"), "--output", str(out / "pairs")]) == 2
  assert capsys.readouterr().err.endswith(f"error: input {folder}/\\xff.tfrecord: its name is not valid UTF-8; "
                                          "rename the file\n")
  assert os.listdir(out) == []


@pytest.mark.parametrize("flag", ["--runtime_type_check", "--performance_runtime_type_check"])
def test_beams_runtime_type_checks_are_refused_in_one_line(left, tmp_path, capsys, flag):
  """Beam's runtime type checkers take the windowed values a step emits at the end of its bundle for elements of
  its main output, and fail the job with a traceback: refused up front instead."""
  out = tmp_path / "out"
  out.mkdir()
  assert cli.main(["--left", left, "--output", str(out / "pairs"), flag]) == 2
  assert capsys.readouterr().err.startswith("error: --runtime_type_check and --performance_runtime_type_check are "
                                            "not supported: ")
  assert os.listdir(out) == []

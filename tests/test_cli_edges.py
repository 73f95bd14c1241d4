"""Small edges of the command line (issue 12): each a one-line refusal, a warning or a quiet exit.

Refusals are checked through ``beam_job.cli.main``: exit status 2, exactly one line ``error: ...`` on stderr,
nothing on stdout, and nothing written.
"""

import os

import pytest

from beam_job import cli
from tests.helpers import make_example, write_tfrecord

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

"""Edges an adversarial trial of the publish protocol found: a user's folder named like a run's temporary
folder, a doubled slash in the prefix, damaged lease and summary files, and a rerun after a run that died right
after writing its summary. Each states a promise of README "Failure behaviour"."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from beam_job import cli
from tests.helpers import make_example, write_tfrecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  folder = tmp_path_factory.mktemp("small")
  write_tfrecord(str(folder / "left.tfrecord"), [make_example({"a": [i]}) for i in range(3)])
  write_tfrecord(str(folder / "right.tfrecord"), [make_example({"b": [float(j)]}) for j in range(2)])
  return {"left": str(folder / "left.tfrecord"), "right": str(folder / "right.tfrecord")}


def _argv(small, prefix, *more):
  return ["--left", small["left"], "--right", small["right"], "--output", str(prefix), *more]


def _one_line_error(capsys, argv, part):
  code = cli.main(argv)
  err = capsys.readouterr().err
  assert code == 2 and "Traceback" not in err, err[-600:]
  assert [line for line in err.splitlines() if line.startswith("error: ")] == [f"error: {part}"], err[-600:]


def test_a_run_on_p_never_deletes_a_complete_output_in_a_folder_named_like_its_temp_folder(small, tmp_path):
  other = tmp_path / "p-temp-0123456789ab" / "x"  # a user's folder that happens to match PREFIX-temp-<12 hex>
  other.parent.mkdir()
  assert cli.run(_argv(small, other))["pairs"] == 6
  cli.run(_argv(small, tmp_path / "p"))
  assert sorted(os.listdir(tmp_path / "p-temp-0123456789ab")) == ["x-00000-of-00001.tfrecord", "x-schema.pbtxt",
                                                                   "x-summary.json"]


def test_a_double_slash_before_the_prefix_name_publishes(small, tmp_path):
  # "$OUT/pairs" with OUT=/data/ : the listing joins folder and name with one '/', so no owned file ever matches
  summary = cli.run(_argv(small, f"{tmp_path}//p"))
  assert summary["pairs"] == 6 and summary["shards"] == [f"{tmp_path}/p-00000-of-00001.tfrecord"]
  assert sorted(os.listdir(tmp_path)) == ["p-00000-of-00001.tfrecord", "p-schema.pbtxt", "p-summary.json"]


@pytest.mark.parametrize("content", ["", '{"tok'])
def test_an_empty_or_half_written_lease_gives_one_line_error(small, tmp_path, capsys, content):
  # lease.renew() rewrites the lease in place (FileSystems.create truncates): kill -9 during it leaves this
  (tmp_path / "p-lease.json").write_text(content)
  _one_line_error(capsys, _argv(small, tmp_path / "p"), f"the lease file {tmp_path}/p-lease.json is damaged (not a "
                  "JSON object); if no run on this prefix is alive, delete it")


@pytest.mark.parametrize("content", ["[]", "null"])
def test_a_lease_that_is_json_but_not_an_object_gives_one_line_error(small, tmp_path, capsys, content):
  (tmp_path / "p-lease.json").write_text(content)
  _one_line_error(capsys, _argv(small, tmp_path / "p"), f"the lease file {tmp_path}/p-lease.json is damaged (not a "
                  "JSON object); if no run on this prefix is alive, delete it")


def test_a_lease_that_is_a_directory_gives_one_line_error(small, tmp_path, capsys):
  (tmp_path / "p-lease.json").mkdir()
  _one_line_error(capsys, _argv(small, tmp_path / "p"), f"the lease file {tmp_path}/p-lease.json is a directory, "
                  "not a lease; move it away")


def test_overwrite_never_deletes_a_directory_named_like_a_shard_or_a_summary(small, tmp_path):
  for name in ("p-00000-of-00001.tfrecord.gz", "p-summary.json.d", "p-00000-of-00002.tfrecord"):
    (tmp_path / name).mkdir()
    (tmp_path / name / "keep").write_text("a user's file")
  cli.run(_argv(small, tmp_path / "p", "--overwrite"))
  for name in ("p-00000-of-00001.tfrecord.gz", "p-summary.json.d", "p-00000-of-00002.tfrecord"):
    assert (tmp_path / name / "keep").read_text() == "a user's file"


def test_overwrite_of_a_summary_that_is_json_null_is_replaced(small, tmp_path):
  cli.run(_argv(small, tmp_path / "p"))
  (tmp_path / "p-summary.json").write_text("null")
  summary = cli.run(_argv(small, tmp_path / "p", "--overwrite"))
  assert summary["pairs"] == 6 and sorted(os.listdir(tmp_path)) == ["p-00000-of-00001.tfrecord", "p-schema.pbtxt",
                                                                    "p-summary.json"]


def test_rerunning_the_same_command_after_a_kill_right_after_the_summary_is_not_refused(small, tmp_path):
  prefix = tmp_path / "p"
  kill = textwrap.dedent(f"""
      import os, signal, sys
      from beam_job import cli, publish
      publish.remove_temp = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # dies just after the summary
      sys.exit(cli.main({_argv(small, prefix)!r}))
  """)
  env = dict(os.environ, PYTHONPATH=ROOT)
  assert subprocess.run([sys.executable, "-c", kill], env=env, cwd=ROOT, capture_output=True).returncode == -9
  assert json.loads((tmp_path / "p-summary.json").read_text())["pairs"] == 6
  rerun = subprocess.run([sys.executable, "-m", "beam_job", *_argv(small, prefix)], env=env, cwd=ROOT,
                         capture_output=True, text=True)
  assert rerun.returncode == 0, rerun.stderr[-300:]
  assert sorted(os.listdir(tmp_path)) == ["p-00000-of-00001.tfrecord", "p-schema.pbtxt", "p-summary.json"]
  # Another command on that prefix is still refused: only the same options complete the dead run.
  other = subprocess.run([sys.executable, "-m", "beam_job", *_argv(small, prefix, "--collision", "prefix")], env=env,
                         cwd=ROOT, capture_output=True, text=True)
  assert other.returncode == 2 and "already holds" in other.stderr, other.stderr[-300:]

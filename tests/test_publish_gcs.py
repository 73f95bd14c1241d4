"""The publish protocol on gs://, against the GCS protocol server on loopback (tests/gcs_emulator.py).

The promises of tests/test_publish.py where they are hardest to keep: an object store commits an upload on
close, renames by copy and delete, and creates "only if absent" by a generation precondition. After every fault
the same invariant is checked: whenever ``PREFIX-summary.json`` exists, the shards under the prefix are exactly
those it lists, with its byte total; and the rerun (or retried Finalize) leaves the bytes of a clean local run
and nothing else: no temporary object, no lease.
"""

import gc
import json
import os
import subprocess
import sys
import textwrap

import pytest
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp import gcsio

from beam_job import cli, lease, outputs, publish, sinks
from tests.helpers import assert_honest, failing_cell, make_example, manifest_builder, shards_of, temp_run, user_error, write_tfrecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RAW = CompressionTypes.UNCOMPRESSED
_CHUNK = 16 << 20  # Beam's GCS writer sends nothing before this many bytes, then one chunk at a time
GRID = ("--strategy", "grid", "--target_shard_mb", "0.0004")  # several shards from 6 x 4 records
OLD = ("--strategy", "grid", "--target_shard_mb", "0.0002")  # an earlier output with more, other shards


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """Local inputs, and the shards of a clean local run for each compression: what every gs:// rerun must give."""
  folder = tmp_path_factory.mktemp("small")
  write_tfrecord(str(folder / "left.tfrecord"), [make_example({"a": [i], "s": [b"x" * i]}) for i in range(6)])
  write_tfrecord(str(folder / "right.tfrecord"), [make_example({"b": [float(j)]}) for j in range(4)])
  inputs = {"left": str(folder / "left.tfrecord"), "right": str(folder / "right.tfrecord")}
  clean = {}
  for compression in ("uncompressed", "gzip"):
    summary = cli.run(_argv(inputs, folder / f"clean-{compression}", *GRID, "--output_compression", compression))
    clean[compression] = [open(path, "rb").read() for path in summary["shards"]]
  assert len(clean["uncompressed"]) > 2
  return dict(inputs, clean=clean)


def _argv(small, prefix, *more):
  return ["--left", small["left"], "--right", small["right"], "--output", str(prefix), *more]


def _get(path):
  with FileSystems.open(path, compression_type=_RAW) as f:
    return f.read()


def _put(path, data):
  with FileSystems.create(path, compression_type=_RAW) as f:
    f.write(data)


def _under(folder):
  """Every object under a gs:// folder, by path (the test's own folder: nothing else writes there)."""
  return sorted(m.path for m in FileSystems.match([outputs.escape_glob(folder) + "/**"])[0].metadata_list)


def _bytes(prefix):
  return [_get(o.path) for o in shards_of(prefix)]


def _published(prefix, summary):
  """What a complete run leaves under its prefix: its shards, schema and summary, nothing else."""
  return sorted(summary["shards"] + [outputs.schema_path(prefix), outputs.summary_path(prefix)])


# Cell attempts: cancelled on failure, never published as duplicates ------------------------------------------


@pytest.mark.parametrize("compression, size", [("uncompressed", 1000), ("gzip", 1000), ("uncompressed", _CHUNK + 1)],
                         ids=["uncompressed", "gzip", "one-chunk-sent"])
def test_a_cell_attempt_that_fails_half_way_commits_no_object(gcs_prefix, compression, size):
  path = sinks.attempt_path(outputs.temp_dir(f"{gcs_prefix}/p", "0123456789ab"), 0, 1)
  with pytest.raises(RuntimeError, match="dies half-way"):
    with sinks.open_shard(path, compression) as out:
      out.write(b"x" * size)
      raise RuntimeError("the attempt dies half-way")
  del out
  gc.collect()  # a writer that was not cancelled commits when it is collected
  assert _under(gcs_prefix) == []


def test_a_cell_attempt_whose_upload_fails_on_close_never_commits_later(gcs_emulator, gcs_prefix):
  """The upload is sent on close(); when that fails (here: the bucket is missing), the writer stays open and a
  later close() from the garbage collector would retry it, committing an attempt that was reported failed. The
  writer lives as long as the exception's traceback (a runner keeps it to log and report the failure)."""
  bucket = f"late-{gcs_prefix.rsplit('-', 1)[1]}"
  path = sinks.attempt_path(outputs.temp_dir(f"gs://{bucket}/p", "0123456789ab"), 0, 1)
  with pytest.raises(Exception, match="404") as raised:
    with sinks.open_shard(path, "gzip") as out:
      out.write(b"a whole shard")
  gcs_emulator.create_bucket(bucket)  # the cause passes
  del raised, out
  gc.collect()
  assert _under(f"gs://{bucket}/p-temp-0123456789ab") == []


@pytest.mark.parametrize("compression", ["uncompressed", "gzip"])
def test_a_job_whose_cell_fails_leaves_no_object_of_that_attempt_and_its_rerun_completes(small, gcs_prefix,
                                                                                         monkeypatch, compression):
  prefix = f"{gcs_prefix}/p"
  argv = _argv(small, prefix, *GRID, "--output_compression", compression)
  seen = {}
  abandon = cli._abandon  # pylint: disable=protected-access

  def watched(output, token):  # what the failed run left, before it cleans up after itself
    seen["temp"] = [o.path.rsplit("/", 1)[1] for o in outputs.list_owned(output) if o.kind == "temp"]
    abandon(output, token)

  monkeypatch.setattr(cli, "_abandon", watched)
  with pytest.raises(Exception, match=r"injected failure in cell \(0, 0\)"):
    with failing_cell(monkeypatch, (0, 0)):  # cell (0, 0) is shard 0
      cli.run(argv)
  assert "plan.json" in seen["temp"], seen
  assert not [name for name in seen["temp"] if name.startswith("shard-00000-")], seen  # the attempt was cancelled
  assert _under(gcs_prefix) == []  # the failed run removed its objects and its lease
  rerun = cli.run(argv)
  assert assert_honest(prefix) == rerun
  assert _bytes(prefix) == small["clean"][compression]
  assert _under(gcs_prefix) == _published(prefix, rerun)


def test_duplicate_attempts_finishing_or_failing_after_the_winner_are_never_published(gcs_prefix):
  prefix, token = f"{gcs_prefix}/p", "0123456789ab"
  moves = temp_run(prefix, token, [b"winner 0", b"winner 1"])
  folder = outputs.temp_dir(prefix, token)
  zombie = sinks.attempt_path(folder, 1, 2)
  with sinks.open_shard(zombie, "uncompressed") as out:  # finishes after the winner; its report is dropped
    out.write(b"zombie!")
  with pytest.raises(RuntimeError):
    with sinks.open_shard(sinks.attempt_path(folder, 0, 2), "gzip") as out:  # fails after the winner
      out.write(b"half of a zombie")
      raise RuntimeError("the duplicate dies")
  del out
  gc.collect()
  assert sorted(o.path for o in outputs.list_owned(prefix) if o.kind == "temp") == sorted([moves[0][0], moves[1][0],
                                                                                           zombie])
  publish.publish(prefix, token, manifest_builder(prefix, token, moves))
  assert assert_honest(prefix)["shards"] == [m[1] for m in moves]
  assert _bytes(prefix) == [b"winner 0", b"winner 1"]
  assert _under(gcs_prefix) == sorted([m[1] for m in moves] + [outputs.schema_path(prefix),
                                                               outputs.summary_path(prefix)])
  again = publish.publish(prefix, token, lambda: pytest.fail("published: nothing to build"))
  assert json.loads(again)["run"] == token  # a retry of a Finalize that completed is a no-op


def test_a_reported_object_of_another_size_is_never_published(gcs_prefix):
  prefix, token = f"{gcs_prefix}/p", "0123456789ab"
  moves = temp_run(prefix, token, [b"one", b"two"])
  _put(moves[1][0], b"tw")  # a shorter object under the reported name
  with pytest.raises(RuntimeError, match=r"temporary shard .*shard-00001-.* has 2 bytes, but its cell reported 3"):
    publish.publish(prefix, token, manifest_builder(prefix, token, moves))
  assert assert_honest(prefix) is None and shards_of(prefix) == []


# Finalize retried after a rename's copy without its delete ---------------------------------------------------


def test_finalize_retried_after_a_copy_without_its_delete_completes_its_own_output(gcs_prefix, monkeypatch):
  prefix, token = f"{gcs_prefix}/p", "0123456789ab"
  old = temp_run(prefix, "aaaaaaaaaaaa", [b"old 0", b"old 1", b"old 2"])
  publish.publish(prefix, "aaaaaaaaaaaa", manifest_builder(prefix, "aaaaaaaaaaaa", old))
  moves = temp_run(prefix, token, [b"new 0", b"new one"])
  delete_batch = gcsio.GcsIO.delete_batch

  def dies_after_the_copy(self, paths):
    if any("/shard-" in path for path in paths):
      raise ConnectionError("the worker died between the copy and the delete")
    return delete_batch(self, paths)

  monkeypatch.setattr(gcsio.GcsIO, "delete_batch", dies_after_the_copy)
  with pytest.raises(ConnectionError):
    publish.publish(prefix, token, manifest_builder(prefix, token, moves, overwrite=True))
  monkeypatch.setattr(gcsio.GcsIO, "delete_batch", delete_batch)
  present = {o.path for o in outputs.list_owned(prefix)}
  assert {m[0] for m in moves} | {m[1] for m in moves} <= present  # both names exist: a copy without its delete
  assert assert_honest(prefix) is None  # the old summary went first
  publish.publish(prefix, token, lambda: pytest.fail("a retry must reuse the manifest"))  # never "already holds"
  summary = assert_honest(prefix)
  assert summary["run"] == token and _bytes(prefix) == [b"new 0", b"new one"]
  assert _under(gcs_prefix) == sorted([m[1] for m in moves] + [outputs.schema_path(prefix),
                                                               outputs.summary_path(prefix)])


# kill -9 at each phase of an --overwrite publish on gs:// ----------------------------------------------------

# Runs the CLI with every object-store change of the publish step counted (Beam's rename is copy_batch then
# delete_batch; every delete the job makes is a delete_batch); the process dies as under kill -9 (os._exit: no
# cleanup, no finally) at the first operation whose description starts with CRASH_ON. Each operation is
# appended to OPS_FILE before it runs.
_CRASHER = textwrap.dedent("""
    import os, sys
    from apache_beam.io.gcp import gcsio
    from beam_job import cli, publish
    crash_on, publishing = os.environ["CRASH_ON"], [False]

    def counted(name, function):
      def wrapper(self, items, *args, **kwargs):
        if publishing[0]:
          names = ",".join(os.path.basename(item[-1] if isinstance(item, tuple) else item) for item in items)
          with open(os.environ["OPS_FILE"], "a", encoding="utf-8") as f:
            f.write(f"{name} {names}\\n")
          if f"{name} {names}".startswith(crash_on):
            os._exit(137)
        return function(self, items, *args, **kwargs)
      return wrapper

    gcsio.GcsIO.copy_batch = counted("copy", gcsio.GcsIO.copy_batch)
    gcsio.GcsIO.delete_batch = counted("delete", gcsio.GcsIO.delete_batch)
    apply = publish.apply
    def watched_apply(*args):
      publishing[0] = True
      return apply(*args)
    publish.apply = watched_apply
    sys.exit(cli.main(sys.argv[1:]))
""")


def _crash_run(argv, crash_on, ops_file):
  env = dict(os.environ, CRASH_ON=crash_on, OPS_FILE=str(ops_file), PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-c", _CRASHER, *argv], cwd=ROOT, capture_output=True, text=True, env=env,
                        timeout=300, check=False)


# (the operation the run dies at, whether the new summary stands by then)
_PHASES = [
    ("delete p-00000-of-", False),  # the old summary is gone, the old shards not yet
    ("delete shard-", False),  # the shards are copied to their final names, their temporary objects remain
    ("copy p-summary.json", False),  # the schema is written, the summary not
    ("delete manifest.json", True),  # published; the temporary folder and the lease remain
]


def test_kill_at_each_phase_of_an_overwrite_keeps_the_summary_honest_and_a_rerun_completes(small, gcs_prefix,
                                                                                             tmp_path):
  prefix = f"{gcs_prefix}/p"
  expected = small["clean"]["uncompressed"]
  old = cli.run(_argv(small, prefix, *OLD))
  assert len(old["shards"]) != len(expected)
  saved = {path: _get(path) for path in _under(gcs_prefix)}
  for number, (crash_on, published) in enumerate(_PHASES):
    outputs.remove_all(_under(gcs_prefix))  # the old, complete output again
    for path, data in saved.items():
      _put(path, data)
    ops = tmp_path / f"ops-{number}"
    crashed = _crash_run(_argv(small, prefix, *GRID, "--overwrite"), crash_on, ops)
    assert crashed.returncode == 137, (crash_on, crashed.stderr[-3000:])
    done = ops.read_text(encoding="utf-8").splitlines()
    assert done[0] == "delete p-summary.json" and done[-1].startswith(crash_on), done  # old summary first
    summary = assert_honest(prefix)
    assert (summary is not None) == published, (crash_on, summary)
    if published:
      assert _bytes(prefix) == expected
    rerun = cli.run(_argv(small, prefix, *GRID, "--overwrite"))
    assert assert_honest(prefix) == rerun
    assert _bytes(prefix) == expected, crash_on
    assert _under(gcs_prefix) == _published(prefix, rerun), crash_on  # no temporary object, no lease


def test_a_plain_rerun_completes_a_first_run_killed_between_copy_and_delete(small, gcs_prefix, tmp_path):
  prefix = f"{gcs_prefix}/p"
  crashed = _crash_run(_argv(small, prefix, *GRID), "delete shard-", tmp_path / "ops")
  assert crashed.returncode == 137, crashed.stderr[-3000:]
  assert assert_honest(prefix) is None and len(shards_of(prefix)) == len(small["clean"]["uncompressed"])
  rerun = cli.run(_argv(small, prefix, *GRID))  # not refused as "an earlier run"
  assert assert_honest(prefix) == rerun
  assert _bytes(prefix) == small["clean"]["uncompressed"]
  assert _under(gcs_prefix) == _published(prefix, rerun)


# One run per prefix ---------------------------------------------------------------------------------------------


def test_the_lease_is_created_only_if_absent_on_gcs(gcs_prefix):
  path = outputs.lease_path(f"{gcs_prefix}/p")
  assert lease._create_if_absent(path, json.dumps({"token": "first"}))  # pylint: disable=protected-access
  assert not lease._create_if_absent(path, json.dumps({"token": "second"}))  # pylint: disable=protected-access
  assert json.loads(_get(path)) == {"token": "first"}
  lease.release(f"{gcs_prefix}/p", "first")
  lease.acquire(f"{gcs_prefix}/p", "aaaaaaaaaaaa")
  with pytest.raises(Exception, match=r"is in use by run aaaaaaaaaaaa .*pid " + str(os.getpid())):
    lease.acquire(f"{gcs_prefix}/p", "bbbbbbbbbbbb")
  assert lease.read(path)["token"] == "aaaaaaaaaaaa"


def _spawn(argv):
  return subprocess.Popen([sys.executable, "-m", "beam_job", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_two_runs_started_together_publish_one_whole_output(small, gcs_prefix, overwrite):
  prefix = f"{gcs_prefix}/p"
  more = ["--overwrite"] if overwrite else []
  if overwrite:
    cli.run(_argv(small, prefix, *OLD))
  runs = [_spawn(_argv(small, prefix, *GRID, *more)) for _ in range(2)]
  results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
  assert sorted(code for code, _, _ in results)[0] == 0, results
  for code, _, err in results:
    if code:
      assert code == 2 and err.strip().splitlines()[-1].startswith(f"error: output prefix {prefix!r}"), err
      assert "is in use by run" in err or "already holds" in err, err
  summary = assert_honest(prefix)
  assert _bytes(prefix) == small["clean"]["uncompressed"]
  assert _under(gcs_prefix) == _published(prefix, summary)


# A listing error --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_a_listing_error_fails_with_one_line_naming_the_path_and_publishes_nothing(small, gcs_emulator, gcs_prefix,
                                                                                 capsys, overwrite):
  prefix = f"{gcs_prefix}/p"
  old = cli.run(_argv(small, prefix, *OLD))
  before = {path: _get(path) for path in _under(gcs_prefix)}
  gcs_emulator.fail_listings(prefix.split("/", 3)[3], status=403)
  try:
    user_error(capsys, _argv(small, prefix, *GRID, *(["--overwrite"] if overwrite else [])),
                f"cannot list the files under --output {prefix!r}: 403 GET ", "injected fault")
  finally:
    gcs_emulator.fail_listings("", times=0)
  assert {path: _get(path) for path in _under(gcs_prefix)} == before  # the earlier output, untouched
  assert assert_honest(prefix) == old
  assert not FileSystems.exists(outputs.lease_path(prefix))  # the prefix is free again


# Glob characters in the prefix ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["us[e]r?*", "u["])
def test_glob_characters_in_a_gcs_prefix_are_literal_and_another_dataset_survives_overwrite(small, gcs_prefix, name):
  other = cli.run(_argv(small, f"{gcs_prefix}/users"))
  kept = {path: _get(path) for path in _under(gcs_prefix)}
  prefix = f"{gcs_prefix}/{name}"
  for _ in range(2):  # the second run replaces the first's output
    summary = cli.run(_argv(small, prefix, *GRID, "--overwrite"))
    assert summary["shards"][0] == outputs.shard_name(prefix, 0, len(summary["shards"]), "uncompressed")
    assert assert_honest(prefix) == summary
  assert _bytes(prefix) == small["clean"]["uncompressed"]
  assert assert_honest(f"{gcs_prefix}/users") == other
  assert {path: _get(path) for path in kept} == kept
  assert _under(gcs_prefix) == sorted(list(kept) + _published(prefix, summary))  # no probe, temp or lease left


def test_two_runs_taking_over_one_stale_lease_never_both_hold_it(gcs_prefix, monkeypatch):
  """Both find a crashed run's lease; the first removes it and takes the prefix; the second, which read the
  stale lease before that, must not remove the first's new lease in its place."""
  prefix = f"{gcs_prefix}/p"
  _put(outputs.lease_path(prefix), json.dumps({"token": "cccccccccccc", "host": "elsewhere", "pid": 1,
                                               "expires": 1.0}).encode())
  read = lease.read
  taken = []

  def first_takes_over_after_the_second_read(path):
    holder = read(path)
    if not taken:
      taken.append(True)
      lease.acquire(prefix, "aaaaaaaaaaaa")  # the first run, between the second's read and its removal
    return holder

  monkeypatch.setattr(lease, "read", first_takes_over_after_the_second_read)
  with pytest.raises(Exception, match="is in use by run aaaaaaaaaaaa"):
    lease.acquire(prefix, "bbbbbbbbbbbb")
  assert read(outputs.lease_path(prefix))["token"] == "aaaaaaaaaaaa"

"""The publish protocol on a local disk: literal prefixes, resolved self-overwrite checks, one run per prefix,
crashes at every phase of an --overwrite publish, Finalize retries, size checks, a full disk and listing errors.

The invariant checked after every fault: a reader who trusts the summary never sees a partial or mixed output,
i.e. whenever ``PREFIX-summary.json`` exists, the shards under the prefix are exactly those it lists, with its
byte total; and a rerun of the same command completes with the bytes of a clean run.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from beam_job import cli, lease, outputs, publish, sinks
from tests.helpers import (assert_honest, make_example, manifest_builder, read_tfrecords, shards_of, temp_run, user_error,
                           write_tfrecord)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  folder = tmp_path_factory.mktemp("small")
  write_tfrecord(str(folder / "left.tfrecord"), [make_example({"a": [i], "s": [b"x" * i]}) for i in range(6)])
  write_tfrecord(str(folder / "right.tfrecord"), [make_example({"b": [float(j)]}) for j in range(4)])
  return {"left": str(folder / "left.tfrecord"), "right": str(folder / "right.tfrecord")}


def _argv(small, prefix, *more):
  return ["--left", small["left"], "--right", small["right"], "--output", str(prefix), *more]


GRID = ("--strategy", "grid", "--target_shard_mb", "0.0004")  # several shards from 6 x 4 records


def _bytes(prefix):
  return [open(o.path, "rb").read() for o in shards_of(prefix)]


# Names and matching -------------------------------------------------------------------------------------------


def test_shard_names_widen_past_99999_shards_and_classify_is_their_inverse():
  assert outputs.shard_name("/o/p", 7, 99_999, "uncompressed") == "/o/p-00007-of-99999.tfrecord"
  assert outputs.shard_name("/o/p", 7, 100_000, "gzip") == "/o/p-000007-of-100000.tfrecord.gz"
  assert outputs.shard_name("/o/p", 1_234_566, 1_234_567, "uncompressed") == "/o/p-1234566-of-1234567.tfrecord"
  for count in (1, 99_999, 100_000, 1_000_001):
    names = [outputs.shard_name("/o/p", s, count, "gzip") for s in (0, count // 2, count - 1)]
    assert [outputs.classify("/o/p", n).shard for n in names] == [(0, count), (count // 2, count),
                                                                   (count - 1, count)]
    assert sorted(names) == names  # name order is shard order at every width
  # Not ours: another width than the count needs, a number past the count, another dataset's prefix.
  for path in ("/o/p-0007-of-00009.tfrecord", "/o/p-00009-of-00009.tfrecord", "/o/p-00007-of-000009.tfrecord",
               "/o/pairs-00000-of-00001.tfrecord", "/o/p-x-00000-of-00001.tfrecord", "/o/p-summary.json.tmp"):
    assert outputs.classify("/o/p", path) is None, path
  assert outputs.classify("/o/p", "/o/p-summary.json").kind == "summary"
  assert outputs.classify("/o/p", "/o/p-temp-0123456789ab/shard-00001-" + "f" * 32).token == "0123456789ab"
  assert outputs.classify("/o/p", "/o/p-temp-0123456789ab/notes.txt") is None  # a user's file in such a folder


def test_listing_finds_100000_plus_shards_in_shard_order(tmp_path):
  prefix = str(tmp_path / "p")
  count = 100_002
  for shard in (0, 9, 99_999, 100_000, 100_001):
    open(outputs.shard_name(prefix, shard, count, "uncompressed"), "wb").close()
  open(outputs.shard_name(prefix, 3, 5, "uncompressed"), "wb").close()  # an earlier run's, another count
  found = [o.shard for o in shards_of(prefix)]
  assert sorted(found) == [(0, count), (3, 5), (9, count), (99_999, count), (100_000, count), (100_001, count)]


def test_escaped_glob_matches_only_the_literal_name(tmp_path):
  from apache_beam.io.filesystems import FileSystems
  for name in ("a*b", "a?b", "a[b", "a]b", "a[x]b", "axb"):
    (tmp_path / name).write_bytes(b"")
  for name in ("a*b", "a?b", "a[b", "a]b", "a[x]b"):
    matched = FileSystems.match([outputs.escape_glob(str(tmp_path / name))])[0].metadata_list
    assert [m.path for m in matched] == [str(tmp_path / name)]


# Prefixes, inputs and other datasets ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["u*", "u?", "u[", "u[s]", "u]"])
def test_glob_characters_in_the_prefix_are_literal_and_other_datasets_survive_overwrite(small, tmp_path, name):
  other = cli.run(_argv(small, tmp_path / "users"))
  kept = sorted(os.listdir(tmp_path))
  prefix = tmp_path / name
  for _ in range(2):  # the second run replaces the first's output
    summary = cli.run(_argv(small, prefix, "--overwrite"))
    assert summary["shards"] == [f"{prefix}-00000-of-00001.tfrecord"]
    assert assert_honest(prefix)["pairs"] == 24
  assert len(read_tfrecords(summary["shards"])) == 24
  assert sorted(n for n in os.listdir(tmp_path) if not n.startswith(name + "-")) == kept
  assert assert_honest(tmp_path / "users") == other
  assert sorted(os.listdir(tmp_path)) == sorted(kept + [f"{name}-00000-of-00001.tfrecord", f"{name}-schema.pbtxt",
                                                        f"{name}-summary.json"])  # no probe or temp left


def test_an_input_spelled_through_a_symlink_or_double_slash_is_never_overwritten(small, tmp_path, capsys):
  real = tmp_path / "real"
  real.mkdir()
  first = cli.run(_argv(small, real / "run1"))
  shard = first["shards"][0]
  before = open(shard, "rb").read()
  (tmp_path / "link").symlink_to(real)
  for output in (str(tmp_path / "link" / "run1"), "/" + str(real / "run1")):
    user_error(capsys, ["--left", shard, "--right", small["right"], "--output", output, "--overwrite"],
               "run1-00000-of-00001.tfrecord", "choose another prefix")
  linked = str(tmp_path / "link" / "run1-00000-of-00001.tfrecord")
  user_error(capsys, ["--left", linked, "--right", small["right"], "--output", str(real / "run1"), "--overwrite"],
              linked, "choose another prefix")
  assert open(shard, "rb").read() == before


def test_stale_temporary_folders_are_removed_only_when_named_by_the_job(small, tmp_path):
  prefix = tmp_path / "p"
  stale = tmp_path / "p-temp-0123456789ab"
  stale.mkdir()
  (stale / ("shard-00000-" + "a" * 32)).write_bytes(b"a crashed run's shard")
  (stale / "plan.json").write_bytes(b"{}")
  kept = tmp_path / "p-temp-00000000000f"  # named like a run's folder, but holding a user's file too
  kept.mkdir()
  (kept / ("shard-00000-" + "b" * 32)).write_bytes(b"a crashed run's shard")
  (kept / "notes.txt").write_bytes(b"a user's file")
  foreign = [tmp_path / "p-temp-notours", tmp_path / "p-temp-0123456789abc", tmp_path / "p-tempfile"]
  for path in foreign:
    path.write_bytes(b"a user's file")
  cli.run(_argv(small, prefix))
  assert not stale.exists()
  assert all(path.read_bytes() == b"a user's file" for path in foreign)
  assert os.listdir(kept) == ["notes.txt"]  # the job's file is gone, the user's file and its folder stay


def test_a_failed_run_removes_its_temporary_objects_and_lease(small, tmp_path, monkeypatch):
  prefix = tmp_path / "out" / "p"
  real = sinks.open_shard.__wrapped__ if hasattr(sinks.open_shard, "__wrapped__") else None
  assert real is not None  # open_shard is a contextlib.contextmanager

  def failing(path, compression):
    generator = real(path, compression)
    out = next(generator)
    out.write(b"half a shard")
    try:
      generator.throw(OSError("disk went away"))
    except OSError:
      pass
    raise OSError("disk went away")

  monkeypatch.setattr(sinks, "open_shard", failing)
  with pytest.raises(Exception, match="disk went away"):
    cli.run(_argv(small, prefix, *GRID))
  assert os.listdir(prefix.parent) == []


# One run per prefix -------------------------------------------------------------------------------------------


def _spawn(argv, env=None):
  return subprocess.Popen([sys.executable, "-m", "beam_job", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_a_second_run_on_a_live_prefix_is_refused(small, tmp_path, capsys, overwrite):
  prefix = tmp_path / "p"
  more = ["--overwrite"] if overwrite else []
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
  try:
    with open(outputs.lease_path(str(prefix)), "w", encoding="utf-8") as f:
      json.dump({"token": "aaaaaaaaaaaa", "host": __import__("socket").gethostname(), "boot": lease._boot_id(),
                 "pid": holder.pid, "pid_start": lease.process_start(holder.pid), "expires": time.time() + 600}, f)
    line = user_error(capsys, _argv(small, prefix, *more), "is in use by run aaaaaaaaaaaa", f"pid {holder.pid}",
                       "delete " + outputs.lease_path(str(prefix)))
    assert os.listdir(tmp_path) == ["p-lease.json"], line
  finally:
    holder.kill()
    holder.wait()
  summary = cli.run(_argv(small, prefix, *more))  # the holder is gone: its lease is stale on this machine
  assert assert_honest(prefix) == summary
  assert sorted(os.listdir(tmp_path)) == ["p-00000-of-00001.tfrecord", "p-schema.pbtxt", "p-summary.json"]


def test_an_expired_lease_of_another_machine_is_taken_over(small, tmp_path):
  prefix = tmp_path / "p"
  with open(outputs.lease_path(str(prefix)), "w", encoding="utf-8") as f:
    json.dump({"token": "bbbbbbbbbbbb", "host": "elsewhere", "pid": 1, "expires": time.time() - 1}, f)
  assert cli.run(_argv(small, prefix))["pairs"] == 24


def test_two_runs_taking_over_one_stale_local_lease_never_both_hold_it(tmp_path):
  import threading
  from beam_job.errors import JobError
  prefix = str(tmp_path / "p")
  path = outputs.lease_path(prefix)
  for attempt in range(200):
    with open(path, "w", encoding="utf-8") as f:
      json.dump({"token": "deaddeaddead", "host": "elsewhere", "pid": 1, "expires": time.time() - 1}, f)
    holders, barrier = [], threading.Barrier(2)

    def take(token):
      barrier.wait()
      try:
        lease.acquire(prefix, token)
        holders.append(token)
      except JobError:
        pass

    threads = [threading.Thread(target=take, args=(f"{attempt:03d}aaaaaaaa{n}",)) for n in range(2)]
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
    assert len(holders) == 1 and lease.read(path)["token"] == holders[0], (attempt, holders)
    assert sorted(os.listdir(tmp_path)) == ["p-lease.json"]
    os.remove(path)


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_two_runs_started_together_publish_one_whole_output(small, tmp_path, overwrite):
  prefix = tmp_path / "p"
  more = ["--overwrite"] if overwrite else []
  if overwrite:
    cli.run(_argv(small, prefix, *GRID))
  runs = [_spawn(_argv(small, prefix, *more)) for _ in range(2)]
  results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
  codes = sorted(code for code, _, _ in results)
  assert codes[0] == 0, results
  for code, _, err in results:
    if code:
      assert code == 2 and err.strip().splitlines()[-1].startswith("error: output prefix"), err
      assert "is in use by run" in err or "already holds" in err, err
  summary = assert_honest(prefix)
  assert summary["pairs"] == 24 and len(summary["shards"]) == 1
  assert sorted(os.listdir(tmp_path)) == ["p-00000-of-00001.tfrecord", "p-schema.pbtxt", "p-summary.json"]


# Crashes during publishing ------------------------------------------------------------------------------------

# Runs the CLI with every file operation of the publish step counted; at operation CRASH_AT the process dies as
# under kill -9 (os._exit: no cleanup, no finally). With CRASH_AT=0 it prints the operations it saw.
_CRASHER = textwrap.dedent("""
    import os, shutil, sys
    from beam_job import cli, publish
    limit, seen, publishing = int(os.environ["CRASH_AT"]), [], [False]

    def counted(name, function):
      def wrapper(*args, **kwargs):
        if publishing[0]:
          seen.append(f"{name} {os.path.basename(str(args[0]))}")
          if len(seen) == limit:
            os._exit(137)
        return function(*args, **kwargs)
      return wrapper

    os.rename, os.remove, shutil.rmtree = (counted("rename", os.rename), counted("remove", os.remove),
                                           counted("rmtree", shutil.rmtree))
    apply = publish.apply
    def watched_apply(*args):
      publishing[0] = True
      return apply(*args)
    publish.apply = watched_apply
    code = cli.main(sys.argv[1:])
    print("OPS " + "|".join(seen), file=sys.stderr)
    sys.exit(code)
""")


def _crash_run(argv, crash_at):
  env = dict(os.environ, CRASH_AT=str(crash_at), PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-c", _CRASHER, *argv], cwd=ROOT, capture_output=True, text=True, env=env,
                        timeout=300)


def test_kill_at_every_phase_of_an_overwrite_keeps_the_summary_honest_and_a_rerun_completes(small, tmp_path):
  clean = tmp_path / "clean"
  cli.run(_argv(small, clean, *GRID))
  expected = _bytes(clean)
  prefix = tmp_path / "p"
  old = ("--strategy", "grid", "--target_shard_mb", "0.0002")  # an earlier output with more, other shards
  cli.run(_argv(small, prefix, *old))
  recorded = _crash_run(_argv(small, prefix, *GRID, "--overwrite"), 0)
  assert recorded.returncode == 0, recorded.stderr[-3000:]
  ops = recorded.stderr.strip().splitlines()[-1][4:].split("|")
  # remove summary, remove old files, rename shards, rename schema, rename summary, remove temp objects, lease
  assert ops[0] == "remove p-summary.json", ops
  phases = sorted({0, 1, ops.index(next(o for o in ops if o.startswith("rename"))),
                   ops.index("rename schema.pbtxt" if "rename schema.pbtxt" in ops else ops[-1]) - 1,
                   ops.index(next(o for o in ops if "summary" in o and o.startswith("rename"))),
                   len(ops) - 2, len(ops) - 1})
  assert len(phases) >= 6, ops
  for crash_at in (phase + 1 for phase in phases):
    cli.run(_argv(small, prefix, *old, "--overwrite"))  # an old, complete output again
    crashed = _crash_run(_argv(small, prefix, *GRID, "--overwrite"), crash_at)
    assert crashed.returncode == 137, (crash_at, crashed.stderr[-3000:])
    summary = assert_honest(prefix)
    if summary is not None and crash_at <= len(ops) - 2:
      assert len(summary["shards"]) != len(expected) or crash_at > ops.index("rename p-summary.json"), crash_at
    rerun = cli.run(_argv(small, prefix, *GRID, "--overwrite"))
    assert assert_honest(prefix) == rerun
    assert _bytes(prefix) == expected, (crash_at, ops)
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("p-")) == sorted(
        [os.path.basename(s) for s in rerun["shards"]] + ["p-schema.pbtxt", "p-summary.json"]), crash_at


def test_a_rerun_without_overwrite_completes_a_first_run_killed_while_renaming(small, tmp_path):
  prefix = tmp_path / "p"
  recorded = _crash_run(_argv(small, tmp_path / "q", *GRID), 0)
  ops = recorded.stderr.strip().splitlines()[-1][4:].split("|")
  second_rename = [i for i, o in enumerate(ops) if o.startswith("rename")][1]
  crashed = _crash_run(_argv(small, prefix, *GRID), second_rename + 1)
  assert crashed.returncode == 137
  assert assert_honest(prefix) is None and len(shards_of(prefix)) == 1  # one shard out, no summary
  rerun = cli.run(_argv(small, prefix, *GRID))  # not refused as "an earlier run"
  assert _bytes(prefix) == _bytes(tmp_path / "q")
  assert assert_honest(prefix) == rerun


# Finalize retries and reported sizes --------------------------------------------------------------------------


def test_finalize_retried_after_a_copy_without_its_delete_completes_its_own_output(tmp_path):
  prefix = str(tmp_path / "p")
  moves = temp_run(prefix, "0123456789ab", [b"one", b"two", b"three"])
  build = manifest_builder(prefix, "0123456789ab", moves)
  manifest = build()
  publish.write_text(f"{outputs.temp_dir(prefix, '0123456789ab')}/{publish.MANIFEST}", json.dumps(manifest),
                     f"{prefix}-x.tmp")
  with open(moves[0][0], "rb") as src, open(moves[0][1], "wb") as dst:  # an object store's copy, then death
    dst.write(src.read())
  with open(moves[1][0], "rb") as src, open(moves[1][1], "wb") as dst:
    dst.write(src.read())
  os.remove(moves[1][0])
  publish.publish(prefix, "0123456789ab", lambda: pytest.fail("a retry must reuse the manifest"))
  assert assert_honest(prefix)["shards"] == [m[1] for m in moves]
  assert [open(m[1], "rb").read() for m in moves] == [b"one", b"two", b"three"]
  assert sorted(os.listdir(tmp_path)) == ["p-00000-of-00003.tfrecord", "p-00001-of-00003.tfrecord",
                                          "p-00002-of-00003.tfrecord", "p-schema.pbtxt", "p-summary.json"]


def test_finalize_retried_after_renaming_over_old_names_keeps_its_ownshards_of(tmp_path):
  prefix = str(tmp_path / "p")
  old = temp_run(prefix, "aaaaaaaaaaaa", [b"old-0", b"old-1"])
  publish.publish(prefix, "aaaaaaaaaaaa", manifest_builder(prefix, "aaaaaaaaaaaa", old))
  moves = temp_run(prefix, "0123456789ab", [b"new-zero", b"new-one"])  # the same two names, other sizes
  manifest = manifest_builder(prefix, "0123456789ab", moves, overwrite=True)()
  publish.write_text(f"{outputs.temp_dir(prefix, '0123456789ab')}/{publish.MANIFEST}", json.dumps(manifest),
                     f"{prefix}-x.tmp")
  os.remove(outputs.summary_path(prefix))  # the first attempt deleted the old summary and files...
  os.rename(moves[0][0], moves[0][1])  # ...renamed one shard over an old name, and died
  publish.publish(prefix, "0123456789ab", lambda: pytest.fail("a retry must reuse the manifest"))
  assert [open(m[1], "rb").read() for m in moves] == [b"new-zero", b"new-one"]
  assert assert_honest(prefix)["run"] == "0123456789ab"


def test_a_reported_object_of_another_size_or_missing_is_never_published(tmp_path):
  prefix = str(tmp_path / "p")
  moves = temp_run(prefix, "0123456789ab", [b"one", b"two"])
  with open(moves[1][0], "wb") as f:  # a zombie attempt's shorter object under the reported name
    f.write(b"tw")
  with pytest.raises(RuntimeError, match=r"temporary shard .*shard-00001-.* has 2 bytes, but its cell reported 3"):
    publish.check_reported(outputs.Snapshot.take(prefix), "0123456789ab", [(m[0], m[2]) for m in moves])
  os.remove(moves[1][0])
  with pytest.raises(RuntimeError, match="is missing, but its cell reported 3 bytes"):
    publish.check_reported(outputs.Snapshot.take(prefix), "0123456789ab", [(m[0], m[2]) for m in moves])


def test_a_failed_cell_attempt_leaves_no_object_and_a_duplicate_is_never_published(tmp_path):
  folder = tmp_path / "p-temp-0123456789ab"
  path = sinks.attempt_path(str(folder), 0, 1)
  for compression in ("uncompressed", "gzip"):
    with pytest.raises(RuntimeError):
      with sinks.open_shard(path, compression) as out:
        out.write(b"x" * 1000)
        raise RuntimeError("the attempt dies half-way")
    assert not os.path.exists(path)
  prefix = str(tmp_path / "p")
  moves = temp_run(prefix, "0123456789ab", [b"winner"])
  zombie = sinks.attempt_path(outputs.temp_dir(prefix, "0123456789ab"), 0, 1)
  with sinks.open_shard(zombie, "uncompressed") as out:  # finishes after the winner; never reported
    out.write(b"zombie!")
  assert zombie != moves[0][0]
  publish.publish(prefix, "0123456789ab", manifest_builder(prefix, "0123456789ab", moves))
  assert open(moves[0][1], "rb").read() == b"winner"
  assert sorted(os.listdir(tmp_path)) == ["p-00000-of-00001.tfrecord", "p-schema.pbtxt", "p-summary.json"]
  again = publish.publish(prefix, "0123456789ab", lambda: pytest.fail("published: nothing to build"))
  assert json.loads(again)["run"] == "0123456789ab"  # a retry of a Finalize that completed is a no-op
  assert sorted(os.listdir(tmp_path)) == ["p-00000-of-00001.tfrecord", "p-schema.pbtxt", "p-summary.json"]


def test_a_listing_error_fails_with_one_line_naming_the_path(small, tmp_path, capsys, monkeypatch):
  prefix = tmp_path / "out" / "p"
  real = os.scandir

  def failing(path="."):
    if os.fspath(path) == str(prefix.parent):
      raise PermissionError(13, "Permission denied", str(path))
    return real(path)

  monkeypatch.setattr(os, "scandir", failing)
  user_error(capsys, _argv(small, prefix, "--overwrite"), f"cannot list the files under --output {str(prefix)!r}",
              "Permission denied")


# A full disk ---------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path):
  """A tmpfs of a few dozen KiB and inodes (needs root, as on CI); unmounted by the test's end."""
  mount = tmp_path / "tiny"
  mount.mkdir()
  done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k,nr_inodes=64", "tmpfs", str(mount)],
                        capture_output=True, text=True, check=False)
  if done.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
  yield mount
  subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("full", ["space", "inodes"])
def test_a_disk_that_fills_during_publishing_leaves_no_summary_and_a_rerun_completes(small, tmp_path, tiny_disk,
                                                                                     full):
  argv = ["--left", small["left"], "--right", small["right"], *GRID]
  clean = cli.run(argv + ["--output", str(tmp_path / "clean")])
  prefix = tiny_disk / "p"
  fillers = tiny_disk / "fillers"
  fillers.mkdir()
  if full == "space":
    # Pages for the lease, plan.json, each shard and the manifest: the shards are renamed into place, then
    # the schema finds no room.
    page = os.statvfs(tiny_disk).f_frsize
    pages = sum(-(-os.path.getsize(shard) // page) for shard in clean["shards"]) + 3
    (fillers / "filler").write_bytes(b"\0" * ((os.statvfs(tiny_disk).f_bavail - pages) * page))
  else:
    # Inodes for the lease, the temporary folder, plan.json, each shard and the manifest: the shards are
    # renamed into place, then the schema finds no inode left.
    count = 0
    while os.statvfs(tiny_disk).f_favail > len(clean["shards"]) + 4:
      (fillers / str(count)).touch()
      count += 1
  with pytest.raises(Exception, match="No space left on device") as failed:
    cli.run(argv + ["--output", str(prefix)])
  assert "CrossProduct/Finalize" in str(failed.value)  # after every cell succeeded: while publishing
  assert assert_honest(prefix) is None and shards_of(prefix) == []  # rolled back: nothing half-published
  assert [n for n in os.listdir(tiny_disk) if n != "fillers"] == []
  subprocess.run(["rm", "-rf", str(fillers)], check=True)
  rerun = cli.run(argv + ["--output", str(prefix)])
  assert _bytes(prefix) == _bytes(tmp_path / "clean")
  assert assert_honest(prefix) == rerun

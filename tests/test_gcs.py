"""The job and Beam's GCS filesystem against a real GCS protocol server on loopback (tests/gcs_emulator.py).

Two halves. The first pins down how Beam 2.77's ``gcsio`` (over google-cloud-storage) behaves against the
emulator: what a glob matches, what delete and rename do with odd names, missing objects and batches, and when
a writer commits an object. These are the object-store facts the sinks rely on; each test names one. The
second runs the job with gs:// inputs and outputs, in-process and as ``python -m beam_job``, and checks its
shards byte for byte against a local run and record by record with TensorFlow.
"""

import gc
import gzip
import json
import os
import subprocess
import sys

import pytest
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from google.api_core.exceptions import NotFound, PreconditionFailed
from google.cloud.storage.exceptions import InvalidResponse
from google.cloud.storage.fileio import BlobWriter

from beam_job import cli, verify
from tests import gcs_emulator
from tests.helpers import canonical, make_example, parse, proto_merge, read_tfrecords, write_tfrecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RAW = CompressionTypes.UNCOMPRESSED
_CHUNK = 16 << 20  # Beam's BeamBlobWriter sends nothing before this many bytes, then one chunk at a time.


def _put(path: str, data: bytes) -> None:
  with FileSystems.create(path, compression_type=_RAW) as f:
    f.write(data)


def _get(path: str) -> bytes:
  with FileSystems.open(path, compression_type=_RAW) as f:
    return f.read()


def _paths(pattern: str) -> list:
  return [m.path for m in FileSystems.match([pattern])[0].metadata_list]


# --- What Beam's gcsio does against the emulator. ---


def test_write_read_match_size_and_exists(gcs_prefix):
  _put(f"{gcs_prefix}/a.bin", b"\x00\x01" * 1000)
  _put(f"{gcs_prefix}/empty", b"")
  assert _get(f"{gcs_prefix}/a.bin") == b"\x00\x01" * 1000
  assert _get(f"{gcs_prefix}/empty") == b""
  found = {m.path: m.size_in_bytes for m in FileSystems.match([f"{gcs_prefix}/*"])[0].metadata_list}
  assert found == {f"{gcs_prefix}/a.bin": 2000, f"{gcs_prefix}/empty": 0}
  assert FileSystems.exists(f"{gcs_prefix}/a.bin")
  assert not FileSystems.exists(f"{gcs_prefix}/missing")
  assert not FileSystems.exists(gcs_prefix)  # a "folder" is not an object
  assert not FileSystems.exists(gcs_prefix + "/")


def test_star_stays_in_its_folder_double_star_and_trailing_slash_do_not(gcs_prefix):
  for name in ("a", "b", "sub/c", "sub/deeper/d"):
    _put(f"{gcs_prefix}/{name}", name.encode())
  assert _paths(f"{gcs_prefix}/*") == [f"{gcs_prefix}/a", f"{gcs_prefix}/b"]
  assert _paths(f"{gcs_prefix}/") == [f"{gcs_prefix}/a", f"{gcs_prefix}/b"]  # Beam appends '*'
  assert _paths(f"{gcs_prefix}/**") == [f"{gcs_prefix}/{n}" for n in ("a", "b", "sub/c", "sub/deeper/d")]
  assert _paths(f"{gcs_prefix}/*/c") == [f"{gcs_prefix}/sub/c"]


def test_missing_object_folder_and_bucket_match_nothing_but_a_glob_in_a_missing_bucket_raises(gcs_prefix):
  assert _paths(f"{gcs_prefix}/missing") == []
  assert _paths(f"{gcs_prefix}/missing/*") == []
  assert _paths("gs://no-such-bucket/x") == []
  with pytest.raises(BeamIOError, match="List operation failed"):
    _paths("gs://no-such-bucket/x*")


def test_brackets_and_question_marks_are_glob_syntax_even_in_a_plain_name(gcs_prefix):
  """Beam has no way to quote '[', '?' or '*': a name holding them matches other objects, or not itself."""
  for name in ("x[1]", "x1", "q?", "qz", "star*"):
    _put(f"{gcs_prefix}/{name}", name.encode())
  assert _paths(f"{gcs_prefix}/x[1]") == [f"{gcs_prefix}/x1"]
  assert _paths(f"{gcs_prefix}/q?") == [f"{gcs_prefix}/q?", f"{gcs_prefix}/qz"]
  assert _paths(f"{gcs_prefix}/star*") == [f"{gcs_prefix}/star*"]
  # exists, open and rename take the name literally ...
  assert FileSystems.exists(f"{gcs_prefix}/x[1]")
  assert _get(f"{gcs_prefix}/x[1]") == b"x[1]"
  FileSystems.rename([f"{gcs_prefix}/q?"], [f"{gcs_prefix}/moved[2]"])
  assert _get(f"{gcs_prefix}/moved[2]") == b"q?" and FileSystems.exists(f"{gcs_prefix}/qz")
  # ... but delete matches each path as a glob first: it removes the wrong object and keeps the named one.
  FileSystems.delete([f"{gcs_prefix}/x[1]"])
  assert FileSystems.exists(f"{gcs_prefix}/x[1]") and not FileSystems.exists(f"{gcs_prefix}/x1")


def test_delete_of_a_missing_object_is_silent_and_a_glob_deletes_only_its_folder(gcs_prefix):
  FileSystems.delete([f"{gcs_prefix}/missing"])
  FileSystems.delete(["gs://no-such-bucket/missing"])
  for name in ("a", "b", "sub/c"):
    _put(f"{gcs_prefix}/{name}", b"")
  FileSystems.delete([f"{gcs_prefix}/*"])
  assert _paths(f"{gcs_prefix}/**") == [f"{gcs_prefix}/sub/c"]


def test_rename_is_copy_then_delete_in_batches_of_100_and_overwrites_its_destination(gcs_prefix):
  sources = [f"{gcs_prefix}/src/{i:03d}" for i in range(101)]  # two batches
  for path in sources:
    _put(path, path.encode())
  _put(f"{gcs_prefix}/dst/000", b"an earlier object")
  FileSystems.rename(sources, [path.replace("/src/", "/dst/") for path in sources])
  assert _paths(f"{gcs_prefix}/src/*") == []
  assert _paths(f"{gcs_prefix}/dst/*") == [path.replace("/src/", "/dst/") for path in sources]
  assert _get(f"{gcs_prefix}/dst/000") == f"{gcs_prefix}/src/000".encode()
  assert _get(f"{gcs_prefix}/dst/100") == f"{gcs_prefix}/src/100".encode()


def test_rename_of_a_missing_source_fails_with_404_and_still_moves_the_others(gcs_prefix):
  _put(f"{gcs_prefix}/present", b"p")
  with pytest.raises(BeamIOError) as raised:
    FileSystems.rename([f"{gcs_prefix}/missing", f"{gcs_prefix}/present"],
                       [f"{gcs_prefix}/to-1", f"{gcs_prefix}/to-2"])
  assert raised.value.exception_details == {(f"{gcs_prefix}/missing", f"{gcs_prefix}/to-1"): 404}
  assert _paths(f"{gcs_prefix}/*") == [f"{gcs_prefix}/to-2"]


def test_the_plain_emulator_ignores_generation_preconditions(tmp_path):
  """Real GCS answers 412 to each of these; gcp-storage-emulator by itself does what was asked regardless,
  which is why the fixture runs it through tests/gcs_emulator_server.py."""
  with gcs_emulator.running(str(tmp_path), preconditions=False) as plain:
    bucket = plain.client().bucket(plain.create_bucket())
    bucket.blob("obj").upload_from_string(b"one", if_generation_match=0)
    generation = bucket.get_blob("obj").generation
    bucket.blob("obj").upload_from_string(b"two", if_generation_match=0)
    assert bucket.blob("obj").download_as_bytes() == b"two"
    bucket.blob("obj").upload_from_string(b"three", if_generation_match=generation)
    assert bucket.blob("obj").download_as_bytes() == b"three"
    bucket.copy_blob(bucket.blob("obj"), bucket, "copy", if_generation_match=0)
    bucket.copy_blob(bucket.blob("obj"), bucket, "copy", if_generation_match=0)
    bucket.delete_blob("obj", if_generation_match=generation)
    assert not bucket.blob("obj").exists()


def test_the_fixture_enforces_generation_preconditions_as_gcs_does(gcs_emulator, gcs_prefix):
  bucket = gcs_emulator.client().bucket(gcs_emulator.bucket)
  name = gcs_prefix.split("/", 3)[3] + "/obj"
  bucket.blob(name).upload_from_string(b"one", if_generation_match=0)  # create only if absent
  first = bucket.get_blob(name).generation
  with pytest.raises(PreconditionFailed):
    bucket.blob(name).upload_from_string(b"two", if_generation_match=0)
  # A resumable upload (Beam's kind) is refused when it commits, as the media layer's InvalidResponse, not as
  # PreconditionFailed; the failed close leaves the writer open, so terminate it.
  writer = BlobWriter(bucket.blob(name), if_generation_match=0)
  writer.write(b"three")
  with pytest.raises(InvalidResponse) as raised:
    writer.close()
  assert raised.value.response.status_code == 412
  writer.terminate()
  assert bucket.blob(name).download_as_bytes() == b"one"
  bucket.blob(name).upload_from_string(b"four", if_generation_match=first)  # replace only if unchanged
  second = bucket.get_blob(name).generation
  assert second != first
  with pytest.raises(PreconditionFailed):
    bucket.blob(name).upload_from_string(b"five", if_generation_match=first)
  with pytest.raises(PreconditionFailed):
    bucket.copy_blob(bucket.blob(name), bucket, name, if_generation_match=0)
  bucket.copy_blob(bucket.blob(name), bucket, name + "-copy", if_generation_match=0, if_source_generation_match=second)
  with pytest.raises(PreconditionFailed):
    bucket.copy_blob(bucket.blob(name), bucket, name + "-2", if_source_generation_match=first)
  with pytest.raises(PreconditionFailed):
    bucket.delete_blob(name, if_generation_match=first)
  bucket.delete_blob(name, if_generation_match=second)
  assert not bucket.blob(name).exists()
  with pytest.raises(NotFound):
    bucket.delete_blob(name, if_generation_match=second)
  assert bucket.blob(name + "-copy").download_as_bytes() == b"four"


@pytest.mark.parametrize("size", [1000, _CHUNK + 1], ids=["buffered", "one-chunk-sent"])
def test_a_writer_left_by_an_exception_in_its_with_block_commits_nothing(gcs_prefix, size):
  """BlobWriter.__exit__ with an exception calls terminate(): nothing sent yet means nothing to cancel; a
  session already holding a chunk gets a DELETE (the emulator answers 501 and keeps it uncommitted)."""
  with pytest.raises(ValueError):
    with FileSystems.create(f"{gcs_prefix}/obj", compression_type=_RAW) as f:
      f.write(b"x" * size)
      raise ValueError("failed while writing")
  assert not FileSystems.exists(f"{gcs_prefix}/obj")


def test_close_and_garbage_collection_both_commit_a_partial_object(gcs_prefix):
  """close() always finishes the upload, and io.IOBase.__del__ calls close(): a writer dropped after an
  exception (once the traceback that holds it is gone) commits whatever was written."""
  f = FileSystems.create(f"{gcs_prefix}/closed", compression_type=_RAW)
  f.write(b"partial")
  f.close()
  assert _get(f"{gcs_prefix}/closed") == b"partial"

  def fail_while_writing():
    dropped = FileSystems.create(f"{gcs_prefix}/dropped", compression_type=_RAW)
    dropped.write(b"half of it")
    raise ValueError("failed while writing")
  with pytest.raises(ValueError):
    fail_while_writing()
  gc.collect()
  assert _get(f"{gcs_prefix}/dropped") == b"half of it"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_writer_whose_close_failed_stays_open_and_commits_when_collected_later(gcs_emulator, gcs_prefix):
  """close() raised (here: no such bucket yet), so the buffer is not closed; close() again, from garbage
  collection or at interpreter exit, retries the upload. A failed close is no abort: terminate() is."""
  bucket = f"late-{gcs_prefix.rsplit('-', 1)[1]}"
  f = FileSystems.create(f"gs://{bucket}/obj", compression_type=_RAW)
  f.write(b"written before the failure")
  with pytest.raises(Exception, match="404"):
    f.close()
  assert not f.closed
  gcs_emulator.create_bucket(bucket)
  del f
  gc.collect()
  assert _get(f"gs://{bucket}/obj") == b"written before the failure"

  f = FileSystems.create("gs://no-such-bucket/obj", compression_type=_RAW)
  f.write(b"x")
  with pytest.raises(Exception, match="404"):
    f.close()
  f.terminate()
  assert f.closed


@pytest.mark.parametrize("size", [1000, _CHUNK + 1], ids=["buffered", "one-chunk-sent"])
def test_terminate_aborts_an_upload_for_good(gcs_prefix, size):
  f = FileSystems.create(f"{gcs_prefix}/obj", compression_type=_RAW)
  f.write(b"x" * size)
  f.terminate()
  assert f.closed
  f.close()  # a no-op now, as is the close() garbage collection makes
  del f
  gc.collect()
  assert not FileSystems.exists(f"{gcs_prefix}/obj")


def test_gzip_around_the_writer_commits_a_valid_short_object_when_its_with_block_raises(gcs_prefix):
  """GzipFile.__exit__ closes the gzip stream whatever happened, writing a correct trailer: the cut-off
  object is a valid gzip file. Only terminate() on the raw writer keeps it from being committed."""
  raw = FileSystems.create(f"{gcs_prefix}/closed.gz", compression_type=_RAW)
  with pytest.raises(ValueError):
    try:
      with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as stream:
        stream.write(b"record " * 10)
        raise ValueError("failed while writing")
    finally:
      raw.close()
  assert gzip.decompress(_get(f"{gcs_prefix}/closed.gz")) == b"record " * 10

  with pytest.raises(ValueError):  # Beam's own gzip wrapper: CompressedFile.__exit__ always closes too
    with FileSystems.create(f"{gcs_prefix}/beam.gz", compression_type=CompressionTypes.GZIP) as stream:
      stream.write(b"record " * 10)
      raise ValueError("failed while writing")
  assert gzip.decompress(_get(f"{gcs_prefix}/beam.gz")) == b"record " * 10

  with pytest.raises(ValueError):
    with FileSystems.create(f"{gcs_prefix}/terminated.gz", compression_type=_RAW) as raw:
      with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as stream:
        stream.write(b"record " * 10)
        raise ValueError("failed while writing")
  assert not FileSystems.exists(f"{gcs_prefix}/terminated.gz")


# --- The job with gs:// inputs and outputs. ---

LEFT = [make_example({"id": [i], "blob": [bytes([i]) * (i + 1)], "w": [i / 4]}) for i in range(6)]
RIGHT_1 = [make_example({"item": [b"item-%d" % i], "price": [1.5 * i]}) for i in range(3)]
RIGHT_2 = [make_example({"item": [b"\xfe\xff"]}), make_example({})]
_SHARDS = ["--target_shard_mb", "0.0004"]  # several cells, so several shards


@pytest.fixture(scope="module")
def job_inputs(gcs_emulator, tmp_path_factory):
  """The inputs, written locally by TensorFlow and uploaded byte for byte under a gs:// folder."""
  local = tmp_path_factory.mktemp("gcs_job_inputs")
  write_tfrecord(local / "left.tfrecord", LEFT)
  write_tfrecord(local / "right-1.tfrecord.gz", RIGHT_1, "gzip")
  write_tfrecord(local / "right-2.tfrecord", RIGHT_2)
  remote = f"gs://{gcs_emulator.bucket}/job-inputs"
  for name in os.listdir(local):
    with open(local / name, "rb") as f:
      _put(f"{remote}/{name}", f.read())
  expected = [canonical(proto_merge(parse(left), parse(right))) for left in LEFT for right in RIGHT_1 + RIGHT_2]
  return {"local": str(local), "remote": remote, "expected": expected}


def _flags(root: str, output: str, *extra) -> list:
  return ["--left", f"{root}/left.tfrecord", "--right", f"{root}/right-*", "--output", output, *_SHARDS, *extra]


def _read_shards(paths, compression, tmp_path) -> list:
  """Every record of the shards, fetched through Beam's filesystem and read by tf.data (CRCs checked)."""
  local = []
  for i, path in enumerate(paths):
    copy = tmp_path / f"shard-{i}"
    copy.write_bytes(_get(path))
    local.append(copy)
  return read_tfrecords(local, compression)


def _without_paths(summary: dict) -> dict:
  inputs = {side: sorted((path.rsplit("/", 1)[1], size) for path, size in summary["inputs"][side]["files"].items())
            for side in ("left", "right")}
  return dict({k: v for k, v in summary.items() if k not in ("output", "shards", "schema", "run", "inputs")},
              input_files=inputs)


@pytest.mark.parametrize("compression", ["uncompressed", "gzip"])
def test_job_on_gcs_writes_the_bytes_of_a_local_run(job_inputs, gcs_prefix, tmp_path, compression):
  extra = ("--output_compression", compression)
  local = cli.run(_flags(job_inputs["local"], str(tmp_path / "local" / "pairs"), *extra))
  output = f"{gcs_prefix}/out/pairs"
  remote = cli.run(_flags(job_inputs["remote"], output, *extra))

  assert _without_paths(remote) == _without_paths(local)
  assert verify.main(["--output", output]) == 0  # from the summary alone: the gs:// inputs it lists, read again
  assert remote["pairs"] == len(job_inputs["expected"]) and len(remote["shards"]) > 1
  suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
  count = len(remote["shards"])
  assert remote["shards"] == [f"{output}-{i:05d}-of-{count:05d}{suffix}" for i in range(count)]
  for remote_shard, local_shard in zip(remote["shards"], local["shards"]):
    with open(local_shard, "rb") as f:
      assert _get(remote_shard) == f.read(), remote_shard
  records = _read_shards(remote["shards"], compression, tmp_path)
  assert [canonical(record) for record in records] == job_inputs["expected"]
  # The summary on GCS is the one returned; the temporary folder is gone; nothing else was written.
  assert json.loads(_get(f"{output}-summary.json")) == remote
  assert _paths(f"{gcs_prefix}/**") == sorted(remote["shards"] + [f"{output}-schema.pbtxt", f"{output}-summary.json"])


def test_python_m_beam_job_on_gcs(job_inputs, gcs_prefix, tmp_path):
  """The CLI in its own process finds the emulator and the fake credentials through the environment."""
  output = f"{gcs_prefix}/pairs"
  proc = subprocess.run([sys.executable, "-m", "beam_job", *_flags(job_inputs["remote"], output)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-5000:]
  summary = json.loads(_get(f"{output}-summary.json"))
  assert proc.stdout.startswith(
      f"wrote {len(job_inputs['expected'])} pairs in {len(summary['shards'])} shard(s) under {output}-*\n")
  records = _read_shards(summary["shards"], "uncompressed", tmp_path)
  assert [canonical(record) for record in records] == job_inputs["expected"]


def test_job_on_gcs_refuses_an_earlier_output_and_replaces_it_with_overwrite(job_inputs, gcs_prefix, capsys):
  output = f"{gcs_prefix}/pairs"
  first = cli.run(_flags(job_inputs["remote"], output, "--output_compression", "gzip"))
  assert cli.main(_flags(job_inputs["remote"], output)) == 2
  assert capsys.readouterr().err.startswith(
      f"error: output prefix {output!r} already holds {len(first['shards']) + 2} file(s) of an earlier run "
      f"(e.g. {first['shards'][0]}); pass --overwrite to replace them")
  second = cli.run(_flags(job_inputs["remote"], output, "--overwrite"))
  assert _paths(f"{gcs_prefix}/**") == sorted(
      second["shards"] + [f"{output}-schema.pbtxt", f"{output}-summary.json"])
  assert all(path.endswith(".tfrecord") for path in second["shards"])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_job_on_gcs_names_a_pattern_that_matches_nothing_and_an_unwritable_output(job_inputs, gcs_prefix, capsys):
  assert cli.main(["--left", f"{gcs_prefix}/nothing-*", "--output", f"{gcs_prefix}/pairs"]) == 2
  assert capsys.readouterr().err == f"error: --left pattern '{gcs_prefix}/nothing-*' matches no file\n"
  assert cli.main(_flags(job_inputs["remote"], "gs://no-such-bucket/pairs")) == 2
  assert capsys.readouterr().err.startswith("error: cannot write under --output 'gs://no-such-bucket/pairs': ")
  # The probe's writer failed in close() and so is still open: collected later, it would try to commit again,
  # and after the emulator is gone that retries for two minutes (see the test of a failed close above).
  gc.collect()

"""Writing one cell's shard to a temporary object that only a finished attempt leaves behind, on any Beam filesystem.

Each attempt at a cell writes its own uniquely named object and reports its name and size; publishing
(``publish.py``) moves only reported objects and checks their sizes. An attempt that fails cancels its
object: an object store commits an upload on ``close()`` (and a gzip writer closes with a valid trailer), so a
failed attempt must never close normally, or a shorter, well-formed object would exist.
"""

import contextlib
import gzip
import os
import uuid
from typing import BinaryIO, Iterator

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_job import outputs
from beam_job.errors import JobError

_RAW = CompressionTypes.UNCOMPRESSED


class _Counted:
  """Counts the bytes written through it: the size the object must have when published."""

  def __init__(self, raw: BinaryIO):
    self._raw = raw
    self.count = 0

  def write(self, data) -> int:
    self._raw.write(data)
    self.count += len(data)
    return len(data)

  def flush(self) -> None:
    pass


def attempt_path(folder: str, shard: int, count: int) -> str:
  """A temporary name no other attempt at the same cell can have."""
  return f"{folder}/shard-{shard:0{outputs.shard_width(count)}d}-{uuid.uuid4().hex}"


def _cancel(raw: BinaryIO, path: str) -> None:
  """Drops a failed attempt's object without committing it."""
  try:
    terminate = getattr(raw, "terminate", None)  # GCS's BlobWriter: abort the resumable upload
    if terminate is not None:
      terminate()
      return
    raw.close()
    outputs.remove(path)
  except Exception:  # pylint: disable=broad-except  # never publishable: it is not reported
    pass


@contextlib.contextmanager
def open_shard(path: str, compression: str) -> Iterator[_Counted]:
  """A shard for writing; yields a writer whose ``count`` is the object's final size once the block ends.

  gzip is written with no name and no time in its header, so equal records give equal bytes.
  """
  raw = FileSystems.create(path, mime_type="application/octet-stream", compression_type=_RAW)
  counted = _Counted(raw)
  stream = None
  try:
    if compression == "gzip":
      stream = gzip.GzipFile(filename="", mode="wb", fileobj=counted, mtime=0, compresslevel=6)
      yield _GzipCounted(stream, counted)
      stream.close()  # writes the trailer, only on success
    else:
      yield counted
    # Commits the object. On an object store a close() that failed leaves the writer open, and a later close()
    # (the garbage collector's, once the failure's traceback is gone) would retry the upload: cancel it too.
    raw.close()
  except BaseException:
    if stream is not None:
      stream.fileobj = None  # so that closing it, even by the garbage collector, writes no trailer
    _cancel(raw, path)
    raise


class _GzipCounted:
  """A gzip stream whose ``count`` is the compressed size written so far (complete once closed)."""

  def __init__(self, stream: gzip.GzipFile, counted: _Counted):
    self._stream = stream
    self._counted = counted

  def write(self, data) -> int:
    return self._stream.write(data)

  @property
  def count(self) -> int:
    return self._counted.count


def check_writable(output: str, token: str) -> None:
  """Writes and removes a small file under the prefix, so a bad output location fails before any reading."""
  probe = f"{outputs.temp_dir(output, token)}/probe"
  try:
    with FileSystems.create(probe, compression_type=_RAW) as f:
      f.write(b"probe")
    outputs.remove(probe)
    if FileSystems.get_scheme(output) is None:
      os.rmdir(outputs.temp_dir(output, token))
  except Exception as e:  # pylint: disable=broad-except
    raise JobError(f"cannot write under --output {output!r}: {str(e).splitlines()[0]}") from None

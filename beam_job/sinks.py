"""Writing one cell's shard to a temporary object that only a finished attempt leaves behind, on any Beam filesystem.

Each attempt at a cell writes its own uniquely named object and reports its name and size; publishing
(``publish.py``) moves only reported objects and checks their sizes. An attempt that fails cancels its
object: an object store commits an upload on ``close()`` (and a gzip writer closes with a valid trailer), so a
failed attempt must never close normally, or a shorter, well-formed object would exist.
"""

import contextlib
import os
import queue
import struct
import threading
import uuid
import zlib
from typing import BinaryIO, Iterator, Optional, Union

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
def open_shard(path: str, compression: str) -> Iterator[Union[_Counted, "GzipWriter"]]:
  """A shard for writing; yields a writer whose ``count`` is the object's final size once the block ends.

  gzip is written with no name and no time in its header, so equal records give equal bytes.
  """
  raw = FileSystems.create(path, mime_type="application/octet-stream", compression_type=_RAW)
  counted = _Counted(raw)
  stream = None
  try:
    if compression == "gzip":
      stream = GzipWriter(counted)
      yield stream
      stream.close()  # writes the trailer, only on success
    else:
      yield counted
    # Commits the object. On an object store a close() that failed leaves the writer open, and a later close()
    # (the garbage collector's, once the failure's traceback is gone) would retry the upload: cancel it too.
    raw.close()
  except BaseException:
    if stream is not None:
      stream.abort()  # nothing more reaches the object, and no trailer ever does
    _cancel(raw, path)
    raise


# What gzip.GzipFile(filename="", mode="wb", mtime=0, compresslevel=6) writes first: magic, deflate, no flags,
# mtime 0, no extra flags (level 6 is neither "best" nor "fast"), OS "unknown".
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_INLINE_BYTES = 1 << 20  # below this a shard is compressed on the caller's thread: a thread would cost more
_PENDING = 2  # blocks waiting for the compressor: bounds the memory a fast caller can queue


class GzipWriter:
  """Writes the bytes ``gzip.GzipFile(filename="", mode="wb", mtime=0, compresslevel=6)`` writes, compressing
  in a background thread once the shard passes ``_INLINE_BYTES``, so the caller frames the next block while
  zlib (which releases the GIL) compresses this one; ``count`` is the compressed size written so far.

  It makes GzipFile's zlib calls (one ``compress`` and ``crc32`` per write, in order), so the bytes do not depend
  on which thread makes them. An error in the thread is raised by the caller's next ``write`` or ``close``. ``close``
  writes the trailer; ``abort`` stops the thread and writes nothing more, so a failed attempt ends with no
  trailer.
  """

  def __init__(self, out: _Counted):
    self._out = out
    self._deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0)
    self._crc = 0
    self._size = 0  # uncompressed bytes accepted
    self._queue: Optional[queue.Queue] = None
    self._thread: Optional[threading.Thread] = None
    self._error: Optional[BaseException] = None
    self._aborted = False
    self._closed = False
    out.write(_GZIP_HEADER)

  @property
  def count(self) -> int:
    return self._out.count

  def write(self, data) -> int:
    if self._closed:
      raise ValueError("write() on a closed gzip shard")
    self._raise_failure()
    length = len(data) if isinstance(data, (bytes, bytearray)) else memoryview(data).nbytes
    if not length:
      return 0
    self._size += length
    if self._thread is None and self._size < _INLINE_BYTES:
      self._compress(data)
      return length
    if self._thread is None:
      self._queue = queue.Queue(maxsize=_PENDING)
      self._thread = threading.Thread(target=self._run, name="gzip-shard", daemon=True)
      self._thread.start()
    self._queue.put(data if isinstance(data, bytes) else bytes(data))  # the caller may reuse its buffer
    return length

  def close(self) -> None:
    """Waits for the compressor, then writes the end of the deflate stream and the trailer."""
    if self._closed:
      return
    self._stop()
    self._raise_failure()
    self._closed = True
    self._out.write(self._deflate.flush() + struct.pack("<LL", self._crc, self._size & 0xffffffff))

  def abort(self) -> None:
    """Drops what is queued and waits for the thread: nothing is written after this returns."""
    self._aborted = self._closed = True
    self._stop()

  def _compress(self, data) -> None:
    self._out.write(self._deflate.compress(data))
    self._crc = zlib.crc32(data, self._crc)

  def _run(self) -> None:
    while True:
      data = self._queue.get()
      if data is None:
        return
      if self._error is None and not self._aborted:  # after a failure, only drain: the caller never blocks
        try:
          self._compress(data)
        except BaseException as e:  # pylint: disable=broad-except  # raised in the caller's thread
          self._error = e

  def _stop(self) -> None:
    if self._thread is not None:
      self._queue.put(None)
      self._thread.join()
      self._thread = None

  def _raise_failure(self) -> None:
    if self._error is not None:
      raise self._error


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

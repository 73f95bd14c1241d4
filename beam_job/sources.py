"""Finding and opening input files on any Beam filesystem, with strict decompression.

Beam's ``CompressedFile`` treats a gzip stream that is cut off as a clean end of file, so records would
vanish silently; Python's ``gzip`` and ``zlib`` modules check that the stream really ended, so inputs are
opened raw through Beam's ``FileSystems`` and decompressed here.
"""

import contextlib
import gzip
import os
import zlib
from typing import BinaryIO, Iterator, List, Sequence

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_job import tfrecord
from beam_job.errors import JobError

COMPRESSIONS = ("auto", "uncompressed", "gzip", "zlib")
_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".zlib": "zlib", ".deflate": "zlib"}


def absolute(path: str) -> str:
  """Local paths made absolute (Beam cannot list the folder of a bare ``*.tfrecord``); URLs as they are."""
  return os.path.abspath(path) if FileSystems.get_scheme(path) is None else path


def split_patterns(value: str) -> List[str]:
  return [absolute(pattern.strip()) for pattern in value.split(",") if pattern.strip()]


def match_files(patterns: Sequence[str], flag: str) -> List[str]:
  """Every file the patterns match, sorted and without repeats; a pattern that matches nothing is an error."""
  if not patterns:
    raise JobError(f"{flag} names no file pattern")
  paths = set()
  for pattern in patterns:
    try:
      found = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # Beam raises BeamIOError with a dict of causes
      raise JobError(f"{flag} pattern {pattern!r} cannot be read: {e}") from None
    if not found:
      raise JobError(f"{flag} pattern {pattern!r} matches no file")
    paths.update(meta.path for meta in found)
  return sorted(paths)


def detect_compression(path: str, compression: str) -> str:
  if compression != "auto":
    return compression
  for suffix, kind in _SUFFIXES.items():
    if path.endswith(suffix):
      return kind
  return "uncompressed"


class _ZlibReader:
  """A read-only stream over zlib-compressed bytes that fails when the stream is cut off."""

  def __init__(self, raw: BinaryIO):
    self._raw = raw
    self._inflate = zlib.decompressobj()
    self._buffer = bytearray()

  def read(self, size: int) -> bytes:
    while len(self._buffer) < size and not self._inflate.eof:
      chunk = self._raw.read(1 << 20)
      if not chunk:
        raise EOFError("zlib stream ended before its end marker")
      self._buffer += self._inflate.decompress(chunk)
    out = bytes(self._buffer[:size])
    del self._buffer[:size]
    return out

  def close(self):
    self._raw.close()


class _Counting:
  """Counts the bytes read through it: the offset where the next frame starts."""

  def __init__(self, stream: BinaryIO):
    self._stream = stream
    self.count = 0

  def read(self, size: int) -> bytes:
    data = self._stream.read(size)
    self.count += len(data)
    return data


def open_input(path: str, compression: str, stack: contextlib.ExitStack) -> BinaryIO:
  """Opens ``path`` for reading, decompressed; ``stack`` closes every layer."""
  raw = stack.enter_context(FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED))
  kind = detect_compression(path, compression)
  if kind == "gzip":
    return stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
  if kind == "zlib":
    return stack.enter_context(contextlib.closing(_ZlibReader(raw)))
  return raw


def read_file(path: str, compression: str) -> Iterator[tfrecord.Record]:
  """The frames of one file; a decompression failure becomes a last corrupt record that loses the rest.

  I/O errors other than bad compressed data propagate, so that the runner retries the read.
  """
  kind = detect_compression(path, compression)
  index, offset = 0, 0
  try:
    with contextlib.ExitStack() as stack:
      stream = _Counting(open_input(path, compression, stack))
      if kind != "uncompressed" and FileSystems.match([path])[0].metadata_list[0].size_in_bytes == 0:
        raise EOFError("the file is empty, not even a stream header")
      for record in tfrecord.read_frames(stream):
        if record.index == 0 and record.rest_lost and kind == "uncompressed":
          record = record._replace(problem=record.problem + " (if the file is compressed, set --compression)")
        yield record
        index, offset = record.index + 1, stream.count  # the frame was read to its end
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    yield tfrecord.Record(index, offset, None, f"cannot decompress {kind} data: {e}", True)

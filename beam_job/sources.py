"""Finding and opening input files on any Beam filesystem, with strict decompression.

Beam's ``CompressedFile`` treats a gzip stream that is cut off as a clean end of file, so records would
vanish silently; Python's ``gzip``, ``zlib``, ``bz2`` and ``lzma`` modules tell whether the stream really
ended, so inputs are opened raw through Beam's ``FileSystems`` and decompressed here. ``--compression auto``
knows Beam's extensions; zstd is refused, since its stream reader cannot tell a cut file from a whole one.
"""

import bz2
import contextlib
import gzip
import lzma
import os
import re
import stat
import zlib
from typing import BinaryIO, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from apache_beam.io.filesystem import CompressionTypes, FileSystem
from apache_beam.io.filesystems import FileSystems

from beam_job import outputs, tfrecord
from beam_job.errors import JobError

COMPRESSIONS = ("auto", "uncompressed", "gzip", "zlib")
# Beam's extensions (``CompressionTypes.detect_compression_type``) and the usual ones of xz.
_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".zlib": "zlib", ".deflate": "zlib", ".bz2": "bzip2", ".lzma": "lzma",
             ".xz": "lzma", ".zst": "zstd", ".zstd": "zstd"}


def detected_suffixes() -> str:
  """What ``--compression auto`` does with each extension, for ``--help`` (made from ``_SUFFIXES``, so the two
  cannot drift apart): ``.gz, .gzip -> gzip; ...``."""
  kinds = {}
  for suffix, kind in _SUFFIXES.items():
    kinds.setdefault(kind, []).append(suffix)
  return "; ".join(", ".join(suffixes) + " -> " + (f"{kind} (refused)" if kind == "zstd" else kind)
                   for kind, suffixes in kinds.items())


def absolute(path: str) -> str:
  """Local paths made absolute (Beam cannot list the folder of a bare ``*.tfrecord``); URLs as they are."""
  return os.path.abspath(path) if FileSystems.get_scheme(path) is None else path


# A comma separates patterns unless a backslash escapes it: ``a\,b.tfrecord`` is one file named ``a,b.tfrecord``.
_SEPARATOR = re.compile(r"(?<!\\),")
COMMA_HINT = r"a comma separates patterns; write \, for a comma inside a file name"


def split_patterns(value: str) -> List[str]:
  r"""The patterns of a ``--left``/``--right`` value: split at commas, ``\,`` kept as a comma, local ones made
  absolute. Beam's globs have no escapes of their own, so ``\,`` means nothing else to them."""
  pieces = (piece.strip().replace("\\,", ",") for piece in _SEPARATOR.split(value))
  return [absolute(piece) for piece in pieces if piece]


def escape_commas(path: str) -> str:
  """``path`` as one pattern of a ``--left``/``--right`` value, whatever commas its name holds."""
  return path.replace(",", "\\,")


def match_files(patterns: Sequence[str], flag: str) -> List[str]:
  """Every file the patterns match, sorted and without repeats.

  A pattern that matches nothing is an error, and so is a local path it matches that cannot be read as a file
  (see ``_not_files``).
  """
  return sorted(match_sizes(patterns, flag))


def match_sizes(patterns: Sequence[str], flag: str) -> Dict[str, int]:
  """``match_files`` with each file's size in bytes, as the listing gave it (no extra request per file)."""
  if not patterns:
    raise JobError(f"{flag} names no file pattern")
  paths = {}
  for position, pattern in enumerate(patterns):
    bad = _not_files(pattern)
    if bad:
      path, problem = bad[0]
      more = f" (and {len(bad) - 1} more inputs that are not files)" if len(bad) > 1 else ""
      raise JobError(f"{flag}: {path} {problem}{more}")
    try:
      found = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # Beam raises BeamIOError with a dict of causes
      raise JobError(f"{flag} pattern {pattern!r} cannot be read: {e}") from None
    if not found:
      hint = f" ({COMMA_HINT})" if _matches_nothing(patterns[position + 1:position + 2]) else ""
      raise JobError(f"{flag} pattern {pattern!r} matches no file{hint}")
    paths.update((meta.path, meta.size_in_bytes) for meta in found)
  return paths


def _matches_nothing(patterns: Sequence[str]) -> bool:
  """Whether the pattern after one that matched nothing (if any) matches nothing either: then the two are
  likely one file name cut at a comma (``a,b.tfrecord``), and the error says how to write it."""
  try:
    return bool(patterns) and not FileSystems.match(list(patterns))[0].metadata_list
  except Exception:  # pylint: disable=broad-except  # only a hint: its own error comes when its turn comes
    return False


_SPECIAL = ((stat.S_ISFIFO, "is a named pipe (FIFO), not a regular file: the job reads each input more than "
             "once, so write the data to a file"),
            (stat.S_ISSOCK, "is a socket, not a regular file"),
            (stat.S_ISCHR, "is a character device, not a regular file"),
            (stat.S_ISBLK, "is a block device, not a regular file"))


def file_problem(path: str, directories: bool = True) -> Optional[str]:
  """Why the local ``path`` cannot be read as a file (following links), or None; a missing path is None."""
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    if not os.path.islink(path):
      return None
    return (f"is a symbolic link to {os.readlink(path)!r}, which does not exist (a git-annex or DVC file whose "
            "content is not here?)")
  except OSError as e:
    return f"cannot be read as a file: {e.strerror}"
  if stat.S_ISREG(mode):
    return None
  if stat.S_ISDIR(mode):
    if not directories:
      return None
    return f"is a directory, not a TFRecord file; to read the files in it, pass '{os.path.join(path, '*')}'"
  return next((problem for test, problem in _SPECIAL if test(mode)), "is not a regular file")


def _not_files(pattern: str) -> List[Tuple[str, str]]:
  """The local paths ``pattern`` matches that cannot be read as files, sorted, each with the reason.

  Beam's local match lists what ``os.walk`` calls files and drops what it cannot stat: a glob skips dangling
  links (a git-annex or DVC folder whose content was not fetched), directories and links to them without a
  word, while a literal directory is matched and fails later with a long traceback, and a FIFO is matched and
  then blocks the read forever. This walks the same tree the way Beam does (not into linked directories) and
  stats only links and entries that are not plain files, so it costs one ``scandir`` per folder. URLs are
  left to their filesystem: only local paths have these kinds of entries.
  """
  if FileSystems.get_scheme(pattern) is not None:
    return []
  if pattern.endswith(os.sep):
    pattern += "*"
  prefix = re.match(r"^[^[*?]*", pattern).group(0)
  if prefix == pattern:
    problem = file_problem(pattern)
    return [(pattern, problem)] if problem else []
  matches = re.compile(FileSystem.translate_pattern(pattern)).match
  # A pattern of only single "*" wildcards matches at one depth; "**", "?" and "[/]" can match "/" too.
  deepest = pattern.count(os.sep) if not re.search(r"\*\*|[?[]", pattern) else None
  recursive = "**" in pattern  # the files in a directory it matches are matched too
  bad, folders = [], [os.path.dirname(prefix)]
  while folders:
    folder = folders.pop()
    try:
      entries = list(os.scandir(folder))
    except OSError:  # os.walk, and so Beam, skip a folder they cannot list
      continue
    for entry in entries:
      if entry.is_file(follow_symlinks=False):
        continue
      is_dir = entry.is_dir(follow_symlinks=False)
      if is_dir and (deepest is None or entry.path.count(os.sep) < deepest):
        folders.append(entry.path)
      if matches(entry.path):
        problem = file_problem(entry.path, directories=not (is_dir and recursive))
        if problem:
          bad.append((entry.path, problem))
  return sorted(bad)


def detect_compression(path: str, compression: str) -> str:
  if compression != "auto":
    return compression
  for suffix, kind in _SUFFIXES.items():
    if path.endswith(suffix):
      return kind
  return "uncompressed"


def check_supported(path: str, compression: str) -> None:
  try:
    path.encode("utf-8")
  except UnicodeEncodeError:  # records name their source as UTF-8 text between stages, and so do the outputs
    raise JobError(f"input {os.fsencode(path).decode('utf-8', 'backslashreplace')}: its name is not valid UTF-8; "
                   "rename the file") from None
  if detect_compression(path, compression) == "zstd":
    raise JobError(f"{path}: zstd input is not supported (its stream reader cannot tell a cut-off file from a "
                   "complete one); decompress it, or recompress it with gzip")


class BadCompressedData(Exception):
  """The compressed stream is damaged or cut off."""


_DECOMPRESSORS = {"zlib": zlib.decompressobj, "bzip2": bz2.BZ2Decompressor, "lzma": lzma.LZMADecompressor}
_DECOMPRESS_ERRORS = (zlib.error, OSError, lzma.LZMAError, EOFError)


# Compressed bytes read at a time, and the most decompressed bytes one call may produce beyond what was asked:
# 1 MB of zlib data can hold 1 GB of zeros, so output is always asked for with a limit.
_RAW_CHUNK = 1 << 20
_OUT_CHUNK = 1 << 20


class _StrictReader:
  """A read-only stream over zlib, bzip2 or xz/lzma data that fails when the stream is damaged or cut off.

  bzip2 and xz files may hold several streams one after the other (pbzip2, xz -T): each is read in turn.
  Bytes after the end of a zlib stream are ignored, as TensorFlow's reader does. It holds at most one chunk
  of compressed input and what was asked for plus one chunk of output, whatever the data decompresses to.
  """

  def __init__(self, raw: BinaryIO, kind: str):
    self._raw = raw
    self._kind = kind
    self._decompressor = _DECOMPRESSORS[kind]()
    self._input = b""  # compressed bytes not yet given to the decompressor (zlib's unconsumed tail)
    self._buffer = bytearray()

  def _decompress(self, limit: int) -> bytes:
    """At most ``limit`` more decompressed bytes, at least one; b"" at the clean end of the data."""
    while True:
      decompressor = self._decompressor
      if decompressor.eof:
        rest = self._input or decompressor.unused_data or self._raw.read(_RAW_CHUNK)
        if self._kind == "zlib" or not rest:
          return b""
        self._decompressor, self._input = _DECOMPRESSORS[self._kind](), rest
        continue
      if not self._input and (self._kind == "zlib" or decompressor.needs_input):
        self._input = self._raw.read(_RAW_CHUNK)
        if not self._input:
          raise BadCompressedData(f"{self._kind} stream ended before its end marker")
      data, self._input = self._input, b""
      try:
        out = decompressor.decompress(data, limit)
      except _DECOMPRESS_ERRORS as e:
        raise BadCompressedData(str(e)) from None
      if self._kind == "zlib":
        self._input = decompressor.unconsumed_tail
      if out:
        return out

  def read(self, size: int) -> bytes:
    buffer = self._buffer
    while len(buffer) < size:
      out = self._decompress(max(size - len(buffer), _OUT_CHUNK))
      if not out:
        break
      if not buffer and len(out) >= size:  # most reads of a large piece: no copy through the buffer
        buffer += memoryview(out)[size:]
        return out[:size] if len(out) > size else out
      buffer += out
    if len(buffer) <= size:
      out = bytes(buffer)
      buffer.clear()
      return out
    out = bytes(memoryview(buffer)[:size])
    del buffer[:size]
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
  if kind in _DECOMPRESSORS:
    return stack.enter_context(contextlib.closing(_StrictReader(raw, kind)))
  check_supported(path, compression)
  return raw


def _size(path: str) -> int:
  """The size of one file, named literally (a ``[`` in its name is not a pattern)."""
  if FileSystems.get_scheme(path) is None:
    return os.path.getsize(path)
  return FileSystems.match([outputs.escape_glob(path)])[0].metadata_list[0].size_in_bytes


def read_file(path: str, compression: str) -> Iterator[tfrecord.Record]:
  """The frames of one file; a decompression failure becomes a last corrupt record that loses the rest.

  I/O errors other than bad compressed data propagate, so that the runner retries the read.
  """
  kind = detect_compression(path, compression)
  index, offset = 0, 0
  try:
    with contextlib.ExitStack() as stack:
      stream = _Counting(open_input(path, compression, stack))
      if kind != "uncompressed" and _size(path) == 0:
        raise EOFError("the file is empty, not even a stream header")
      size = (lambda: _size(path)) if kind == "uncompressed" else None  # asked only for a frame of over 1 MB
      for record in tfrecord.read_frames(stream, size):
        if record.index == 0 and record.rest_lost and kind == "uncompressed":
          record = record._replace(problem=record.problem + " (if the file is compressed, set --compression)")
        yield record
        index, offset = record.index + 1, stream.count  # the frame was read to its end
  except (EOFError, gzip.BadGzipFile, zlib.error, BadCompressedData) as e:
    yield tfrecord.Record(index, offset, None, f"cannot decompress {kind} data: {e}", True)


def describe_record(path: str, index: int, offset: int, problem: str, rest_lost: bool = False,
                    kind: str = "uncompressed") -> str:
  """``PATH: record I (byte N): PROBLEM``: what is wrong with one record, and where. The offset is the frame's
  (-1: unknown, left out); in a compressed file it counts the decompressed bytes, and says so."""
  where = f"{path}: record {index}"
  if offset >= 0:
    where += f" (byte {offset}" + (f" of the decompressed {kind} data)" if kind != "uncompressed" else ")")
  return f"{where}: {problem}" + ("; the rest of the file cannot be read" if rest_lost else "")


def corrupt_input(path: str, index: int, offset: int, problem: str, rest_lost: bool = False,
                  kind: str = "uncompressed") -> str:
  """The error for a corrupt record under ``--on_corrupt fail``: the job's and ``beam_job.verify``'s."""
  where = describe_record(path, index, offset, problem, rest_lost, kind)
  return f"corrupt input {where} (--on_corrupt skip leaves it out)"


class _Cursor(NamedTuple):
  path: str
  kind: str
  frames: Iterator[tfrecord.Record]
  record: Optional[tfrecord.Record]  # the last frame read, None before the first


class RecordFinder:
  """Finds again where a record sits in its file, for the message about a record that was read whole but is
  bad all the same (a payload that is not a ``tf.train.Example``).

  Readers pass records on as ``(path, index, payload)``, without their offsets, so that the offsets cost
  nothing on the way of the good ones; on this failure path the file is read again instead. A record counts as
  found only where the file's frame of that index holds the very same bytes, so a source that is not a file
  (a PCollection of your own) or a compression other than the one tried gives no offset rather than a wrong
  one: the compression the file's name implies is tried first, then the others ``--compression`` can name.
  Reading goes on from the last record found, so a file of many bad records is read once more, not once per
  record. ``close`` ends the read that is open.
  """

  def __init__(self):
    self._cursor: Optional[_Cursor] = None
    self._unknown = set()  # sources where a record was not found: the records do not come from that file

  def find(self, path: str, index: int, payload: bytes) -> Optional[Tuple[int, str]]:
    """``(offset, compression)`` of record ``index`` of ``path`` if that frame holds ``payload``, else None."""
    if path in self._unknown:
      return None
    kinds = [detect_compression(path, "auto"), *COMPRESSIONS[1:]]
    if self._cursor is not None and self._cursor.path == path:
      kinds.insert(0, self._cursor.kind)
    for kind in dict.fromkeys(kinds):
      record = self._advance(path, kind, index)
      if record is not None and record.index == index and record.payload == payload:
        return record.offset, kind
    self.close()
    self._unknown.add(path)
    return None

  def _advance(self, path: str, kind: str, index: int) -> Optional[tfrecord.Record]:
    """The frame ``index`` of ``path`` read as ``kind`` (or the last one before the file ends)."""
    cursor = self._cursor
    behind = cursor is not None and cursor.record is not None and cursor.record.index > index
    if cursor is None or (cursor.path, cursor.kind) != (path, kind) or behind:
      self.close()
      cursor = self._cursor = _Cursor(path, kind, read_file(path, kind), None)
    record = cursor.record
    try:
      while record is None or record.index < index:
        record = next(cursor.frames)
    except Exception:  # pylint: disable=broad-except  # its end, or not a file that can be read so
      self.close()
      return record
    self._cursor = cursor._replace(record=record)
    return record

  def close(self) -> None:
    if self._cursor is not None:
      self._cursor.frames.close()
      self._cursor = None

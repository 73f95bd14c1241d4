"""The TFRecord format: framing, masked CRC32C, and a strict reader that reports where a file is bad.

A TFRecord file is a sequence of frames::

    uint64 length (little-endian) | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

Beam's ``ReadFromTFRecord`` yields payloads only: it gives no record positions and stops the whole read at
the first bad frame, so this module reads frames itself and reports each problem with its record index and
byte offset. Nothing here knows about Beam.
"""

import io
import struct
from typing import BinaryIO, Callable, Iterator, NamedTuple, Optional

import google_crc32c

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
HEADER_BYTES = 12
FOOTER_BYTES = 4
# A frame is read in one call when it is at most this size, and in pieces of this size when it is larger, so
# that a forged length header costs no more memory than the bytes really in the stream plus one piece.
_READ_PIECE = 1 << 20


def masked_crc(data: bytes) -> int:
  """TFRecord's masked CRC32C of ``data``."""
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  """Frames one record: the reference for every faster writer in this project."""
  length = _U64.pack(len(data))
  return b"".join((length, _U32.pack(masked_crc(length)), data, _U32.pack(masked_crc(data))))


class Record(NamedTuple):
  """One frame of a file: its index in the file, its byte offset, and its payload (None when corrupt)."""
  index: int
  offset: int
  payload: Optional[bytes]
  problem: Optional[str] = None  # why the frame is corrupt
  rest_lost: bool = False  # the frame's length cannot be trusted: nothing after it can be read


def _read_up_to(stream: BinaryIO, size: int, present: bool = False) -> bytes:
  """``size`` bytes of ``stream``, fewer only where it ends, holding at most those bytes plus one piece.

  Up to one piece, or when the stream is known to hold ``size`` more bytes (``present``), it takes one
  ``read``; otherwise it writes piece by piece into a ``BytesIO``, whose ``getvalue`` hands over its buffer
  without a copy, so that what a frame claims is never allocated before it has been read.
  """
  data = stream.read(size if present else min(size, _READ_PIECE))
  if len(data) == size or not data:
    return data
  buffer = io.BytesIO()
  buffer.write(data)
  del data
  left = size - buffer.tell()
  while left > 0:
    piece = stream.read(min(left, _READ_PIECE))
    if not piece:
      break
    buffer.write(piece)
    left -= len(piece)
  return buffer.getvalue()


def read_frames(stream: BinaryIO, size: Optional[Callable[[], Optional[int]]] = None) -> Iterator[Record]:
  """Yields every frame of ``stream`` in order.

  A frame whose data CRC is wrong is yielded with ``problem`` set and reading goes on (its length was
  verified). A bad length CRC, a length past the end of the stream or a cut-off frame ends the stream with one
  record whose ``rest_lost`` is true: no later frame boundary can be trusted. ``size``, when given, tells
  the stream's length in bytes (or None); it is asked, once, only when a frame claims more than one piece, so
  that a length past the end of an uncompressed file is found without reading up to the end.
  """
  index = 0
  offset = 0
  known_size = None
  while True:
    header = _read_up_to(stream, HEADER_BYTES)
    if not header:
      return
    if len(header) < HEADER_BYTES:
      yield Record(index, offset, None, f"truncated header ({len(header)} of {HEADER_BYTES} bytes)", True)
      return
    length_bytes = header[:8]
    if _U32.unpack_from(header, 8)[0] != masked_crc(length_bytes):
      yield Record(index, offset, None, "bad length CRC", True)
      return
    length = _U64.unpack(length_bytes)[0]
    if size is not None and length + FOOTER_BYTES > _READ_PIECE:
      known_size, size = size(), None
    available = None if known_size is None else known_size - offset - HEADER_BYTES
    if available is None or available >= length + FOOTER_BYTES:
      if length + FOOTER_BYTES <= _READ_PIECE:
        body = _read_up_to(stream, length + FOOTER_BYTES)
        data, footer = body[:length], body[length:]
      else:  # apart, so that the data needs no copy
        data = _read_up_to(stream, length, present=available is not None)
        footer = _read_up_to(stream, FOOTER_BYTES) if len(data) == length else b""
      available = len(data) + len(footer)
    if available < length + FOOTER_BYTES:
      yield Record(index, offset, None,
                   f"record claims {length} bytes but the file ends after {max(0, available - FOOTER_BYTES)}",
                   True)
      return
    if _U32.unpack(footer)[0] != masked_crc(data):
      yield Record(index, offset, None, "bad data CRC")
    else:
      yield Record(index, offset, data)
    index += 1
    offset += HEADER_BYTES + length + FOOTER_BYTES

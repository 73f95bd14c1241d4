"""The TFRecord format: framing, masked CRC32C, and a strict reader that reports where a file is bad.

A TFRecord file is a sequence of frames::

    uint64 length (little-endian) | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

Beam's ``ReadFromTFRecord`` yields payloads only: it gives no record positions and stops the whole read at
the first bad frame, so this module reads frames itself and reports each problem with its record index and
byte offset. Nothing here knows about Beam.
"""

import struct
from typing import BinaryIO, Iterator, NamedTuple, Optional

import google_crc32c

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
HEADER_BYTES = 12
FOOTER_BYTES = 4
# Payloads are read in pieces of at most this size, so a forged length header costs no more memory than the
# bytes that are really in the file.
_READ_PIECE = 16 << 20


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


def _read_up_to(stream: BinaryIO, size: int) -> bytes:
  pieces = []
  while size > 0:
    piece = stream.read(min(size, _READ_PIECE))
    if not piece:
      break
    pieces.append(piece)
    size -= len(piece)
  return b"".join(pieces)


def read_frames(stream: BinaryIO) -> Iterator[Record]:
  """Yields every frame of ``stream`` in order.

  A frame whose data CRC is wrong is yielded with ``problem`` set and reading goes on (its length was
  verified). A bad length CRC, a length past the end of the stream or a cut-off frame ends the stream with one
  record whose ``rest_lost`` is true: no later frame boundary can be trusted.
  """
  index = 0
  offset = 0
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
    body = _read_up_to(stream, length + FOOTER_BYTES)
    if len(body) < length + FOOTER_BYTES:
      yield Record(index, offset, None,
                   f"record claims {length} bytes but the file ends after {max(0, len(body) - FOOTER_BYTES)}",
                   True)
      return
    data = body[:length]
    if _U32.unpack_from(body, length)[0] != masked_crc(data):
      yield Record(index, offset, None, "bad data CRC")
    else:
      yield Record(index, offset, data)
    index += 1
    offset += HEADER_BYTES + length + FOOTER_BYTES

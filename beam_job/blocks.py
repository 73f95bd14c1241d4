"""Records between stages in blocks: many ``(number, payload)`` as three byte strings. No Beam here.

A block is ``(numbers, lengths, packed)``: the numbers (a record's index in its source, or its ordinal) and the
payload lengths as native int64 arrays, and the payloads end to end, zlib-compressed (level 1). One element per
record cost the runner a Python object per record and per stage, and Beam's local runner holds what a stage
reads several times over while it hands it to the SDK (its buffer, the data channel's stream, a copy of that, and
a protobuf of it: about four times the stage's input, measured). Prepared payloads repeat their feature names in
every record: the benchmark's compress to 30%, at about 200 MB/s.
"""

import array
import zlib
from typing import Iterator, Optional, Tuple

Block = Tuple[bytes, bytes, bytes]

BLOCK_BYTES = 4 << 20  # payload bytes per block, before compression
LEVEL = 1


class Packer:
  """Collects ``(number, payload)`` into blocks of about ``BLOCK_BYTES``."""

  def __init__(self, block_bytes: int = BLOCK_BYTES):
    self._block_bytes = block_bytes
    self._numbers, self._lengths, self._payloads, self._size = array.array("q"), array.array("q"), [], 0

  def add(self, number: int, payload: bytes) -> Optional[Block]:
    """Adds a record; returns the block it completes, if it does."""
    self._numbers.append(number)
    self._lengths.append(len(payload))
    self._payloads.append(payload)
    self._size += len(payload)
    return self.flush() if self._size >= self._block_bytes else None

  def flush(self) -> Optional[Block]:
    """The records added since the last block, as a block (``None`` if there are none)."""
    if not self._payloads:
      return None
    block = (self._numbers.tobytes(), self._lengths.tobytes(), zlib.compress(b"".join(self._payloads), LEVEL))
    self._numbers, self._lengths, self._payloads, self._size = array.array("q"), array.array("q"), [], 0
    return block


def unpack(block: Block) -> Iterator[Tuple[int, bytes]]:
  """The ``(number, payload)`` of a block, in the order they were added."""
  numbers, lengths, packed = block
  data, end = zlib.decompress(packed), 0
  sizes = array.array("q", lengths)
  if len(sizes) != len(numbers) // 8 or sum(sizes) != len(data):
    raise ValueError(f"a block of {len(numbers) // 8} numbers, {len(sizes)} lengths summing to {sum(sizes)} and "
                     f"{len(data)} payload bytes: it was damaged between stages")
  for number, length in zip(array.array("q", numbers), sizes):
    yield number, data[end:end + length]
    end += length


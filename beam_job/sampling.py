"""``--sample_rate``: which pairs to keep, decided without looking at the pairs that are dropped.

Each pair (left ordinal i, right ordinal j) is kept independently with probability ``rate``. The right
ordinals are cut into fixed blocks of ``BLOCK`` (independent of the plan, so of chunk sizes and runners); in
each block a generator seeded by a hash of (seed, i, block) draws geometric gaps between kept columns. The
work is proportional to the kept pairs plus one hash per (row, block), not to N x M, and the same seed gives
the same pairs on any runner and worker count.
"""

import hashlib
import math
import struct
from typing import Iterator

BLOCK = 1 << 16
_MASK = (1 << 64) - 1
# The smallest rate: a gap is log(u) / log1p(-rate) with log(u) >= -37.5, so at 1e-12 a gap stays below 4e13
# columns; at 5e-324 it is infinite. The plan divides by the rate too.
MIN_RATE = 1e-12
# The seed is hashed as a signed 64-bit integer.
MIN_SEED, MAX_SEED = -(1 << 63), (1 << 63) - 1


def _seed(seed: int, row: int, block: int) -> int:
  digest = hashlib.blake2b(struct.pack("<qqq", seed, row, block), digest_size=8).digest()
  return int.from_bytes(digest, "little")


def _uniforms(state: int) -> Iterator[float]:
  """splitmix64: a small generator whose output depends only on its seed. A new generator is seeded for
  every (row, block); seeding Python's Mersenne Twister costs about 10 us, which a million rows would feel."""
  while True:
    state = (state + 0x9E3779B97F4A7C15) & _MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    yield ((z >> 11) + 0.5) / (1 << 53)  # in (0, 1)


def kept_columns(seed: int, rate: float, row: int, begin: int, end: int) -> Iterator[int]:
  """The right ordinals in [begin, end) kept for left ordinal ``row``, in increasing order."""
  if rate >= 1.0:
    yield from range(begin, end)
    return
  if rate <= 0.0 or begin >= end:
    return
  log_miss = math.log1p(-rate)
  for block in range(begin // BLOCK, (end - 1) // BLOCK + 1):
    column = block * BLOCK - 1
    block_end = min(end, (block + 1) * BLOCK)
    for u in _uniforms(_seed(seed, row, block)):
      column += 1 + int(math.log(u) / log_miss)  # geometric gap: failures before the next kept column
      if column >= block_end:
        break
      if column >= begin:
        yield column

"""``--sample_rate`` and ``--pairs_per_left``: which pairs to keep, decided without looking at the pairs that are
dropped.

Each pair (left ordinal i, right ordinal j) is kept independently with probability ``rate``. The right
ordinals are cut into fixed blocks of ``BLOCK`` (independent of the plan, so of chunk sizes and runners); in
each block a generator seeded by a hash of (seed, i, block) draws geometric gaps between kept columns. The
work is proportional to the kept pairs plus one hash per (row, block), not to N x M, and the same seed gives
the same pairs on any runner and worker count.

``--pairs_per_left K`` keeps exactly ``min(K, eligible)`` of a left record's ``eligible`` candidates (its right
records, within its group, after it in a self-join), uniformly without replacement: Floyd's algorithm draws
them from a generator seeded by a hash of (seed, left ordinal) alone, in O(K) steps whatever the number of
candidates, so any cell that holds some of the candidates finds the same draw.
"""

import bisect
import hashlib
import math
import struct
from typing import Iterator, List

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


def _pick_state(seed: int, row: int) -> int:
  digest = hashlib.blake2b(struct.pack("<qq", seed, row), digest_size=8, person=b"pairs_per_left").digest()
  return int.from_bytes(digest, "little")  # a hash of its own: no stream is shared with --sample_rate's


def _words(state: int) -> Iterator[int]:
  """splitmix64's 64-bit outputs (``_uniforms`` makes floats of the same)."""
  while True:
    state = (state + 0x9E3779B97F4A7C15) & _MASK
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    yield z ^ (z >> 31)


def _below(words: Iterator[int], bound: int) -> int:
  """A uniform integer in [0, bound), bound <= 2 ** 64: words at or above the last whole multiple of ``bound``
  are drawn again, so no value is favoured (a plain modulo would favour the small ones)."""
  limit = (1 << 64) - (1 << 64) % bound
  for word in words:
    if word < limit:
      return word % bound
  raise AssertionError("unreachable: the generator is endless")


def pick(seed: int, row: int, k: int, eligible: int) -> List[int]:
  """``min(k, eligible)`` distinct positions of ``[0, eligible)``, in increasing order, uniform among all such
  sets, for left ordinal ``row``. Floyd's algorithm: for j in eligible - k .. eligible - 1 draw t in [0, j] and
  keep t, or j when t is kept already; every k-subset comes out with the same probability, after k draws and
  at most k set lookups, however large ``eligible`` is."""
  if k >= eligible:
    return list(range(max(0, eligible)))
  if k <= 0:
    return []
  words = _words(_pick_state(seed, row))
  chosen = set()
  for j in range(eligible - k, eligible):
    t = _below(words, j + 1)
    chosen.add(j if t in chosen else t)
  return sorted(chosen)


def pick_in(seed: int, row: int, k: int, eligible: int, begin: int, end: int) -> List[int]:
  """The positions of ``pick(seed, row, k, eligible)`` in ``[begin, end)``: what a cell holding those candidates
  writes for this row. O(k) (the whole draw, then two bisections), or the range itself when every candidate is
  kept."""
  begin, end = max(0, begin), min(end, eligible)
  if end <= begin:
    return []
  if k >= eligible:
    return list(range(begin, end))
  chosen = pick(seed, row, k, eligible)
  return chosen[bisect.bisect_left(chosen, begin):bisect.bisect_left(chosen, end)]

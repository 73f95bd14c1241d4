"""The pairs of one cell, in a fixed order, as TFRecord frames. No Beam here.

A cell holds a chunk of left records and a chunk of right records, each as ``(ordinal, Prepared)`` sorted by
ordinal. Its pairs are written row-major (left ordinal, then right ordinal), so a cell's bytes depend only on
its records and the options.
"""

import bisect
from typing import BinaryIO, Iterator, List, Optional, Sequence, Tuple

from beam_job import examples, sampling, tfrecord

try:  # built by setup.py; without it every cell takes the reference path
  from beam_job import _fastframes
except ImportError:  # pragma: no cover - exercised only where the compiler was missing
  _fastframes = None

Side = Sequence[Tuple[int, examples.Prepared]]

# How far right ordinals must lie past the left one, per self-join mode (product keeps everything).
_MIN_STEP = {"combinations": 1, "combinations_with_replacement": 0}


def _columns(ordinal: int, right_ordinals: List[int], step: Optional[int], sample) -> Iterator[int]:
  """Positions in the right chunk paired with left ``ordinal``: a suffix, or the sampled ones."""
  start = 0 if step is None else bisect.bisect_left(right_ordinals, ordinal + step)
  if sample is None or not right_ordinals:
    yield from range(start, len(right_ordinals))
    return
  rate, seed = sample
  first = right_ordinals[start] if start < len(right_ordinals) else right_ordinals[-1] + 1
  for column in sampling.kept_columns(seed, rate, ordinal, first, right_ordinals[-1] + 1):
    j = bisect.bisect_left(right_ordinals, column)
    if right_ordinals[j] == column:  # ordinals of a chunk are contiguous, unless a caller's are not
      yield j


def pair_examples(left: Side, right: Side, self_join: Optional[str] = None, collision: str = "error",
                  collisions: Sequence[str] = (), sample: Optional[Tuple[float, int]] = None) -> Iterator[bytes]:
  """Yields the serialized merged Example of every kept pair of the cell, row-major.

  With ``collision`` ``left`` (or ``right``) the other side's entries are dropped only where the winning
  record has a feature of that name, so no output record ever holds a name twice. ``sample`` is
  ``(rate, seed)`` of ``--sample_rate``: only the pairs ``sampling.kept_columns`` names are produced.
  """
  step = _MIN_STEP.get(self_join)
  right_ordinals = [ordinal for ordinal, _ in right]
  collide = frozenset(collisions)
  losers = {}  # (right position or left position, names dropped) -> payload without those entries

  def trimmed(side, position, record, names):
    if not names:
      return record.payload
    key = (side, position, names)
    if key not in losers:
      losers[key] = examples.without(record, names)
    return losers[key]

  for i, (ordinal, left_record) in enumerate(left):
    left_names = collide.intersection(left_record.keys) if collision == "left" else frozenset()
    for j in _columns(ordinal, right_ordinals, step, sample):
      right_record = right[j][1]
      if collision == "right":
        left_payload = trimmed(0, i, left_record, collide.intersection(right_record.keys))
      else:
        left_payload = left_record.payload
      yield examples.example_bytes(left_payload, trimmed(1, j, right_record, left_names))


def write_reference(left: Side, right: Side, out: BinaryIO, **merge) -> Tuple[int, int]:
  """Writes the cell's frames one pair at a time; returns (pairs, bytes). The reference every faster
  writer must equal byte for byte."""
  pairs = written = 0
  buffer: List[bytes] = []
  buffered = 0
  for example in pair_examples(left, right, **merge):
    framed = tfrecord.frame(example)
    buffer.append(framed)
    buffered += len(framed)
    pairs += 1
    if buffered >= 1 << 22:
      out.write(b"".join(buffer))
      written += buffered
      buffer, buffered = [], 0
  out.write(b"".join(buffer))
  return pairs, written + buffered


_BLOCK_BYTES = 8 << 20  # frames built per native call: large enough to amortize the call, small for memory


def write_cell(left: Side, right: Side, out: BinaryIO, self_join: Optional[str] = None, collision: str = "error",
               collisions: Sequence[str] = (), sample: Optional[Tuple[float, int]] = None) -> Tuple[int, int]:
  """Writes the cell's frames, byte-identical to ``write_reference``; returns (pairs, bytes).

  The native ``frame_block`` builds the frames of many rows per call. Rows go in blocks that share one list
  of right payloads: all rows, or with ``collision='left'`` consecutive rows whose winning names are equal.
  ``collision='right'`` changes the left payload per column, and sampling keeps few scattered pairs: both take
  the reference path.
  """
  collide = frozenset(collisions)
  if _fastframes is None or (collision == "right" and collide) or sample is not None:
    return write_reference(left, right, out, self_join=self_join, collision=collision, collisions=collisions,
                           sample=sample)
  step = _MIN_STEP.get(self_join)
  right_ordinals = [ordinal for ordinal, _ in right]
  rights = {frozenset(): [record.payload for _, record in right]}
  pair_bytes = 24 + (sum(len(r.payload) for _, r in right) / max(1, len(right)))
  pairs = written = 0
  block, starts, block_pairs, block_names = [], [], 0, frozenset()

  def flush():
    nonlocal written
    if block:
      data = _fastframes.frame_block(block, rights[block_names], starts)
      out.write(data)
      written += len(data)

  for ordinal, record in left:
    names = collide.intersection(record.keys) if collision == "left" else frozenset()
    if names not in rights:
      rights[names] = [examples.without(r, names) for _, r in right]
    start = 0 if step is None else bisect.bisect_left(right_ordinals, ordinal + step)
    row_pairs = len(right) - start
    if names != block_names or (block_pairs + row_pairs) * (pair_bytes + len(record.payload)) > _BLOCK_BYTES:
      flush()
      block, starts, block_pairs, block_names = [], [], 0, names
    block.append(record.payload)
    starts.append(start)
    block_pairs += row_pairs
    pairs += row_pairs
  flush()
  return pairs, written

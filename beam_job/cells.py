"""The pairs of one cell, in a fixed order, as TFRecord frames. No Beam here.

A cell holds a chunk of left records and a chunk of right records, each as ``(ordinal, Prepared)`` sorted by
ordinal. Its pairs are written row-major (left ordinal, then right ordinal), so a cell's bytes depend only on
its records and the options.
"""

import array
import bisect
import itertools
from typing import BinaryIO, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from beam_job import examples, planning, sampling, tfrecord

try:  # built by setup.py; without it every cell takes the reference path
  from beam_job import _fastframes
except ImportError:  # pragma: no cover - exercised only where the compiler was missing
  _fastframes = None

Side = Sequence[Tuple[int, examples.Prepared]]


class Run:
  """Right records ``first``, ``first + 1``, ... given by their payloads alone: the broadcast side's columns of a
  cell, sliced from the per-process copy without a ``(ordinal, Prepared)`` wrapper per record (those cost more
  than the payloads). Their names are not kept, so only a merge that needs none takes a run (``write_cell``
  turns it into records for the other paths); it is deliberately not iterable, so it cannot pass for a
  ``Side``."""

  __slots__ = ("first", "payloads")

  def __init__(self, first: int, payloads: List[bytes]):
    self.first, self.payloads = first, payloads

  def __len__(self) -> int:
    return len(self.payloads)

  @property
  def ordinals(self) -> range:
    return range(self.first, self.first + len(self.payloads))

  def records(self) -> List[Tuple[int, examples.Prepared]]:
    return [(self.first + j, examples.Prepared((), (), payload)) for j, payload in enumerate(self.payloads)]


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
                  collisions: Sequence[str] = (), sample: Optional[Tuple[float, int]] = None,
                  columns: Optional[Callable[[int], Iterable[int]]] = None) -> Iterator[bytes]:
  """Yields the serialized merged Example of every kept pair of the cell, row-major.

  With ``collision`` ``left`` (or ``right``) the other side's entries are dropped only where the winning
  record has a feature of that name, so no output record ever holds a name twice. ``sample`` is
  ``(rate, seed)`` of ``--sample_rate``: only the pairs ``sampling.kept_columns`` names are produced.
  ``columns``, when given, decides instead: the positions in ``right`` paired with ``left[i]``, increasing
  (the grouped writer's ``--pairs_per_left`` and ``--sample_rate`` within groups).
  """
  step = planning.MIN_STEP.get(self_join)
  right_ordinals = [ordinal for ordinal, _ in right]
  collide = frozenset(collisions)
  # Trimmed payloads of the losing side, kept while they can be reused: the current left record's, per set
  # of names dropped (collision='right'), or the right records' for the current left names ('left').
  losers, losers_for = {}, None

  def trimmed(key, record, names):
    if not names:
      return record.payload
    if key not in losers:
      losers[key] = examples.without(record, names)
    return losers[key]

  for i, (ordinal, left_record) in enumerate(left):
    left_names = collide.intersection(left_record.keys) if collision == "left" else frozenset()
    if collision == "right" or left_names != losers_for:
      losers.clear()
      losers_for = left_names
    for j in (_columns(ordinal, right_ordinals, step, sample) if columns is None else columns(i)):
      right_record = right[j][1]
      if collision == "right":
        names = collide.intersection(right_record.keys)
        left_payload = trimmed(names, left_record, names)
      else:
        left_payload = left_record.payload
      yield examples.example_bytes(left_payload, trimmed(j, right_record, left_names))


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


BLOCK_BYTES = 8 << 20  # frames built per native call: large enough to amortize the call, small for memory
# A pair's frame beyond its two payloads: the frame's 16 bytes and the Example's tag and length (at most 6 bytes
# for records under 32 GB); an upper bound, so blocks measured with it are never larger than BLOCK_BYTES.
FRAME_OVERHEAD = 22


def _column_ends(payloads: Sequence[bytes]) -> array.array:
  """``ends[j]``: the bytes the frames of columns 0..j-1 take beyond their left payloads (an upper bound): a
  row's columns ``a..b-1`` take ``ends[b] - ends[a] + (b - a) * len(left payload)``, however uneven the sizes."""
  return array.array("q", itertools.accumulate((len(p) + FRAME_OVERHEAD for p in payloads), initial=0))


def _column_stop(ends: array.array, first: int, left_bytes: int) -> int:
  """The end of the column range from ``first`` that fills a block: as many columns as fit in ``BLOCK_BYTES``
  (at least one, so a single pair larger than a block is built alone)."""
  low, high = first + 1, len(ends) - 1  # the frames of first..stop-1 fit for stop <= low
  limit = ends[first] + first * left_bytes + BLOCK_BYTES
  while low < high:
    middle = (low + high + 1) // 2
    low, high = (middle, high) if ends[middle] + middle * left_bytes <= limit else (low, middle - 1)
  return low


def write_cell(left: Side, right: Union[Side, Run], out: BinaryIO, self_join: Optional[str] = None,
               collision: str = "error", collisions: Sequence[str] = (),
               sample: Optional[Tuple[float, int]] = None) -> Tuple[int, int]:
  """Writes the cell's frames, byte-identical to ``write_reference``; returns (pairs, bytes).

  The native ``frame_block`` builds the frames of many rows per call, at most ``BLOCK_BYTES`` at a time
  (counted from each payload's own size, so uneven records cannot make a call larger): rows go in blocks that
  share one list of right payloads (all rows, or with ``collision='left'`` consecutive rows whose winning names
  are equal, with one trimmed copy of the right payloads at a time), and a row longer than a block is cut into
  column ranges. ``collision='right'`` changes the left payload per column, and sampling keeps few scattered
  pairs: both take the reference path.
  """
  collide = frozenset(collisions)
  if _fastframes is None or (collision == "right" and collide) or sample is not None:
    return write_reference(left, right.records() if isinstance(right, Run) else right, out, self_join=self_join,
                           collision=collision, collisions=collisions, sample=sample)
  step = planning.MIN_STEP.get(self_join)
  if isinstance(right, Run):
    right_ordinals, payloads = right.ordinals, right.payloads
  else:
    right_ordinals, payloads = [ordinal for ordinal, _ in right], [record.payload for _, record in right]
  ends = _column_ends(payloads)  # trimmed payloads (collision='left') are shorter: still an upper bound
  count = len(payloads)
  pairs = written = 0
  block, starts, block_bytes, names_now, rights = [], [], 0, frozenset(), payloads

  def emit(lefts, columns, firsts):
    nonlocal written
    data = _fastframes.frame_block(lefts, columns, firsts)
    out.write(data)
    written += len(data)

  for ordinal, record in left:
    names = collide.intersection(record.keys) if collision == "left" else frozenset()
    start = 0 if step is None else bisect.bisect_left(right_ordinals, ordinal + step)
    left_bytes = len(record.payload)
    row_bytes = ends[count] - ends[start] + (count - start) * left_bytes
    if names != names_now or block_bytes + row_bytes > BLOCK_BYTES:
      if block:
        emit(block, rights, starts)
      block, starts, block_bytes = [], [], 0
      if names != names_now:
        names_now = names
        rights = [examples.without(r, names) for _, r in right] if names else payloads
    pairs += count - start
    if row_bytes > BLOCK_BYTES:  # one row is more than a block: its columns in ranges
      first = start
      while first < count:
        stop = _column_stop(ends, first, left_bytes)
        emit([record.payload], rights[first:stop], [0])
        first = stop
      continue
    block.append(record.payload)
    starts.append(start)
    block_bytes += row_bytes
  if block:
    emit(block, rights, starts)
  return pairs, written

"""The plan of a job: record ordinals, chunks, cells, shard names, and the checks made before any write.

Everything here is a plain function of what the reading stage learned about each side (``SideStats``) and
of the options, so the same inputs give the same plan, hence the same shards, on any runner.
"""

import bisect
import collections.abc
import dataclasses
import functools
import math
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Tuple

from beam_job import sampling
from beam_job.errors import JobError

# ``--strategy auto`` broadcasts the right side when its encoded records take at most this many bytes: every
# worker process then holds one copy, which is cheap up to tens of MB and avoids shuffling the right side.
BROADCAST_MAX_BYTES = 64 << 20
# The memory bound of that copy (``held_bytes``: payloads, RECORD_MEMORY_BYTES per record and, when the merge
# needs them, the records' names): a forced broadcast beyond it is refused.
BROADCAST_LIMIT_BYTES = 1 << 30
# The cell budget: a cell holds at most CELL_RECORDS records of each side and, both sides together, at most
# min(--target_shard_mb, CELL_INPUT_MAX_BYTES) of encoded records (by each side's average record size, a name
# held with its record counting NAME_MEMORY_BYTES more; then cut for uneven sizes, SIZE_BLOCK below). Without
# sampling a cell's records never take more bytes than its pairs, so the shard target alone keeps within it;
# sampling, broadcast and very uneven sides meet the caps. A cell holds at least one record of each side.
CELL_RECORDS = 1 << 18
CELL_INPUT_MAX_BYTES = 256 << 20
# Python's memory per record a cell holds besides its payload: the element as the runner delivers it,
# ``(ordinal, payload)``, and as the writer holds it, ``(ordinal, Prepared)``, with list slots (229 to 266 bytes
# in CPython 3.11); asserted against what a cell really holds in tests/test_planning.py.
RECORD_MEMORY_BYTES = 288
# More when the merge needs each record's names (``--collision left|right`` with colliding names), read back by
# ``examples.from_payload``: a tuple of shared names and an array of entry ends per record (about 130 bytes) and
# about 17 bytes per name.
NAMED_RECORD_BYTES = 160
NAME_MEMORY_BYTES = 24
# A sampled job has few pairs per cell: a cell still holds at most 1 / SAMPLED_SPLITS of each side (broadcast:
# 1 / SAMPLED_SPLITS ** 2 of the left side), so that the work spreads over workers.
SAMPLED_SPLITS = 4
# Bytes moved per kept pair by a sampled grid routed by its kept pairs (``sparse``): the request for a right
# record, its right ordinal and shard, with the runner's framing; also per cell, for its marker.
REQUEST_BYTES = 16
# Routing by kept pairs adds a shuffle (the join on right ordinals), an element per kept pair and a second
# working out of the sampling: it is chosen only when it moves at most this share of whole-row routing's bytes.
SPARSE_MAX_SHARE = 0.5
# Payload bytes are tallied per block of SIZE_BLOCK indexes of a source (``SideStats.sizes``), so that the plan
# can bound what a chunk holds when a side's large records sit together (``chunk_bytes``): chunks are cut by
# record count, at the side's average size, and a stretch of records far above the average would put several
# times the budget in its cells. A side's chunks are cut smaller while that bound passes UNEVEN_SLACK times its
# share of the budget plus its largest record (no chunk holds less than one record).
SIZE_BLOCK = 1024
UNEVEN_SLACK = 1.5
# The writer's blocks of frames (cells.BLOCK_BYTES), for the estimates.
WRITE_BLOCK_BYTES = 8 << 20
# Frame (16 bytes) plus the Example header (at most 6 bytes for records under 4 GB).
PAIR_OVERHEAD_BYTES = 20
SELF_JOINS = ("product", "combinations", "combinations_with_replacement")
# Bounds of --max_pairs and --target_shard_mb: counts stay int64 for whoever reads the summary, and a shard of
# at most 1 TB keeps the byte target, and what is computed from it, finite.
MAX_PAIRS = (1 << 63) - 1
MAX_TARGET_SHARD_MB = 1e6
SIDES = ("left", "right")
# How far past the left ordinal a kept right ordinal must lie, per self-join mode (product keeps every pair).
MIN_STEP = {"combinations": 1, "combinations_with_replacement": 0}


@dataclasses.dataclass(frozen=True)
class SideStats:
  """What the plan needs to know about one side, gathered while reading it."""
  good: Dict[str, int]  # source -> number of good records
  bad: Dict[str, Tuple[int, ...]]  # source -> sorted indexes of records left out as corrupt
  payload_bytes: int  # encoded feature entries of all good records
  keys: FrozenSet[str]  # every feature name seen (after renaming)
  features: Dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> output_schema.Values
  groups: Dict[bytes, int] = dataclasses.field(default_factory=dict)  # --group_by: encoded key -> good records
  # payload bytes of the good records per source and block of SIZE_BLOCK indexes, and of the largest record
  sizes: Dict[str, Dict[int, int]] = dataclasses.field(default_factory=dict)
  largest: int = 0

  @property
  def count(self) -> int:
    return sum(self.good.values())


def tally_size(sizes: Dict[str, Dict[int, int]], source: str, index: int, size: int) -> None:
  """Adds a good record's payload bytes to ``SideStats.sizes`` (as the record is read)."""
  blocks = sizes.setdefault(source, {})
  blocks[index // SIZE_BLOCK] = blocks.get(index // SIZE_BLOCK, 0) + size


def merge_sizes(into: Dict[str, Dict[int, int]], other: Dict[str, Dict[int, int]]) -> None:
  for source, blocks in other.items():
    mine = into.setdefault(source, {})
    for block, size in blocks.items():
      mine[block] = mine.get(block, 0) + size


def size_profile(stats: SideStats) -> List[Tuple[int, int, int]]:
  """``(first ordinal, end ordinal, payload bytes)`` of each block of a side's good records, in ordinal order."""
  offsets, profile = _offsets(stats.good), []
  for source in sorted(stats.sizes):
    bad, base, good = stats.bad.get(source, ()), offsets.get(source, 0), stats.good.get(source, 0)
    for block, size in sorted(stats.sizes[source].items()):
      start, stop = block * SIZE_BLOCK, (block + 1) * SIZE_BLOCK
      first = base + start - bisect.bisect_left(bad, start)
      end = min(base + good, base + stop - bisect.bisect_left(bad, stop))
      profile.append((first, end, size))
  return profile


def chunk_bytes(profile: List[Tuple[int, int, int]], largest: int, chunk: int) -> int:
  """At most the payload bytes of any ``chunk`` consecutive records of a side (0 without a profile): a chunk that
  starts in a block touches it and the blocks that start before the chunk can end, and holds no more than
  ``chunk`` times the largest record."""
  best = window = 0
  touched = 0  # blocks [i, touched) are in the window of block i
  for _, end, size in profile:
    while touched < len(profile) and profile[touched][0] < end - 1 + chunk:
      window += profile[touched][2]
      touched += 1
    best = max(best, window)
    window -= size
  return min(best, chunk * largest)


class IndexRuns:
  """The record indexes of one source, exactly, as sorted disjoint ``[start, end)`` runs plus the first index
  seen twice. Indexes that arrive as 0, 1, 2, ... stay one run, so the stats stay small; any repeat or gap is
  found (a count, maximum and sum would take ``[0, 0, 3, 3]`` for ``[0, 1, 2, 3]``)."""

  __slots__ = ("runs", "repeat")

  def __init__(self, runs=None, repeat=None):
    self.runs = runs or []
    self.repeat = repeat

  def __reduce__(self):
    return IndexRuns, (self.runs, self.repeat)

  def add(self, index: int) -> None:
    if self.runs and self.runs[-1][1] == index:
      self.runs[-1][1] += 1
      return
    self.runs.append([index, index + 1])
    if len(self.runs) > 1024:  # indexes out of order: keep the list short
      self.normalize()

  def merge(self, other: "IndexRuns") -> None:
    self.runs.extend([start, end] for start, end in other.runs)
    self.repeat = self.repeat if self.repeat is not None else other.repeat
    self.normalize()

  def normalize(self) -> None:
    merged = []
    for start, end in sorted(self.runs):
      if merged and start < merged[-1][1]:
        self.repeat = start if self.repeat is None else self.repeat
        merged[-1][1] = max(merged[-1][1], end)
      elif merged and start == merged[-1][1]:
        merged[-1][1] = end
      else:
        merged.append([start, end])
    self.runs = merged

  def problem(self) -> Optional[str]:
    """Why these are not exactly 0, 1, 2, ..., n - 1 (None when they are)."""
    self.normalize()
    if self.repeat is not None:
      return f"index {self.repeat} appears more than once"
    if self.runs and self.runs[0][0] != 0:
      return f"indexes 0..{self.runs[0][0] - 1} are missing"
    if len(self.runs) > 1:
      return f"indexes {self.runs[0][1]}..{self.runs[1][0] - 1} are missing"
    return None


def cell_pairs(rows: Tuple[int, int], cols: Tuple[int, int], self_join: Optional[str]) -> int:
  """Number of pairs (l, r), l in ``rows`` and r in ``cols`` (half-open ordinal ranges), that are kept.

  ``combinations`` keeps r > l, ``combinations_with_replacement`` keeps r >= l, anything else every pair.
  """
  (a, b), (c, d) = rows, cols
  if b <= a or d <= c:
    return 0
  if self_join not in MIN_STEP:
    return (b - a) * (d - c)
  k = MIN_STEP[self_join]  # keep r >= l + k
  full_end = min(b, max(a, c - k + 1))  # rows whose every column is kept
  total = (full_end - a) * (d - c)
  p, q = max(a, c - k + 1), min(b, d - k)  # rows that keep columns l + k .. d - 1
  if q > p:
    total += (q - p) * (d - k) - (p + q - 1) * (q - p) // 2
  return total


def total_pairs(left: int, right: int, self_join: Optional[str]) -> int:
  if self_join == "combinations":
    return left * (left - 1) // 2
  if self_join == "combinations_with_replacement":
    return left * (left + 1) // 2
  return left * right


@dataclasses.dataclass(frozen=True)
class Plan:
  """Where every pair goes. A cell is (row chunk, column chunk); each non-empty cell is one shard.

  The plan is a few numbers (the grid) plus each source's offset and corrupt indexes: the cells are computed
  from the grid on demand (``cells``, ``row_shards``, ``column_shards``), so its size, the time to
  deserialize it and the memory and time to find a cell do not grow with the number of cells.
  """
  strategy: str
  self_join: Optional[str]
  left_count: int
  right_count: int
  row_chunk: int
  col_chunk: int
  offsets: Tuple[Dict[str, int], Dict[str, int]]  # per side: source -> ordinal of its first good record
  bad: Tuple[Dict[str, Tuple[int, ...]], Dict[str, Tuple[int, ...]]]
  collisions: Tuple[str, ...]  # names on both sides (under --collision prefix: before renaming)
  pairs: int  # expected when sampling
  estimated_bytes: int
  sample_rate: float = 1.0
  side_bytes: Tuple[int, int] = (0, 0)  # encoded records of each side
  collision: str = "error"
  run: Optional[str] = None  # the token of the run that writes this plan (None in a dry run)
  problems: Tuple[str, ...] = ()  # why the job would fail (a dry run plans on; a real run raises instead)
  # --group_by / --pairs_per_left: the cells are this ``grouping.GroupedPlan``'s; the fields above still give the
  # ordinals, counts and collisions (the grid fields are unused)
  grouped: Optional[Any] = None
  # A sampled grid routed by its kept pairs (``sparse_cells``): each record goes only to the cells where it
  # keeps a pair, chosen when that moves at most SPARSE_MAX_SHARE of the bytes of sending it to its whole row
  # or column.
  sparse: bool = False
  # Feature entries (names) of each side's records, all together (with --index_features' one name a record):
  # held with the records when the merge needs their names (``named``).
  side_names: Tuple[int, int] = (0, 0)

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "cells"}  # the cache stays behind

  @property
  def shuffle_bytes(self) -> int:
    """Record bytes moved between stages to build the cells (never the pairs themselves): each left record
    goes to every cell of its row, and each right record to every cell of its column, or, broadcast, to every
    worker process once as a side input (counted once); routed by kept pairs, see ``sparse_shuffle_bytes``."""
    if self.grouped is not None:
      return self.grouped.shuffle_bytes()
    if self.strategy == "broadcast":
      return self.side_bytes[0] * self.cols + self.side_bytes[1]
    if self.sparse:
      return self.sparse_shuffle_bytes
    return self.side_bytes[0] * self.cols + self.side_bytes[1] * self.rows

  @property
  def sparse_shuffle_bytes(self) -> int:
    """The shuffle of a sampled grid routed by its kept pairs (expected): a left record goes to each cell of
    its row where it keeps a pair (of ``col_chunk`` columns, each kept at the rate), a right record once to the
    join on its ordinal and from there to each cell that asks for it, and every kept pair asks once; each cell
    gets one marker."""
    def keeps(chunk: int) -> float:  # the chance that a record keeps a pair among ``chunk`` others
      return -math.expm1(chunk * math.log1p(-min(self.sample_rate, 1 - 1e-16)))
    left = self.side_bytes[0] * self.cols * keeps(min(self.col_chunk, self.right_count))
    right = self.side_bytes[1] * (1 + self.rows * keeps(min(self.row_chunk, self.left_count)))
    return int(left + right + (self.pairs + len(self.cells)) * REQUEST_BYTES)

  @property
  def averages(self) -> Tuple[float, float]:
    """Average encoded bytes of a left and of a right record."""
    return self.side_bytes[0] / max(self.left_count, 1), self.side_bytes[1] / max(self.right_count, 1)

  @property
  def cell_input_bytes(self) -> int:
    """Encoded records a cell holds (at most one row chunk and one column chunk, by average sizes)."""
    rows, cols = min(self.row_chunk, self.left_count), min(self.col_chunk, self.right_count)
    return int(rows * self.averages[0] + cols * self.averages[1])

  @property
  def named(self) -> bool:
    """Whether cells hold their records' names: the merge needs them only to drop a colliding name."""
    return self.collision in ("left", "right") and bool(self.collisions)

  def _held(self, side: int, records: int) -> int:
    """Memory of ``records`` of a side as a worker holds them (``held_bytes``, by average sizes)."""
    counts = (self.left_count, self.right_count)
    names = records * self.side_names[side] / max(counts[side], 1) if self.named else None
    return held_bytes(records * self.averages[side], records, names)

  @property
  def cell_memory_bytes(self) -> int:
    """Estimated memory of writing one cell: its records' payloads as the runner hands them over and the
    records as the writer holds them (``held_bytes``), one trimmed copy of a chunk under ``--collision
    left|right``, and two blocks of frames. Broadcast: the columns are a slice of the shared copy
    (``broadcast_memory_bytes``), a reference a record."""
    rows, cols = min(self.row_chunk, self.left_count), min(self.col_chunk, self.right_count)
    delivered = rows * self.averages[0] + (0 if self.strategy == "broadcast" else cols * self.averages[1])
    held = self._held(0, rows) + (8 * cols if self.strategy == "broadcast" else self._held(1, cols))
    trimmed = held_bytes(max(rows * self.averages[0], cols * self.averages[1]), max(rows, cols))
    return int(delivered) + held + (trimmed if self.named else 0) + 2 * WRITE_BLOCK_BYTES

  @property
  def broadcast_memory_bytes(self) -> int:
    """The right side's copy each worker process holds when broadcast (0 for the grid)."""
    return self._held(1, self.right_count) if self.strategy == "broadcast" else 0

  @property
  def rows(self) -> int:
    return -(-self.left_count // self.row_chunk)

  @property
  def cols(self) -> int:
    return -(-self.right_count // self.col_chunk)

  @property
  def grid(self) -> dict:
    """The cell grid, as the summary and the dry run show it."""
    if self.grouped is not None:
      return self.grouped.grid_summary()
    grid = {"rows": self.rows, "cols": self.cols, "row_chunk": self.row_chunk, "col_chunk": self.col_chunk,
            "cells": len(self.cells)}
    return dict(grid, routed_by_kept_pairs=True) if self.sparse else grid

  @property
  def shard_count(self) -> int:
    return max(1, self.grouped.shard_count if self.grouped is not None else len(self.cells))

  def ordinal(self, side: int, source: str, index: int) -> int:
    """The record's position in its side: sources in path order, records in file order, corrupt ones out."""
    return self.offsets[side][source] + index - bisect.bisect_left(self.bad[side].get(source, ()), index)

  def chunk(self, side: int, ordinal: int) -> int:
    return ordinal // (self.row_chunk if side == 0 else self.col_chunk)

  def members(self, row: int, col: int) -> Tuple[range, range]:
    """The ordinals of the left and right records of cell (row, col)."""
    return (range(row * self.row_chunk, min(self.left_count, (row + 1) * self.row_chunk)),
            range(col * self.col_chunk, min(self.right_count, (col + 1) * self.col_chunk)))

  def first_col(self, row: int) -> int:
    """The first column of ``row`` that has pairs (``cols`` when none has): a self-join keeps, for each left
    ordinal l, the right ordinals from l + step on, so a row's non-empty cells are a suffix of its columns."""
    step = MIN_STEP.get(self.self_join)
    if step is None:
      return 0
    first = row * self.row_chunk + step  # the smallest right ordinal the row keeps
    return first // self.col_chunk if first < self.right_count else self.cols

  def row_start(self, row: int) -> int:
    """Shard number of the first cell of ``row`` (of the rows, the cell count): a self-join's rows keep
    ``cols - first_col(r)`` cells, summed in closed form, so a plan of millions of rows needs no table."""
    if self.self_join not in MIN_STEP:
      return row * self.cols
    step = MIN_STEP[self.self_join]
    # first_col(r) = (r * row_chunk + step) // col_chunk for the rows that keep a pair; the others keep none.
    live = min(row, max(0, -(-(self.right_count - step) // self.row_chunk)))
    return live * self.cols - _floor_sum(live, self.col_chunk, self.row_chunk, step)

  def row_of(self, shard: int) -> int:
    """The row of cell ``shard``: the last row whose first cell is at or before it (row_start grows)."""
    if self.self_join not in MIN_STEP:
      return shard // self.cols
    low, high = 0, self.rows - 1
    while low < high:
      middle = (low + high + 1) // 2
      low, high = (middle, high) if self.row_start(middle) <= shard else (low, middle - 1)
    return low

  def row_shards(self, row: int) -> range:
    """The shards of the cells of ``row`` (where each left record of the row goes)."""
    start = self.row_start(row)
    return range(start, start + self.cols - self.first_col(row))

  def column_shards(self, col: int) -> Iterator[int]:
    """The shards of the cells of column ``col`` (where each right record of the column goes)."""
    start = 0  # row_start(row), kept as a running sum: the hot path of routing pays O(1) a row
    for row in range(self.rows):
      first = self.first_col(row)
      if first > col:
        return  # first_col grows with the row
      yield start + col - first
      start += self.cols - first

  @functools.cached_property
  def cells(self) -> "Cells":
    return Cells(self)


class Cells(collections.abc.Sequence):
  """The plan's non-empty cells in shard order, as ``(row, col, pairs)``, computed from the grid."""

  def __init__(self, plan: Plan):
    self._plan = plan
    self._count = plan.row_start(plan.rows)

  def __len__(self) -> int:
    return self._count

  def __iter__(self):
    """Row by row, O(1) a cell (indexing finds the row by a binary search)."""
    plan = self._plan
    for row in range(plan.rows):
      for col in range(plan.first_col(row), plan.cols):
        rows, cols = plan.members(row, col)
        yield row, col, cell_pairs((rows.start, rows.stop), (cols.start, cols.stop), plan.self_join)

  def __getitem__(self, shard):
    if isinstance(shard, slice):
      return [self[i] for i in range(*shard.indices(self._count))]
    if not -self._count <= shard < self._count:
      raise IndexError(shard)
    shard %= self._count  # from the end, as any sequence
    plan = self._plan
    row = plan.row_of(shard)
    col = plan.first_col(row) + shard - plan.row_start(row)
    rows, cols = plan.members(row, col)
    return row, col, cell_pairs((rows.start, rows.stop), (cols.start, cols.stop), plan.self_join)


def _floor_sum(n: int, m: int, a: int, b: int) -> int:
  """``sum((a * i + b) // m for i in range(n))`` in O(log m) steps, for a, b >= 0 and m >= 1 (the classic
  reduction: take out the whole quotients, then swap the roles of the slope and the modulus)."""
  total = 0
  while n > 0:
    if a >= m:
      total += n * (n - 1) // 2 * (a // m)
      a %= m
    if b >= m:
      total += n * (b // m)
      b %= m
    top = a * n + b
    if top < m:
      break
    n, b = divmod(top, m)
    m, a = a, m
  return total


def held_bytes(payload_bytes: float, records: int, names: Optional[float] = None) -> int:
  """Estimated memory of ``records`` records held by a worker, with ``names`` names among them when the merge
  needs them (None when it does not)."""
  named = 0 if names is None else records * NAMED_RECORD_BYTES + names * NAME_MEMORY_BYTES
  return int(payload_bytes + records * RECORD_MEMORY_BYTES + named)


def _offsets(good: Dict[str, int]) -> Dict[str, int]:
  offsets, total = {}, 0
  for source in sorted(good):
    offsets[source] = total
    total += good[source]
  return offsets


def _unprefixed(keys: FrozenSet[str], prefix: str) -> FrozenSet[str]:
  return frozenset(key[len(prefix):] for key in keys if key.startswith(prefix))


def check_collisions(left_keys: FrozenSet[str], right_keys: FrozenSet[str], collision: str,
                     prefixes: Tuple[str, str]) -> Tuple[str, ...]:
  """The feature names present on both sides; raises JobError when the policy does not allow them."""
  collisions = tuple(sorted(left_keys & right_keys))
  if not collisions:
    return collisions
  shown = ", ".join(repr(name) for name in collisions[:10]) + (" ..." if len(collisions) > 10 else "")
  if collision == "error":
    raise JobError(f"{len(collisions)} feature name(s) exist on both sides: {shown}; choose how to merge "
                   "them with --collision prefix|left|right")
  if collision == "prefix":
    raise JobError(f"feature name(s) still collide after renaming with --left_prefix {prefixes[0]!r} and "
                   f"--right_prefix {prefixes[1]!r}: {shown}; choose other prefixes")
  return collisions


def _chunks(left: int, right: int, pairs_per_cell: int, strategy: str, square: bool,
            record_bytes: Tuple[float, float], budget: int, sampled: bool) -> Tuple[int, int]:
  """Records per row chunk and per column chunk: about ``pairs_per_cell`` pairs per cell, then within the
  cell budget (``CELL_RECORDS`` per side, ``budget`` bytes of records in all)."""
  left, right = max(left, 1), max(right, 1)
  if strategy == "broadcast":
    col = min(right, CELL_RECORDS, pairs_per_cell)  # a row of the whole right side, cut when too long
    row = min(left, max(1, pairs_per_cell // col))
  else:
    side = max(1, math.isqrt(pairs_per_cell))
    row = min(left, side)
    col = min(right, max(1, pairs_per_cell // row))
    if col == right:
      row = min(left, max(1, pairs_per_cell // col))
    if square:
      row = col = min(side, left)
  if sampled:  # few pairs per cell: split anyway, so that the work spreads over workers
    # Chunks of floor(n / k) records make at least k of them (ceil(n / k) makes only 3 of 9 records, k = 4).
    if strategy == "broadcast":
      row = min(row, max(1, left // SAMPLED_SPLITS ** 2))
    else:
      row, col = min(row, max(1, left // SAMPLED_SPLITS)), min(col, max(1, right // SAMPLED_SPLITS))
  row, col = min(row, CELL_RECORDS), min(col, CELL_RECORDS)
  held = row * record_bytes[0] + col * record_bytes[1]
  if held > budget:
    scale = budget / held
    row, col = max(1, int(row * scale)), max(1, int(col * scale))
  if square:
    row = col = min(row, col)
  return row, col


def _within_uneven_sizes(chunks: Tuple[int, int], sides: Tuple[SideStats, SideStats], weights: Tuple[float, float],
                         budget: int, square: bool, broadcast: bool) -> Tuple[int, int]:
  """Each side's chunk cut smaller while the records it can really hold (``chunk_bytes``, from the side's size
  profile) pass UNEVEN_SLACK times its share of the budget (as the average sizes, ``weights``, divide it) plus its
  largest record: the chunks were sized at the average, and a chunk of one record holds that record whatever
  the cut. A side of even sizes keeps its chunk. (A broadcast cell's columns are a slice of the per-process
  copy, which its own bound covers.)"""
  parts = (chunks[0] * weights[0], 0.0 if broadcast else chunks[1] * weights[1])
  cut = list(chunks)
  for side in (0,) if broadcast else (0, 1):
    profile, largest = size_profile(sides[side]), sides[side].largest
    allowed = UNEVEN_SLACK * budget * parts[side] / max(sum(parts), 1e-9) + largest
    for _ in range(64):  # each round scales the chunk by allowed / held, so a few rounds settle
      held = chunk_bytes(profile, largest, cut[side])
      if held <= allowed or cut[side] == 1:
        break
      cut[side] = max(1, min(cut[side] - 1, int(cut[side] * allowed / held)))
  if square:
    cut = [min(cut)] * 2
  return cut[0], cut[1]


def may_route_by_kept_pairs(sample_rate: float, strategy: str) -> bool:
  """Whether a job with these options may be routed by its kept pairs (``Plan.sparse``), known before the data
  is read: the pipeline builds the join on right ordinals only then. (At rate 1/2 or more a record keeps pairs
  in at least half the cells of its row, so routing by kept pairs could never move under half the bytes.)"""
  return sample_rate < SPARSE_MAX_SHARE and strategy != "broadcast"


def _check_max_pairs(pairs: int, all_pairs: int, n: int, m: int, max_pairs: int, sample_rate: float) -> None:
  if pairs > max_pairs:
    sampled = f" sampled at --sample_rate {sample_rate} from {all_pairs:,}" if sample_rate < 1 else ""
    raise JobError(f"the job would write {pairs:,} pairs ({n:,} x {m:,} records{sampled}), more than "
                   f"--max_pairs {max_pairs:,}; raise --max_pairs to allow it")


def side_names(stats: SideStats, index_name: Optional[str]) -> int:
  """The feature entries of a side's records (``Plan.side_names``), from the schema's tally of the one parse."""
  return sum(values.entries for values in stats.features.values()) + (stats.count if index_name else 0)


def _choose_strategy(strategy: str, right: SideStats, names: Optional[int]) -> str:
  """``auto`` broadcasts a small right side; a forced broadcast beyond the memory bound is refused. ``names``:
  the right side's names, when the merge holds them (else None)."""
  broadcast_bytes = held_bytes(right.payload_bytes, right.count, names)
  if strategy == "auto":
    broadcast = right.payload_bytes <= BROADCAST_MAX_BYTES and broadcast_bytes <= BROADCAST_LIMIT_BYTES
    return "broadcast" if broadcast else "grid"
  if strategy == "broadcast" and broadcast_bytes > BROADCAST_LIMIT_BYTES:
    raise JobError(f"--strategy broadcast would hold the whole right side ({right.count:,} records, about "
                   f"{broadcast_bytes / 1e6:,.0f} MB in memory) in every worker process, more than the "
                   f"{BROADCAST_LIMIT_BYTES / 1e6:,.0f} MB bound; use --strategy grid")
  return strategy


def check_selection(stats: SideStats, select: Optional[FrozenSet[str]], prefix: str, side: str) -> None:
  """Every name given to --left_features / --right_features must occur in that side's data."""
  missing = sorted(name for name in select or () if prefix + name not in stats.keys)
  if missing and stats.count:
    raise JobError(f"--{side}_features names {', '.join(repr(n) for n in missing)}, which no {side} record has")


def check_index_name(stats: SideStats, name: Optional[str], side: str) -> None:
  if name and name in stats.keys:
    raise JobError(f"--index_features cannot add {name!r} to the {side} records: they already have a feature of "
                   "that name; use --collision prefix with another prefix, or drop the feature")


def make_plan(left: SideStats, right: SideStats, *, strategy: str, self_join: Optional[str], collision: str,
              prefixes: Tuple[str, str], max_pairs: int, target_shard_bytes: int,
              selects: Tuple[Optional[FrozenSet[str]], Optional[FrozenSet[str]]] = (None, None),
              index_names: Tuple[Optional[str], Optional[str]] = (None, None), sample_rate: float = 1.0,
              dry_run: bool = False) -> Plan:
  """Checks the job against its limits and cuts it into cells; raises JobError before anything is written.

  With ``sample_rate`` below 1 the counts and sizes are expectations: cells are sized for the kept pairs.
  With ``dry_run`` a failed check does not stop the plan: its message, which names the flag that fixes it, goes
  to ``Plan.problems`` (a refused broadcast is planned as a grid).
  """
  problems = []

  def check(function, *args):
    try:
      return function(*args)
    except JobError as e:
      if not dry_run:
        raise
      problems.append(str(e))
      return None

  for stats, select, prefix, index_name, side in zip((left, right), selects, prefixes, index_names, SIDES):
    check(check_selection, stats, select, prefix, side)
    check(check_index_name, stats, index_name, side)
  n, m = left.count, right.count
  all_pairs = total_pairs(n, m, self_join)
  pairs = all_pairs if sample_rate >= 1 else math.ceil(all_pairs * sample_rate)
  check(_check_max_pairs, pairs, all_pairs, n, m, max_pairs, sample_rate)
  index_keys = [frozenset([name]) if name else frozenset() for name in index_names]
  keys = (left.keys | index_keys[0], right.keys | index_keys[1])
  collisions = check(check_collisions, *keys, collision, prefixes)
  if collisions is None:  # refused (dry run): show them all the same
    collisions = tuple(sorted(keys[0] & keys[1]))
  if collision == "prefix":  # renamed apart: what the user wants to know is which names met before renaming
    collisions = tuple(sorted(_unprefixed(left.keys, prefixes[0]) & _unprefixed(right.keys, prefixes[1])))
  names = (side_names(left, index_names[0]), side_names(right, index_names[1]))
  named = collision in ("left", "right") and bool(collisions)
  strategy = check(_choose_strategy, strategy, right, names[1] if named else None) or "grid"
  averages = (left.payload_bytes / max(n, 1), right.payload_bytes / max(m, 1))
  pair_bytes = sum(averages) + PAIR_OVERHEAD_BYTES
  # The budget counts a name held with its record as NAME_MEMORY_BYTES more of the record's bytes.
  weights = tuple(average + (NAME_MEMORY_BYTES * count / max(records, 1) if named else 0)
                  for average, count, records in zip(averages, names, (n, m)))
  pairs_per_cell = max(1, int(target_shard_bytes / pair_bytes / max(sample_rate, sampling.MIN_RATE)))
  square = self_join in MIN_STEP and strategy == "grid"
  budget = min(target_shard_bytes, CELL_INPUT_MAX_BYTES)
  row_chunk, col_chunk = _chunks(n, m, pairs_per_cell, strategy, square, weights, budget, sample_rate < 1)
  plan = Plan(strategy=strategy, self_join=self_join, left_count=n, right_count=m, row_chunk=row_chunk,
              col_chunk=col_chunk, offsets=(_offsets(left.good), _offsets(right.good)),
              bad=(dict(left.bad), dict(right.bad)), collisions=collisions, pairs=pairs,
              estimated_bytes=int(pairs * pair_bytes), sample_rate=sample_rate,
              side_bytes=(left.payload_bytes, right.payload_bytes), collision=collision, problems=tuple(problems),
              side_names=names)
  if may_route_by_kept_pairs(sample_rate, strategy) and 0 < plan.sparse_shuffle_bytes <= (
      SPARSE_MAX_SHARE * plan.shuffle_bytes):
    # Routed by kept pairs, a cell holds only the records of its kept pairs, far fewer than its chunks: the
    # average's chunks stand (cut for uneven sizes, such cells were mostly empty).
    return dataclasses.replace(plan, sparse=True)
  cut = _within_uneven_sizes((row_chunk, col_chunk), (left, right), weights, budget, square, strategy == "broadcast")
  if cut != (row_chunk, col_chunk):
    plan = dataclasses.replace(plan, row_chunk=cut[0], col_chunk=cut[1])
  return plan

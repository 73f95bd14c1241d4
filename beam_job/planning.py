"""The plan of a job: record ordinals, chunks, cells, shard names, and the checks made before any write.

Everything here is a plain function of what the reading stage learned about each side (``SideStats``) and
of the options, so the same inputs give the same plan, hence the same shards, on any runner.
"""

import bisect
import dataclasses
import functools
import math
from typing import Dict, FrozenSet, Optional, Tuple

from beam_job import sampling
from beam_job.errors import JobError

# ``--strategy auto`` broadcasts the right side when its encoded records take at most this many bytes: every
# worker then holds a copy, which is cheap up to tens of MB and avoids shuffling the left side per column.
BROADCAST_MAX_BYTES = 64 << 20
# Frame (16 bytes) plus the Example header (at most 6 bytes for records under 4 GB).
PAIR_OVERHEAD_BYTES = 20
SELF_JOINS = ("product", "combinations", "combinations_with_replacement")
# Bounds of --max_pairs and --target_shard_mb: counts stay int64 for whoever reads the summary, and a shard of
# at most 1 TB keeps the byte target, and what is computed from it, finite.
MAX_PAIRS = (1 << 63) - 1
MAX_TARGET_SHARD_MB = 1e6
SIDES = ("left", "right")


@dataclasses.dataclass(frozen=True)
class SideStats:
  """What the plan needs to know about one side, gathered while reading it."""
  good: Dict[str, int]  # source -> number of good records
  bad: Dict[str, Tuple[int, ...]]  # source -> sorted indexes of records left out as corrupt
  payload_bytes: int  # encoded feature entries of all good records
  keys: FrozenSet[str]  # every feature name seen (after renaming)

  @property
  def count(self) -> int:
    return sum(self.good.values())


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
  if self_join not in ("combinations", "combinations_with_replacement"):
    return (b - a) * (d - c)
  k = 1 if self_join == "combinations" else 0  # keep r >= l + k
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
  """Where every pair goes. A cell is (row chunk, column chunk); each non-empty cell is one shard."""
  strategy: str
  self_join: Optional[str]
  left_count: int
  right_count: int
  row_chunk: int
  col_chunk: int
  cells: Tuple[Tuple[int, int, int], ...]  # (row, col, pairs) of the non-empty cells, in shard order
  offsets: Tuple[Dict[str, int], Dict[str, int]]  # per side: source -> ordinal of its first good record
  bad: Tuple[Dict[str, Tuple[int, ...]], Dict[str, Tuple[int, ...]]]
  collisions: Tuple[str, ...]
  pairs: int  # expected when sampling
  estimated_bytes: int
  sample_rate: float = 1.0
  side_bytes: Tuple[int, int] = (0, 0)  # encoded records of each side
  run: Optional[str] = None  # the token of the run that writes this plan (None in a dry run)

  @property
  def shuffle_bytes(self) -> int:
    """Record bytes moved between stages to build the cells (never the pairs themselves): grid sends each
    left record to every column of its row and each right record to every row of its column; broadcast
    groups the left side once and hands the whole right side to each worker as a side input (counted once)."""
    if self.strategy == "broadcast":
      return self.side_bytes[0] + self.side_bytes[1]
    return self.side_bytes[0] * self.cols + self.side_bytes[1] * self.rows

  @property
  def rows(self) -> int:
    return -(-self.left_count // self.row_chunk)

  @property
  def cols(self) -> int:
    return -(-self.right_count // self.col_chunk)

  @property
  def grid(self) -> dict:
    """The cell grid, as the summary and the dry run show it."""
    return {"rows": self.rows, "cols": self.cols, "row_chunk": self.row_chunk, "col_chunk": self.col_chunk,
            "cells": len(self.cells)}

  @property
  def shard_count(self) -> int:
    return max(1, len(self.cells))

  def ordinal(self, side: int, source: str, index: int) -> int:
    """The record's position in its side: sources in path order, records in file order, corrupt ones out."""
    return self.offsets[side][source] + index - bisect.bisect_left(self.bad[side].get(source, ()), index)

  def chunk(self, side: int, ordinal: int) -> int:
    return ordinal // (self.row_chunk if side == 0 else self.col_chunk)

  @functools.cached_property
  def cell_shards(self) -> Dict[Tuple[int, int], int]:
    """Cell (row, col) -> shard number, for the cells that have pairs."""
    return {(row, col): shard for shard, (row, col, _) in enumerate(self.cells)}


def _offsets(good: Dict[str, int]) -> Dict[str, int]:
  offsets, total = {}, 0
  for source in sorted(good):
    offsets[source] = total
    total += good[source]
  return offsets


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


def _chunks(left: int, right: int, pairs_per_cell: int, strategy: str, square: bool) -> Tuple[int, int]:
  left, right = max(left, 1), max(right, 1)
  if strategy == "broadcast":
    return min(left, max(1, pairs_per_cell // right)), right
  side = max(1, math.isqrt(pairs_per_cell))
  if square:
    side = min(side, left)
    return side, side
  row = min(left, side)
  col = min(right, max(1, pairs_per_cell // row))
  if col == right:
    row = min(left, max(1, pairs_per_cell // col))
  return row, col


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
              index_names: Tuple[Optional[str], Optional[str]] = (None, None), sample_rate: float = 1.0) -> Plan:
  """Checks the job against its limits and cuts it into cells; raises JobError before anything is written.

  With ``sample_rate`` below 1 the counts and sizes are expectations: cells are sized for the kept pairs.
  """
  for stats, select, prefix, index_name, side in zip((left, right), selects, prefixes, index_names, SIDES):
    check_selection(stats, select, prefix, side)
    check_index_name(stats, index_name, side)
  n, m = left.count, right.count
  all_pairs = total_pairs(n, m, self_join)
  pairs = all_pairs if sample_rate >= 1 else math.ceil(all_pairs * sample_rate)
  if pairs > max_pairs:
    sampled = f" sampled at --sample_rate {sample_rate} from {all_pairs:,}" if sample_rate < 1 else ""
    raise JobError(f"the job would write {pairs:,} pairs ({n:,} x {m:,} records{sampled}), more than "
                   f"--max_pairs {max_pairs:,}; raise --max_pairs to allow it")
  index_keys = [frozenset([name]) if name else frozenset() for name in index_names]
  collisions = check_collisions(left.keys | index_keys[0], right.keys | index_keys[1], collision, prefixes)
  if strategy == "auto":
    strategy = "broadcast" if right.payload_bytes <= BROADCAST_MAX_BYTES else "grid"
  pair_bytes = (left.payload_bytes / max(n, 1)) + (right.payload_bytes / max(m, 1)) + PAIR_OVERHEAD_BYTES
  pairs_per_cell = max(1, int(target_shard_bytes / pair_bytes / max(sample_rate, sampling.MIN_RATE)))
  square = self_join in ("combinations", "combinations_with_replacement") and strategy == "grid"
  row_chunk, col_chunk = _chunks(n, m, pairs_per_cell, strategy, square)
  cells = []
  for row in range(-(-n // row_chunk)):
    rows = (row * row_chunk, min(n, (row + 1) * row_chunk))
    for col in range(-(-m // col_chunk)):
      count = cell_pairs(rows, (col * col_chunk, min(m, (col + 1) * col_chunk)), self_join)
      if count:
        cells.append((row, col, count))
  return Plan(strategy=strategy, self_join=self_join, left_count=n, right_count=m, row_chunk=row_chunk,
              col_chunk=col_chunk, cells=tuple(cells), offsets=(_offsets(left.good), _offsets(right.good)),
              bad=(dict(left.bad), dict(right.bad)), collisions=collisions, pairs=pairs,
              estimated_bytes=int(pairs * pair_bytes), sample_rate=sample_rate,
              side_bytes=(left.payload_bytes, right.payload_bytes))

"""``--group_by``: pairs only within groups of records with equal keys, and their plan. No Beam here.

A record's group key is the one value of one of its features, read in the one parse of the record
(``examples.prepare_keyed``) and carried between stages as ``encode_key``'s bytes: one byte for the kind, then
the value, so that the bytes sort as the keys do (int64 numerically, then bytes in byte order) and an int64 key
never equals a bytes key. Those bytes are the Beam key (Beam's Bytes coder is deterministic) and the plan's.

``make_grouped_plan`` turns the number of records of each group on each side into cells, as ``planning`` does
for the full product: a group too large for one cell (a heavy key) is cut into a grid of its own, many small
groups are packed together into cells of about the target shard size, and each cell is one shard, shards in
key order. Records are named by their side and their rank within their group (records keep the job's order,
source then index, inside a group), so the plan never lists records or pairs: it is a few numbers per group,
and the cells of a heavy group are computed from its grid on demand (``planning.Plan``'s arithmetic).
"""

import array
import bisect
import dataclasses
import heapq
import math
from typing import Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from beam_job import planning
from beam_job.errors import JobError

INT64, BYTES = 0, 1  # the kind byte of an encoded key: every int64 key sorts before every bytes key
_OFFSET = 1 << 63  # int64 + 2 ** 63, big-endian, sorts as the int64s do
MISSING_GROUP = ("fail", "skip")  # what --missing_group does with a record that has no key
# The summary and the dry run show this many of the groups with the most pairs.
LARGEST_SHOWN = 10
# --pairs_per_left without --group_by: the whole product is one group, of this key, whose ranks are the ordinals.
WHOLE = b""


class MissingKey(Exception):
  """A record without exactly one int64 or bytes value in its group feature. The message says what the record
  holds (``has no feature 'q'``); the caller adds the side, file and record, and either fails the job or, under
  ``--missing_group skip``, leaves the record out and lists it. Not a ``ValueError``: that would be taken for a
  corrupt payload by the reading stage, which skips those under ``--on_corrupt skip``."""


def encode_key(value: Union[int, bytes]) -> bytes:
  """The sortable bytes of a key: ``0x00`` and the int64 plus 2 ** 63 in 8 big-endian bytes, or ``0x01`` and
  the bytes as they are."""
  if isinstance(value, int):
    return b"\x00" + (value + _OFFSET).to_bytes(8, "big")
  return b"\x01" + bytes(value)


def decode_key(encoded: bytes) -> Union[int, bytes]:
  if encoded[0] == INT64:
    return int.from_bytes(encoded[1:9], "big") - _OFFSET
  return encoded[1:]


def display_key(encoded: bytes) -> Union[int, str]:
  """A key as the summary shows it (JSON): an int64 as a number, bytes as text, a backslash doubled and invalid
  UTF-8 escaped (``\\x80``), so that two different keys never look alike."""
  value = decode_key(encoded)
  return value if isinstance(value, int) else value.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


def _held(feature, kind: Optional[str]) -> str:
  if kind is None:
    return "holds an empty Feature (no value list)"
  count = len(getattr(feature, kind).value)
  what = {"int64_list": "int64", "float_list": "float", "bytes_list": "bytes"}[kind]
  return f"holds {count} {what} value{'' if count == 1 else 's'}"


def key_of(features, name: str) -> bytes:
  """The encoded group key of a parsed record's ``Features.feature`` map, for feature ``name`` as the input
  names it (before --*_features and prefixes apply); raises ``MissingKey`` unless it holds exactly one int64 or
  bytes value. About a microsecond: one map lookup on the message ``prepare`` parses anyway."""
  if name not in features:  # checked first: indexing a protobuf map inserts the missing key
    raise MissingKey(f"has no feature {name!r}, its group key")
  feature = features[name]
  kind = feature.WhichOneof("kind")
  if kind == "int64_list":
    values = feature.int64_list.value
    if len(values) == 1:
      return b"\x00" + (values[0] + _OFFSET).to_bytes(8, "big")
  elif kind == "bytes_list":
    values = feature.bytes_list.value
    if len(values) == 1:
      return b"\x01" + values[0]
  raise MissingKey(f"feature {name!r} {_held(feature, kind)}; a group key is exactly one int64 or bytes value")


# --- ranks within groups ------------------------------------------------------------------------------------

# A record's rank within its group is needed only when its group is cut (``GroupedPlan.needs_rank``): the
# records of those groups are gathered by (key, ordinal // RANK_BLOCK), at most RANK_BLOCK records each, so a
# worker sorts a bounded number of ordinals whatever the size of the group. A block's first rank is the number
# of records of its key in earlier blocks (``rank_bases``), counted per (key, block) in a small combine.
RANK_BLOCK = 1 << 16


def rank_bases(block_counts: Mapping[Tuple[bytes, int], int]) -> Dict[Tuple[bytes, int], int]:
  """The rank of the first record of each (key, block) given each one's record count: records keep the job's
  order (the side's ordinals) inside a group, so a rank is its block's base plus its position among the
  block's ordinals. The table has an entry per block that holds records of a cut group, at most
  ``count / RANK_BLOCK + 1`` per cut group, and never more than the records."""
  bases, key_now, total = {}, None, 0
  for key, block in sorted(block_counts):
    if key != key_now:
      key_now, total = key, 0
    bases[(key, block)] = total
    total += block_counts[(key, block)]
  return bases


# --- pair counts ------------------------------------------------------------------------------------------


def step(self_join: Optional[str]) -> Optional[int]:
  """How far past a left rank the kept right ranks of a group start (None: every right record is kept)."""
  return planning.MIN_STEP.get(self_join)


def eligible(rank: int, right: int, self_join: Optional[str]) -> int:
  """The number of right records of its group a left record of ``rank`` would be paired with (``right`` is the
  group's right count; a self-join's group is paired with itself, itertools semantics)."""
  s = step(self_join)
  return right if s is None else max(0, right - rank - s)


def first_candidate(rank: int, self_join: Optional[str]) -> int:
  """The right rank of candidate position 0 of a left record (``sampling.pick`` draws positions)."""
  s = step(self_join)
  return 0 if s is None else rank + s


def k_pairs(rows: Tuple[int, int], right: int, self_join: Optional[str], k: int) -> int:
  """Pairs of the left ranks in ``rows`` (half-open) under ``--pairs_per_left k``: each keeps
  ``min(k, eligible)``, summed in closed form."""
  a, b = rows
  if b <= a:
    return 0
  s = step(self_join)
  if s is None:
    return (b - a) * min(k, right)
  last = right - s  # ranks below it have candidates: eligible(i) = last - i
  full = min(b, max(a, last - k + 1))  # ranks a .. full - 1 keep k each
  total = (full - a) * k
  p, q = max(a, last - k + 1), min(b, last)  # these keep last - i each (fewer than k)
  if q > p:
    total += (q - p) * last - (p + q - 1) * (q - p) // 2
  return total


def group_pairs(left: int, right: int, self_join: Optional[str], pairs_per_left: Optional[int]) -> int:
  if pairs_per_left is not None:
    return k_pairs((0, left), right, self_join, pairs_per_left)
  return planning.total_pairs(left, right, self_join)


# --- the plan ---------------------------------------------------------------------------------------------


class Member(NamedTuple):
  """One group's part of a cell: the ranks of its left and right records there, and its pairs (before
  ``--sample_rate``; under ``--pairs_per_left`` exact when the cell holds every candidate of its rows, else
  None: the writer counts them, and the group's cells add up to ``group_pairs``)."""
  key: bytes
  left: range
  right: range
  pairs: Optional[int]


class Cell(NamedTuple):
  shard: int
  members: Tuple[Member, ...]  # in key order; a heavy group's cell has one

  @property
  def pairs(self) -> Optional[int]:
    counts = [member.pairs for member in self.members]
    return None if None in counts else sum(counts)

  @property
  def records(self) -> Tuple[int, int]:
    """The left and right records the cell holds (a self-join's records are held as both)."""
    return sum(len(m.left) for m in self.members), sum(len(m.right) for m in self.members)


class Group(NamedTuple):
  """One group as the summary shows it."""
  key: bytes
  left: int
  right: int
  pairs: int
  cells: int


@dataclasses.dataclass(frozen=True)
class GroupedPlan:
  """Where every pair of a grouped job goes: groups in key order, each either packed into a cell shared with
  its neighbours or cut into a grid of cells of its own.

  Its size grows with the number of groups that have pairs (a key and three integers each, in arrays, plus two
  chunk sizes per group cut into a grid), never with the number of cells: a heavy group's cells, and which of
  them a record goes to, are computed from its row and column chunks as ``planning.Plan`` computes a full
  product's, so a 1e6 x 1e6 group cut into a million cells costs the plan what a group of two records does.
  Every worker holds the plan (a side input): a table of cells would make that memory, and the time to send
  it, grow with the pairs. (About 22 bytes pickled per group: a million groups take 22 MB.)
  """
  self_join: Optional[str]
  keys: Tuple[bytes, ...]  # groups with at least one pair, sorted (encoded keys sort as the keys do)
  lefts: array.array  # per group: left records
  rights: array.array  # right records (a self-join's group: its records again)
  firsts: array.array  # shard of its first cell (non-decreasing: packed groups share it)
  cut: Dict[int, Tuple[int, int]]  # group -> (row chunk, column chunk), for the groups cut into a grid only
  shard_count: int
  pairs: int  # written pairs (expected under --sample_rate)
  all_pairs: int  # pairs within groups before sampling
  groups: int  # distinct keys on either side, with or without pairs
  unpaired: Tuple[int, int]  # records of each side in groups without pairs (written nowhere)
  largest: Tuple[Group, ...]  # the groups with the most pairs, most first
  side_bytes: Tuple[float, float]  # average encoded bytes of a left and of a right record
  pairs_per_left: Optional[int] = None
  sample_rate: float = 1.0

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != "_grids"}  # the cache stays behind

  @property
  def group_count(self) -> int:
    """Groups with at least one pair."""
    return len(self.keys)

  def index(self, key: bytes) -> Optional[int]:
    """The position of group ``key`` (None when it has no pairs: its records go nowhere)."""
    i = bisect.bisect_left(self.keys, key)
    return i if i < len(self.keys) and self.keys[i] == key else None

  def is_cut(self, group: int) -> bool:
    return group in self.cut

  def chunks(self, group: int) -> Tuple[int, int]:
    """Ranks per cell row and per cell column of a group (its counts when it is not cut)."""
    return self.cut.get(group) or (self.lefts[group], self.rights[group])

  def needs_rank(self, side: int, key: bytes) -> bool:
    """Whether a record's shards depend on its rank within its group: only when its group is cut along its side.
    Other records go to the cells of their group whatever their rank, so ranks need to be known (an extra
    stage) only for the records of heavy groups."""
    group = self.index(key)
    if group is None:
      return False
    return self.chunks(group)[side] < (self.lefts if side == 0 else self.rights)[group]

  def grid(self, group: int) -> planning.Plan:
    """The group's cells as a full product of its ranks (``row_shards``, ``column_shards``, ``cells``,
    ``members``), shards numbered from 0 within the group. Cached per process."""
    grids = self.__dict__.setdefault("_grids", {})
    if group not in grids:
      grids[group] = _grid(self.self_join, self.lefts[group], self.rights[group], *self.chunks(group))
    return grids[group]

  def cell_count(self, group: int) -> int:
    """Cells the group occupies (1 when packed, shared with its neighbours)."""
    return len(self.grid(group).cells) if self.is_cut(group) else 1

  def shards(self, side: int, key: bytes, rank: int) -> Sequence[int]:
    """The shards a record must go to: a left record (side 0) to the cells of its group's row, a right record
    to those of its group's column; none when its group has no pairs. A self-join's record goes both ways."""
    group = self.index(key)
    if group is None:
      return ()
    first = self.firsts[group]
    if not self.is_cut(group):
      return range(first, first + 1)
    grid = self.grid(group)
    if side == 0:
      shards = grid.row_shards(rank // grid.row_chunk)
      return range(first + shards.start, first + shards.stop)
    return [first + shard for shard in grid.column_shards(rank // grid.col_chunk)]

  def _groups_at(self, shard: int) -> range:
    """The groups with a part in ``shard``: the packed groups that start there, or the cut group around it."""
    start, stop = bisect.bisect_left(self.firsts, shard), bisect.bisect_right(self.firsts, shard)
    if start == stop:
      start = stop - 1  # inside a cut group that started earlier
    return range(start, stop)

  def cell(self, shard: int) -> Cell:
    if not 0 <= shard < self.shard_count:
      raise IndexError(shard)
    members = []
    for group in self._groups_at(shard):
      key, left, right = self.keys[group], self.lefts[group], self.rights[group]
      if not self.is_cut(group):
        members.append(Member(key, range(left), range(right), self._member_pairs(group, (0, left), (0, right))))
        continue
      grid = self.grid(group)
      row, col, _ = grid.cells[shard - self.firsts[group]]
      rows, cols = grid.members(row, col)
      members.append(Member(key, rows, cols, self._member_pairs(group, (rows.start, rows.stop),
                                                                (cols.start, cols.stop))))
    return Cell(shard, tuple(members))

  def _member_pairs(self, group: int, rows: Tuple[int, int], cols: Tuple[int, int]) -> Optional[int]:
    right = self.rights[group]
    if self.pairs_per_left is None:
      return planning.cell_pairs(rows, cols, self.self_join)
    s = step(self.self_join)
    holds_all = cols[1] == right and cols[0] <= (0 if s is None else rows[0] + s)
    return k_pairs(rows, right, self.self_join, self.pairs_per_left) if holds_all else None

  def cells(self) -> Iterator[Cell]:
    """Every cell in shard order (computed as it goes: a plan of millions of cells holds none of them)."""
    for shard in range(self.shard_count):
      yield self.cell(shard)

  def grid_summary(self) -> dict:
    """The summary's and the dry run's ``grid`` of a grouped plan: its cells, and the groups cut into cells."""
    return {"cells": self.shard_count, "groups_with_pairs": self.group_count, "cut_groups": len(self.cut)}

  def shuffle_bytes(self) -> int:
    """Record bytes moved to build the cells: a record of a packed group once, a record of a cut group to every
    cell of its row (column) of the group's grid (by average record sizes). O(groups)."""
    total = 0.0
    for group in range(len(self.keys)):
      left, right = self.lefts[group], self.rights[group]
      if self.is_cut(group):
        grid = self.grid(group)
        total += left * self.side_bytes[0] * grid.cols + right * self.side_bytes[1] * grid.rows
      else:
        total += left * self.side_bytes[0] + right * self.side_bytes[1]
    return int(total)

  def summary(self) -> dict:
    """What the dry run and the summary report about the groups."""
    return {"groups": self.groups, "groups_with_pairs": self.group_count, "pairs": self.pairs,
            "unpaired_records": {"left": self.unpaired[0], "right": self.unpaired[1]},
            "shards": max(1, self.shard_count),  # a job of no pairs still publishes one (empty) shard
            "largest_groups": [{"key": display_key(g.key), "left": g.left, "right": g.right, "pairs": g.pairs,
                                "cells": g.cells} for g in self.largest]}


def _ints(values: List[int]) -> array.array:
  """Integers in 4 bytes each when they fit (group sizes and shard numbers mostly do), else 8."""
  return array.array("I" if not values or max(values) < 1 << 32 else "q", values)


def _grid(self_join: Optional[str], left: int, right: int, row_chunk: int, col_chunk: int) -> planning.Plan:
  """A group's cells as ``planning.Plan`` cuts a full product of its ranks (only the grid's fields matter)."""
  return planning.Plan(strategy="grid", self_join=self_join, left_count=left, right_count=right, row_chunk=row_chunk,
                       col_chunk=col_chunk, offsets=({}, {}), bad=({}, {}), collisions=(), pairs=0, estimated_bytes=0)


def _cut(left: int, right: int, pairs_per_cell: int, averages: Tuple[float, float], budget: int,
         self_join: Optional[str], pairs_per_left: Optional[int]) -> Tuple[int, int]:
  """Row and column chunks of a group too large for one cell.

  Like the full product (``planning._chunks``): about ``pairs_per_cell`` pairs of the group per cell, at most
  ``CELL_RECORDS`` records of each side and ``budget`` bytes of records, square for a self-join. Under
  ``--pairs_per_left`` a row keeps its whole candidate range when it fits in the budget beside one left record,
  so that each row's draw is made in one cell and the cell's pairs are known exactly (rows then hold about
  ``pairs_per_cell`` pairs); only a group whose right side does not fit is cut into columns (of half the
  budget) too."""
  if pairs_per_left is None:
    square = self_join in planning.MIN_STEP
    return planning._chunks(left, right, pairs_per_cell, "grid", square, averages, budget, False)
  col = right  # a row's whole candidate range, when at least one left record fits beside it
  if right > planning.CELL_RECORDS or right * averages[1] + averages[0] > budget:
    col = min(right, planning.CELL_RECORDS, max(1, int(budget / 2 / max(averages[1], 1e-9))))
  kept_per_row = max(1e-9, min(pairs_per_left, right) * col / right)  # a row's pairs inside one column chunk
  row = min(left, planning.CELL_RECORDS, max(1, int(pairs_per_cell / kept_per_row)),
            max(1, int((budget - col * averages[1]) / max(averages[0], 1e-9))))
  return row, col


def make_grouped_plan(counts: Mapping[bytes, Tuple[int, int]], averages: Tuple[float, float], *,
                      self_join: Optional[str], target_shard_bytes: int, max_pairs: int = planning.MAX_PAIRS,
                      pairs_per_left: Optional[int] = None, sample_rate: float = 1.0) -> GroupedPlan:
  """Cuts a grouped job into cells; raises JobError (``--max_pairs``) before anything is written.

  ``counts`` maps each encoded key to its (left, right) record counts (a self-join: the group's count twice);
  ``averages`` are the average encoded bytes of a left and of a right record. Groups are walked in key order:
  a group that fits in one cell (pairs within the shard target, records within the cell budget) joins the open
  cell while the sums still fit, else opens the next one; a group that does not fit is cut into a grid of its
  own. Cells thus hold about ``target_shard_bytes`` of pairs, whatever the key distribution, and their records
  never more than the cell budget (``planning.CELL_RECORDS`` per side, min(target, ``CELL_INPUT_MAX_BYTES``)
  bytes in all; at least one record of each side).
  """
  if self_join in planning.MIN_STEP and any(left != right for left, right in counts.values()):
    raise ValueError("a self-join's groups have the same records on both sides")
  if pairs_per_left is not None and (pairs_per_left < 1 or sample_rate < 1):
    raise ValueError("pairs_per_left is at least 1 and excludes sample_rate (the flags check this first)")
  pair_bytes = sum(averages) + planning.PAIR_OVERHEAD_BYTES
  pairs_per_cell = max(1, int(target_shard_bytes / pair_bytes / max(sample_rate, 1e-12)))  # before sampling
  budget = min(target_shard_bytes, planning.CELL_INPUT_MAX_BYTES)
  keys, lefts, rights, firsts, cut = [], [], [], [], {}
  all_pairs, unpaired, shard = 0, [0, 0], 0
  open_cell = None  # (pairs, left records, right records) of the cell being packed, None when closed
  largest = []
  for key in sorted(counts):
    left, right = counts[key]
    pairs = group_pairs(left, right, self_join, pairs_per_left)
    if pairs == 0:
      unpaired[0] += left
      unpaired[1] += right if self_join not in planning.MIN_STEP else 0
      continue
    all_pairs += pairs
    fits = (pairs <= pairs_per_cell and left <= planning.CELL_RECORDS and right <= planning.CELL_RECORDS and
            left * averages[0] + right * averages[1] <= budget)
    if fits:
      if open_cell is not None:
        total = (open_cell[0] + pairs, open_cell[1] + left, open_cell[2] + right)
        if (total[0] <= pairs_per_cell and max(total[1:]) <= planning.CELL_RECORDS and
            total[1] * averages[0] + total[2] * averages[1] <= budget):
          open_cell = total
        else:
          shard, open_cell = shard + 1, (pairs, left, right)
      else:
        open_cell = (pairs, left, right)
      row, col = left, right
    else:
      if open_cell is not None:
        shard, open_cell = shard + 1, None
      row, col = _cut(left, right, pairs_per_cell, averages, budget, self_join, pairs_per_left)
    keys.append(key)
    lefts.append(left)
    rights.append(right)
    firsts.append(shard)
    if not fits:
      cells = len(_grid(self_join, left, right, row, col).cells)
      if cells > 1 or (row, col) != (left, right):
        cut[len(keys) - 1] = (row, col)
      shard += cells
    entry = (pairs, -len(keys))  # equal counts: the smaller key (seen first) ranks higher
    if len(largest) < LARGEST_SHOWN:
      heapq.heappush(largest, entry)
    elif entry > largest[0]:
      heapq.heapreplace(largest, entry)
  shard_count = shard + (open_cell is not None)
  kept = all_pairs if sample_rate >= 1 else math.ceil(all_pairs * sample_rate)
  if kept > max_pairs:
    how = f" sampled at --sample_rate {sample_rate} from {all_pairs:,}" if sample_rate < 1 else ""
    raise JobError(f"the job would write {kept:,} pairs within {len(keys):,} groups{how}, more than --max_pairs "
                   f"{max_pairs:,}; raise --max_pairs to allow it")
  plan = GroupedPlan(
      self_join=self_join, keys=tuple(keys), lefts=_ints(lefts), rights=_ints(rights), firsts=_ints(firsts),
      cut=cut, shard_count=shard_count, pairs=kept, all_pairs=all_pairs,
      groups=len(counts), unpaired=tuple(unpaired), largest=(), side_bytes=tuple(averages),
      pairs_per_left=pairs_per_left, sample_rate=sample_rate)
  shown = tuple(Group(keys[-g - 1], lefts[-g - 1], rights[-g - 1], pairs, plan.cell_count(-g - 1))
                for pairs, g in sorted(largest, reverse=True))
  return dataclasses.replace(plan, largest=shown)


"""What an output should hold, defined from the documentation alone, for ``beam_job.verify``.

Verify compares each shard byte for byte with ``cells.write_cell`` fed by ``examples.prepare`` and
``planning.make_plan``: fast, but blind to a defect those share with the job, since both sides of the
comparison would carry it. This module shares none of them, only the file reader (``sources.read_file``). It
states the output as README documents it, plainly and slowly:

- a side's records are the good ones (a frame that reads and parses as a ``tf.train.Example`` with no field
  it does not define) of its files in path order, each file in record order; their positions are ordinals;
- a side's Example keeps the features ``--left/right_features`` selects (all without it), renamed with the
  side's prefix under ``--collision prefix``, plus with ``--index_features`` its ordinal as an int64 feature;
- a pair is the protobuf merge of the two Examples, the winner merged last (``--collision left``: the left,
  any other: the right; ``error`` and ``prefix`` allow no common name at all);
- the cells are those of the summary's grid (``rows`` x ``cols`` chunks of ``row_chunk`` left and
  ``col_chunk`` right ordinals), row-major, leaving out those where the self-join keeps no pair; inside a
  cell, pairs by left ordinal then right ordinal, ``--self_join`` with itertools' meaning (``combinations``
  keeps right > left, ``combinations_with_replacement`` right >= left), then ``--sample_rate``'s draw;
- with ``--group_by`` / ``--left_group_by`` / ``--right_group_by`` (``GroupedExpected``), a record's key is the one
  int64 or bytes value of its group feature (read before selection; a record without one is left out, as
  ``--missing_group skip`` does, and has no ordinal); groups go in key order (int64 numerically, then bytes in
  byte order) and each pairs its left records with its right ones by rank within the group (ordinal order),
  the self-join's rule on ranks, ``--sample_rate``'s draw seeded by the left ordinal over right ranks; with
  ``--pairs_per_left K`` each left record keeps the positions Floyd's algorithm draws among its candidates
  (without groups: one group of every record). The summary does not say where a heavy group was cut, so the
  grouped output is defined as one sequence, not per shard: each group's pairs as a multiset, in that order.

Records are compared as feature maps, ``{name: (kind, values)}``: the merge serializes in another order
than the job, so bytes cannot be compared.
"""

import bisect
import dataclasses
import hashlib
import itertools
import math
import struct
from typing import Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from beam_job import sources, tfrecord
from beam_job.example_proto import Example

FeatureMap = Dict[str, Tuple[Optional[str], tuple]]
Pair = Tuple[int, int]


def parse(payload: bytes) -> Optional[Example]:
  """The Example a payload holds; None when it is not one (it does not parse, or holds a field that
  ``tf.train.Example`` or its ``Features`` does not define, which a merge would lose)."""
  example = Example()
  try:
    example.ParseFromString(payload)
  except DecodeError:
    return None
  if len(UnknownFieldSet(example)) or len(UnknownFieldSet(example.features)):
    return None
  return example


def feature_map(example: Example) -> FeatureMap:
  """``{name: (kind, values)}``; float values as their float32 bit patterns, so that a NaN equals itself."""
  out = {}
  for name, feature in example.features.feature.items():
    kind = feature.WhichOneof("kind")
    values = tuple(getattr(feature, kind).value) if kind else ()
    if kind == "float_list":
      values = struct.unpack(f"<{len(values)}I", struct.pack(f"<{len(values)}f", *values))
    out[name] = (kind, values)
  return out


def show(value: Tuple[Optional[str], tuple]) -> str:
  kind, values = value
  if kind is None:
    return "a feature with no list"
  if kind == "float_list":
    values = struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}I", *values))
  shown = ", ".join(repr(v) for v in values[:8]) + (f", ... ({len(values)} values)" if len(values) > 8 else "")
  return f"{kind} [{shown}]"


def _names_class():
  """A message read like ``tf.train.Example`` that keeps every map entry's name, repeats included (a map
  keeps the last of each name): ``{repeated 1: {repeated 1: {1: name}}}``."""
  t = descriptor_pb2.FieldDescriptorProto
  fdp = descriptor_pb2.FileDescriptorProto(name="beam_job/expected_names.proto", package="beam_job_expected",
                                           syntax="proto3")
  for name, field, kind, type_name in (("Entry", "key", t.TYPE_BYTES, None),
                                       ("Entries", "feature", t.TYPE_MESSAGE, ".beam_job_expected.Entry"),
                                       ("Names", "features", t.TYPE_MESSAGE, ".beam_job_expected.Entries")):
    message = fdp.message_type.add(name=name)
    label = t.LABEL_OPTIONAL if kind == t.TYPE_BYTES else t.LABEL_REPEATED
    added = message.field.add(name=field, number=1, type=kind, label=label)
    if type_name:
      added.type_name = type_name
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("beam_job_expected.Names"))


_Names = _names_class()


def repeated_name(payload: bytes, distinct: int) -> Optional[str]:
  """The first feature name a serialized Example holds more than once, or None: its map has ``distinct``."""
  names = _Names.FromString(payload)
  if sum(len(features.feature) for features in names.features) == distinct:
    return None
  seen = set()
  for features in names.features:
    for entry in features.feature:
      if entry.key in seen:
        return entry.key.decode("utf-8", "replace")
      seen.add(entry.key)
  return None


GroupKey = Tuple[int, object]  # (0, an int64) or (1, bytes): tuples sort as README orders the groups


def group_key(payload: bytes, name: str) -> Optional[GroupKey]:
  """The record's group key: the one int64 or bytes value of its feature ``name``; None without one."""
  features = Example.FromString(payload).features.feature
  if name not in features:
    return None
  feature = features[name]
  kind = feature.WhichOneof("kind")
  if kind not in ("int64_list", "bytes_list") or len(getattr(feature, kind).value) != 1:
    return None
  return (0 if kind == "int64_list" else 1, getattr(feature, kind).value[0])


@dataclasses.dataclass
class Side:
  """The good records of one input side, by ordinal, and where each came from (for messages)."""
  payloads: List[bytes]
  files: List[Tuple[str, int, List[int]]]  # (path, first ordinal, indexes of its records left out)
  keys: Optional[List[GroupKey]] = None  # per ordinal, when read with a group feature

  def where(self, ordinal: int) -> str:
    k = bisect.bisect_right([first for _, first, _ in self.files], ordinal) - 1
    path, first, bad = self.files[k]
    index = ordinal - first
    for skipped in bad:  # the index of the (ordinal - first)-th good record of the file
      if skipped <= index:
        index += 1
    return f"{path} record {index}"


def read_side(files: Iterable[str], compression: str, group_by: Optional[str] = None,
              read: Optional[Callable[[str], Iterable[tfrecord.Record]]] = None) -> Side:
  """The side's good records: files in path order, records in file order, corrupt ones left out, and with
  ``group_by`` those without a key too. ``read``: a path's records, by default ``sources.read_file``'s."""
  payloads, placed, keys = [], [], []
  for path in sorted(files):
    bad = []
    placed.append((path, len(payloads), bad))
    for record in (read(path) if read else sources.read_file(path, compression)):
      key = None
      if record.payload is not None and parse(record.payload) is not None and (
          group_by is None or (key := group_key(record.payload, group_by)) is not None):
        payloads.append(record.payload)
        keys.append(key)
      else:
        bad.append(record.index)
  return Side(payloads, placed, None if group_by is None else keys)


@dataclasses.dataclass(frozen=True)
class Options:
  """The options that decide the records, as the summary records them (``options``)."""
  collision: str = "error"
  prefixes: Tuple[str, str] = ("", "")
  selects: Tuple[Optional[FrozenSet[str]], Optional[FrozenSet[str]]] = (None, None)
  index_features: bool = False
  self_join: Optional[str] = None  # None with two inputs
  sample_rate: float = 1.0
  seed: int = 0
  group_names: Optional[Tuple[str, str]] = None  # each side's group feature
  pairs_per_left: Optional[int] = None

  @classmethod
  def from_flags(cls, flags: dict, self_join: Optional[str]) -> "Options":
    """From the job's flags by name (``left_prefix``, ``left_features``, ...); the prefixes rename only under
    ``--collision prefix``."""
    prefix = flags["collision"] == "prefix"
    return cls(collision=flags["collision"],
               prefixes=(flags["left_prefix"], flags["right_prefix"]) if prefix else ("", ""),
               selects=tuple(None if not names else frozenset(names)
                             for names in (flags["left_features"], flags["right_features"])),
               index_features=bool(flags["index_features"]), self_join=self_join,
               sample_rate=float(flags["sample_rate"]), seed=int(flags["seed"]),
               group_names=((flags["group_by"],) * 2 if flags.get("group_by") is not None else
                            (flags["left_group_by"], flags["right_group_by"])
                            if flags.get("left_group_by") is not None else None),
               pairs_per_left=None if flags.get("pairs_per_left") is None else int(flags["pairs_per_left"]))

  @property
  def grouped(self) -> bool:
    return self.group_names is not None or self.pairs_per_left is not None

  @property
  def index_names(self) -> Tuple[str, str]:
    """``--index_features``: the prefix and ``index`` under ``--collision prefix``, else ``left_index`` and
    ``right_index``."""
    prefixes = self.prefixes if self.collision == "prefix" else ("left_", "right_")
    return prefixes[0] + "index", prefixes[1] + "index"

  @property
  def min_step(self) -> Optional[int]:
    """How far right of the left ordinal a kept right ordinal lies (None: any)."""
    return {"combinations": 1, "combinations_with_replacement": 0}.get(self.self_join)


# --- --sample_rate: each pair kept with probability rate, decided per left ordinal and block of right ordinals --

SAMPLE_BLOCK = 1 << 16
_64 = (1 << 64) - 1


def _splitmix64(state: int) -> Iterator[int]:
  while True:
    state = (state + 0x9E3779B97F4A7C15) & _64
    z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _64
    yield z ^ (z >> 31)


def _block_kept(seed: int, rate: float, left: int, block: int) -> Iterator[int]:
  """The kept right ordinals (ranks, within a group) of one block for one left ordinal: splitmix64 seeded with
  the 8-byte blake2b of (seed, left, block) as three little-endian int64s draws uniforms u in (0, 1); each kept
  one lies 1 + floor(log(u) / log(1 - rate)) after the previous one, starting just before the block."""
  state = int.from_bytes(hashlib.blake2b(struct.pack("<qqq", seed, left, block), digest_size=8).digest(), "little")
  right, end = block * SAMPLE_BLOCK - 1, (block + 1) * SAMPLE_BLOCK
  for z in _splitmix64(state):
    u = ((z >> 11) + 0.5) / 2 ** 53
    right += 1 + int(math.log(u) / math.log1p(-rate))
    if right >= end:
      return
    yield right


def sampled(seed: int, rate: float, left: int, columns: range) -> Iterator[int]:
  """The right ordinals (or ranks) of ``columns`` that ``--sample_rate`` keeps for left ordinal ``left``."""
  if rate >= 1:
    yield from columns
  elif rate > 0 and columns:
    for block in range(columns.start // SAMPLE_BLOCK, (columns.stop - 1) // SAMPLE_BLOCK + 1):
      for right in _block_kept(seed, rate, left, block):
        if right >= columns.stop:
          return
        if right >= columns.start:
          yield right


# --- --pairs_per_left K: Floyd's algorithm from a hash of (seed, left ordinal) ------------------------------


def floyd(seed: int, left: int, k: int, eligible: int) -> List[int]:
  """The candidate positions of ``[0, eligible)`` kept for left ordinal ``left``, ascending: all when
  ``k >= eligible``; else splitmix64 seeded with the 8-byte blake2b (personalised ``pairs_per_left``) of
  (seed, left) as two little-endian int64s, and for j = eligible - k .. eligible - 1 a uniform t in [0, j]
  (words at or above the last whole multiple of j + 1 drawn again), keeping t, or j when t is kept already."""
  if k >= eligible:
    return list(range(max(0, eligible)))
  digest = hashlib.blake2b(struct.pack("<qq", seed, left), digest_size=8, person=b"pairs_per_left").digest()
  words, kept = _splitmix64(int.from_bytes(digest, "little")), set()
  for j in range(eligible - k, eligible):
    bound = j + 1
    limit = (1 << 64) - (1 << 64) % bound
    word = next(words)
    while word >= limit:
      word = next(words)
    t = word % bound
    kept.add(j if t in kept else t)
  return sorted(kept)


@dataclasses.dataclass(frozen=True)
class Cell:
  """One shard's share of the product: left ordinals ``rows`` x right ordinals ``cols``."""
  rows: range
  cols: range


class Expected:
  """The expected output of a run: its cells (shards) and each one's records, from the inputs and options."""

  _CACHED = 16384  # side Examples kept for reuse across a cell's rows

  def __init__(self, left: Side, right: Optional[Side], options: Options):
    self.options = options
    self.sides = (left, left if right is None else right)
    self._examples: Dict[Tuple[int, int], Example] = {}
    self._counted: Tuple[Optional[Cell], List[int]] = (None, [])

  def cells(self, grid: dict) -> List[Cell]:
    """The non-empty cells of the summary's grid, in shard order; ValueError when the grid does not cut these
    inputs (its chunks and counts disagree)."""
    n, m = (len(side.payloads) for side in self.sides)
    rows, cols, row_chunk, col_chunk = (grid.get(k) for k in ("rows", "cols", "row_chunk", "col_chunk"))
    if not all(isinstance(v, int) and v >= 0 for v in (rows, cols, row_chunk, col_chunk)) or not (
        row_chunk and col_chunk and rows == -(-n // row_chunk) and cols == -(-m // col_chunk)):
      raise ValueError(f"the summary's grid {grid} does not cut {n:,} x {m:,} records")
    out = []
    for r in range(rows):
      for c in range(cols):
        cell = Cell(range(r * row_chunk, min(n, (r + 1) * row_chunk)),
                    range(c * col_chunk, min(m, (c + 1) * col_chunk)))
        if len(self._columns(cell, cell.rows.start)):  # the row's first left ordinal keeps the most
          out.append(cell)
    return out

  def _columns(self, cell: Cell, left: int) -> range:
    """The right ordinals of the cell the self-join keeps for ``left`` (before sampling)."""
    step = self.options.min_step
    return cell.cols if step is None else range(max(cell.cols.start, left + step), cell.cols.stop)

  def kept(self, cell: Cell, left: int) -> Iterator[int]:
    """The right ordinals paired with ``left`` in the cell, in order: the self-join's, then the sample's."""
    return sampled(self.options.seed, self.options.sample_rate, left, self._columns(cell, left))

  def _row_counts(self, cell: Cell) -> List[int]:
    """Pairs per left ordinal of the cell (of the last cell asked: ``count`` then ``pairs_at`` draw once)."""
    if self._counted[0] != cell:
      if self.options.sample_rate >= 1:
        counts = [len(self._columns(cell, left)) for left in cell.rows]
      else:
        counts = [sum(1 for _ in self.kept(cell, left)) for left in cell.rows]
      self._counted = (cell, counts)
    return self._counted[1]

  def count(self, cell: Cell) -> int:
    return sum(self._row_counts(cell))

  def pairs(self, cell: Cell) -> Iterator[Tuple[int, Pair]]:
    """Every pair of the cell with its record number in the shard."""
    return enumerate((left, right) for left in cell.rows for right in self.kept(cell, left))

  def pairs_at(self, cell: Cell, positions: Sequence[int]) -> List[Tuple[int, Pair]]:
    """The pairs at these record numbers of the shard (each below ``count``), in order."""
    ends = list(itertools.accumulate(self._row_counts(cell)))
    out = []
    for k in sorted(set(positions)):
      row = bisect.bisect_right(ends, k)
      left = cell.rows[row]
      nth = k - (ends[row - 1] if row else 0)
      if self.options.sample_rate >= 1:
        right = self._columns(cell, left)[nth]
      else:
        right = next(itertools.islice(self.kept(cell, left), nth, None))
      out.append((k, (left, right)))
    return out

  def _side(self, side: int, ordinal: int) -> Example:
    key = (side, ordinal)
    if key not in self._examples:
      if len(self._examples) >= self._CACHED:
        self._examples.clear()
      source = Example.FromString(self.sides[side].payloads[ordinal])
      example = Example()
      select, prefix = self.options.selects[side], self.options.prefixes[side]
      for name, feature in source.features.feature.items():
        if select is None or name in select:
          example.features.feature[prefix + name].CopyFrom(feature)
      if self.options.index_features:
        example.features.feature[self.options.index_names[side]].int64_list.value.append(ordinal)
      self._examples[key] = example
    return self._examples[key]

  def example(self, pair: Pair) -> Example:
    """The pair's Example: a protobuf merge, whose map entries merged last replace those merged first."""
    left, right = self._side(0, pair[0]), self._side(1, pair[1])
    merged = Example()
    for part in (right, left) if self.options.collision == "left" else (left, right):
      merged.MergeFrom(part)
    return merged

  def where(self, pair: Pair) -> str:
    return f"the pair of left {self.sides[0].where(pair[0])} and right {self.sides[1].where(pair[1])}"

  def problem(self, payload: bytes, pair: Pair) -> Optional[str]:
    """What is wrong with an output record that should be the pair's, naming the feature; None if nothing."""
    got = parse(payload)
    if got is None:
      return "is not a tf.train.Example"
    twice = repeated_name(payload, len(got.features.feature))
    if twice is not None:
      return f"holds feature {twice!r} twice"
    if self.options.collision in ("error", "prefix"):
      left, right = self._side(0, pair[0]).features.feature, self._side(1, pair[1]).features.feature
      if len(left) + len(right) != len(got.features.feature):  # (a name on both sides would be one entry)
        both = sorted(set(left) & set(right))
        if both:
          return f"feature {both[0]!r} is on both sides, which --collision {self.options.collision} refuses"
    want = self.example(pair)
    if got == want:
      return None
    have, should = feature_map(got), feature_map(want)
    for name in sorted(set(have) | set(should)):
      if name not in have:
        return f"lacks feature {name!r} ({show(should[name])})"
      if name not in should:
        return f"holds feature {name!r} ({show(have[name])}), which the merged inputs do not"
      if have[name] != should[name]:
        return f"feature {name!r} is {show(have[name])}, expected {show(should[name])}"
    return None  # equal as maps: a NaN differs from itself in a message, not in a map (bits)


# --- --group_by / --pairs_per_left: groups in key order, each one's pairs ------------------------------------

Form = Tuple[Tuple[str, Tuple[Optional[str], tuple]], ...]  # a record as its sorted feature map


def form(example: Example) -> Form:
  return tuple(sorted(feature_map(example).items()))


def record_form(payload: bytes) -> Tuple[Optional[str], Optional[Form]]:
  """An output record's form, or what is wrong with it (not an Example, a name held twice)."""
  got = parse(payload)
  if got is None:
    return "is not a tf.train.Example", None
  twice = repeated_name(payload, len(got.features.feature))
  if twice is not None:
    return f"holds feature {twice!r} twice", None
  return None, form(got)


def show_key(key: Optional[GroupKey]) -> str:
  if key is None:
    return "the one group of every record"
  kind, value = key
  return f"group {value}" if kind == 0 else f"group {value.decode('utf-8', 'backslashreplace')!r}"


class GroupedExpected(Expected):
  """The expected output of a run with ``--group_by`` (or ``--left/right_group_by``) or ``--pairs_per_left``:
  ``keys`` the groups with pairs in key order, ``group_pairs`` each one's pairs (left then right ordinal)."""

  def __init__(self, left: Side, right: Optional[Side], options: Options):
    super().__init__(left, right, options)
    self._members: Tuple[Dict[Optional[GroupKey], List[int]], ...] = ({}, {})
    for side, members in zip(self.sides, self._members):
      keys = side.keys if options.group_names is not None else [None] * len(side.payloads)
      for ordinal, key in enumerate(keys):
        members.setdefault(key, []).append(ordinal)
    self.keys = [key for key in sorted(set(self._members[0]) & set(self._members[1]))
                 if self.group_count(key)]

  def _right_ranks(self, key: Optional[GroupKey], rank: int, ordinal: int) -> Sequence[int]:
    """The ranks of the right records of the group paired with the left record of this rank and ordinal."""
    right, step = len(self._members[1][key]), self.options.min_step
    first = 0 if step is None else rank + step
    if self.options.pairs_per_left is not None:
      return [first + p for p in floyd(self.options.seed, ordinal, self.options.pairs_per_left, right - first)]
    if self.options.sample_rate >= 1:
      return range(first, right)
    return list(sampled(self.options.seed, self.options.sample_rate, ordinal, range(first, right)))

  def group_count(self, key: Optional[GroupKey]) -> int:
    right, step, k = len(self._members[1][key]), self.options.min_step, self.options.pairs_per_left
    if k is None and self.options.sample_rate < 1:
      return sum(len(self._right_ranks(key, rank, ordinal)) for rank, ordinal in enumerate(self._members[0][key]))
    total = 0
    for rank in range(len(self._members[0][key])):
      eligible = max(0, right - (0 if step is None else rank + step))
      total += eligible if k is None else min(k, eligible)
    return total

  def group_pairs(self, key: Optional[GroupKey]) -> Iterator[Pair]:
    rights = self._members[1][key]
    for rank, ordinal in enumerate(self._members[0][key]):
      for j in self._right_ranks(key, rank, ordinal):
        yield ordinal, rights[j]

  def group_forms(self, key: Optional[GroupKey]) -> List[Tuple[Pair, Form]]:
    return [(pair, form(self.example(pair))) for pair in self.group_pairs(key)]

  def is_pair(self, key: Optional[GroupKey], pair: Pair) -> bool:
    """Whether the group pairs these left and right ordinals (without listing its pairs: a large group's)."""
    lefts, rights = self._members[0][key], self._members[1][key]
    i, j = bisect.bisect_left(lefts, pair[0]), bisect.bisect_left(rights, pair[1])
    if i == len(lefts) or lefts[i] != pair[0] or j == len(rights) or rights[j] != pair[1]:
      return False
    return j in self._right_ranks(key, i, pair[0])

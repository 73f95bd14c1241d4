"""``python -m beam_job.verify --output PREFIX``: check an output against its inputs, from its summary alone.

The summary records the files the run read (with their sizes), their compression and every option; verify
reads those files again and uses those options. A flag given on the command line overrides the summary (say,
``--left`` for a copy of the inputs), and each one that disagrees with it is named, in the result and in any
failure. Verify reads both inputs in this process (no Beam), rebuilds the plan the job made, and checks every
field of the summary it can recompute (records per side, corrupt records and their dead letters, pairs, the
shard list, bytes, record bytes, strategy, grid, shuffle bytes, collisions, the schema's features), and every
shard the plan names: it exists, its frames and CRCs are valid, it holds as many records as its cell has
pairs, and (for outputs of at most ``--full_check_max`` pairs, else for ``--sample_shards`` shards picked by
``--verify_seed``) its records are byte for byte the merged pairs. Exit 0 when all hold; 1 naming the file and
what is wrong; 2 for a usage error (one line, with the flag meant when one is close).

Every shard is streamed: a compared shard is read block by block beside the frames ``cells.write_cell``
writes for its cell (byte-identical to the plain-Python reference writer, which tests assert), and only a
shard that differs is read again frame by frame beside the reference's pairs, to name the first wrong record.
Memory: both inputs (as read and prepared) and a block or two; nothing that grows with the output.

The byte comparison shares ``examples``, ``planning`` and ``cells`` with the job, so records are also checked
against ``beam_job.expected``, which shares only the file reader: every record up to ``--semantic_check_max``
pairs, else the first, the last and ``--semantic_samples`` more of each shard (``_Picking``); a grouped or K per
left output as one sequence of groups (``_GroupChecking``)."""

import argparse
import bisect
import collections
import contextlib
import functools
import gzip
import itertools
import json
import random
import struct
import sys
import tempfile
import zlib
from typing import BinaryIO, Callable, Iterator, List, Optional, Tuple

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from beam_job import (cells, cli, examples, expected, flags, grouping, output_schema, outputs, planning, sources,
                      tfrecord)
from beam_job.errors import JobError
from beam_job.stages import plan as plan_stage
from beam_job.stages import write as write_stage
from beam_job.transforms import PairOptions


class VerifyError(Exception):
  """The output is not what the inputs and options imply."""


def _reader(compression: str) -> Callable[[str], Tuple[tfrecord.Record, ...]]:
  """Each input file read once for the whole check: the job's preparation (``_read_side``) and
  ``beam_job.expected`` parse the same records (the same payload objects), from one download of each file."""

  @functools.lru_cache(maxsize=None)
  def read(path: str) -> Tuple[tfrecord.Record, ...]:
    sources.check_supported(path, compression)
    return tuple(sources.read_file(path, compression))

  return read


def _read_side(files: List[str], flag: str, compression: str, on_corrupt: str, prefix: str,
               select, group_by: Optional[str] = None, missing_group: str = "fail", side: str = "left",
               missing: Optional[list] = None, read=None) -> Tuple[planning.SideStats, list]:
  """A side's stats and records ``(path, index, prepared)``, or ``(path, index, prepared, key)`` with
  ``group_by``; records without a key fail as in the job or, skipped, go to ``missing`` (and ``bad``)."""
  good, bad, records, size, keys, groups, shapes, sizes = {}, {}, [], 0, set(), {}, {}, {}
  read = _reader(compression) if read is None else read
  for path in files:
    for record in read(path):
      problem = record.problem
      if record.payload is not None:
        key = None
        try:
          if group_by is None:
            prepared = examples.prepare(record.payload, prefix, select, shapes)
          else:
            prepared, key = examples.prepare_keyed(record.payload, group_by, prefix, select, shapes)
        except grouping.MissingKey as e:
          if missing_group == "fail":
            raise JobError(f"{side} input {path} record {record.index}: {e}; --missing_group skip leaves such "
                           "records out") from None
          bad.setdefault(path, []).append(record.index)
          if missing is not None:
            missing.append((path, record.index))
          continue
        except ValueError as e:
          problem = str(e)
        else:
          good[path] = good.get(path, 0) + 1
          size += len(prepared.payload)
          planning.tally_size(sizes, path, record.index, len(prepared.payload))
          keys.update(prepared.keys)
          if key is None:
            records.append((path, record.index, prepared))
          else:
            records.append((path, record.index, prepared, key))
            groups[key] = groups.get(key, 0) + 1
          continue
      if on_corrupt == "fail":
        raise JobError(sources.corrupt_input(path, record.index, record.offset, problem, record.rest_lost,
                                             sources.detect_compression(path, compression)))
      bad.setdefault(path, []).append(record.index)
  stats = planning.SideStats(good, {s: tuple(sorted(i)) for s, i in bad.items()}, size, frozenset(keys),
                             features=output_schema.side_features(shapes), groups=groups, sizes=sizes,
                             largest=max((len(r[2].payload) for r in records), default=0))  # as the job's
  return stats, records


def _ordered(records, plan: planning.Plan, side: int, index_name: Optional[str]):
  out = []
  for source, index, prepared in records:
    ordinal = plan.ordinal(side, source, index)
    out.append((ordinal, examples.with_int64(prepared, index_name, ordinal) if index_name else prepared))
  return sorted(out, key=lambda m: m[0])


# Raised by a gzip stream whose bytes are damaged: a cut-off member, a bad CRC or length, bad deflate data.
_GZIP_BROKEN = (EOFError, gzip.BadGzipFile, zlib.error)


@contextlib.contextmanager
def _open(path: str, compression: str) -> Iterator[BinaryIO]:
  with contextlib.ExitStack() as stack:
    raw = stack.enter_context(FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED))
    yield stack.enter_context(gzip.GzipFile(fileobj=raw)) if compression == "gzip" else raw


def _count(path: str, compression: str, picking: Optional["_Picking"] = None) -> Tuple[int, int]:
  """The shard's records and their framed bytes, read one frame at a time; a bad frame or a broken gzip stream
  is a VerifyError. ``picking`` is handed every record."""
  count = size = 0
  with _open(path, compression) as stream:
    try:
      for record in tfrecord.read_frames(stream):
        if record.payload is None:
          raise VerifyError(f"{path}: record {record.index} (byte {record.offset}): {record.problem}")
        if picking is not None:
          picking.take(record.index, record.payload)
        count += 1
        size += len(record.payload) + tfrecord.HEADER_BYTES + tfrecord.FOOTER_BYTES
    except _GZIP_BROKEN as e:
      raise VerifyError(f"{path}: the gzip stream is broken after record {count}: {e}") from None
  return count, size


class _Comparing:
  """A sink for ``cells.write_cell`` that compares each block written with as many next bytes of a shard.

  It holds one block at a time, so a shard is checked in the memory of a block. After the first difference
  (or a damaged stream) it stops reading and only counts, so the writer still returns the cell's pairs.
  """

  def __init__(self, stream: BinaryIO, picking: Optional["_Picking"] = None):
    self._stream = stream
    self.same = True
    self._picking = picking

  def _read(self, size: int) -> bytes:
    data = self._stream.read(size)
    if len(data) == size or not data:
      return data
    pieces, got = [data], len(data)
    while got < size:
      piece = self._stream.read(size - got)
      if not piece:
        break
      pieces.append(piece)
      got += len(piece)
    return b"".join(pieces)

  def write(self, data) -> None:
    if self.same and data:
      try:
        self.same = self._read(len(data)) == data
      except _GZIP_BROKEN:
        self.same = False
      if self.same and self._picking is not None:
        self._picking.feed(data)

  def ended(self) -> bool:
    """True when the bytes so far were all equal and the shard has nothing more (its gzip trailer checked)."""
    if self.same:
      try:
        self.same = not self._stream.read(1)
      except _GZIP_BROKEN:
        self.same = False
    return self.same


def _first_difference(path: str, compression: str, write: Callable[[BinaryIO], object]) -> int:
  """The number of the first record of the shard that differs from what ``write`` writes, which goes to a
  temporary file (a failure path only: memory stays a frame or two)."""
  with tempfile.TemporaryFile() as expected:
    write(expected)
    expected.seek(0)
    with _open(path, compression) as stream:
      pairs = itertools.zip_longest(tfrecord.read_frames(stream), tfrecord.read_frames(expected))
      for k, (found, wanted) in enumerate(pairs):
        if found is None or wanted is None or found.payload != wanted.payload:
          return k
  return -1


def _compare(path: str, compression: str, rows: list, cols: list, merge: dict,
             picking: Optional["_Picking"] = None) -> Tuple[int, int]:
  """Checks that the shard is byte for byte the cell's frames; returns its records and their framed bytes.

  The expected frames come from ``cells.write_cell``, byte-identical to the reference writer (tests assert
  it), straight into a comparing sink: neither the shard nor the expected cell is ever held whole. Only when
  they differ is the shard read again, frame by frame beside the reference's pairs, to say what is wrong.
  """
  with _open(path, compression) as stream:
    sink = _Comparing(stream, picking)
    pairs, size = cells.write_cell(rows, cols, sink, **merge)
    if sink.ended():
      return pairs, size
  count, _ = _count(path, compression)
  if count != pairs:
    raise VerifyError(f"{path} holds {count:,} records, expected {pairs:,} (records dropped or duplicated)")
  with _open(path, compression) as stream:
    expected = cells.pair_examples(rows, cols, **merge)
    for k, (record, want) in enumerate(zip(tfrecord.read_frames(stream), expected)):
      if record.payload != want:
        raise VerifyError(f"{path}: record {k} is not the expected merged pair")
  raise RuntimeError(f"{path}: every record is the reference's merged pair, but the bytes differ from "
                     "cells.write_cell: the native frame writer disagrees with the reference")


_U64 = struct.Struct("<Q")


class _Picking:
  """Checks chosen records of a shard against ``beam_job.expected`` as the shard streams past.

  ``wanted`` gives ``(record number, pair)`` in increasing order. A compared shard's bytes come in blocks
  (``feed``): only frame headers are read to count records, and only a wanted frame is parsed; a counted
  shard's records come one by one (``take``). The first wrong record is kept in ``problem``; checking stops
  there, and so does walking the frames once nothing more is wanted.
  """

  def __init__(self, path: str, independent: expected.Expected, wanted: Iterator[Tuple[int, expected.Pair]]):
    self._path, self._independent, self._wanted = path, independent, wanted
    self._next = next(wanted, None)
    self._index = self._skip = 0  # the record next to start; bytes of the current frame still to pass
    self._carry = b""  # the start of a frame that a block cut (its header, or a wanted frame)
    self.problem: Optional[str] = None
    self.checked = 0

  def take(self, index: int, payload: bytes) -> None:
    if self._next is not None and self._next[0] == index:
      found = self._independent.problem(payload, self._next[1])
      self.checked += 1
      if found is not None:
        self.problem = f"{self._path}: record {index}, {self._independent.where(self._next[1])}: {found}"
        self._next = None
        return
      self._next = next(self._wanted, None)

  def feed(self, data: bytes) -> None:
    if self._next is None:
      return
    if self._carry:
      data, self._carry = self._carry + data, b""
    at, size, index, unpack = self._skip, len(data), self._index, _U64.unpack_from
    while at + 8 <= size and self._next is not None:
      end = at + unpack(data, at)[0] + tfrecord.HEADER_BYTES + tfrecord.FOOTER_BYTES
      if index == self._next[0]:
        if end > size:
          break  # the rest of the wanted frame is in the next block
        self.take(index, data[at + tfrecord.HEADER_BYTES:end - tfrecord.FOOTER_BYTES])
      at = end
      index += 1
    self._index = index
    if at > size:
      self._skip = at - size
    else:
      self._skip, self._carry = 0, data[at:]


def _independent(left_files: List[str], right_files: Optional[List[str]], settings: dict,
                 self_join: Optional[str], summary: dict, read) -> Tuple[expected.Expected, List[expected.Cell]]:
  """The expected output by ``beam_job.expected`` alone (none of the job's preparing, planning or merging):
  the inputs (read once, shared with the job's preparation), the options verify checks with, and the cells of
  the summary's grid."""
  left = expected.read_side(left_files, settings["compression"], read=read)
  right = None if right_files is None else expected.read_side(right_files, settings["compression"], read=read)
  independent = expected.Expected(left, right, expected.Options.from_flags(settings, self_join))
  for side, field in zip(independent.sides, ("left_records", "right_records")):
    if len(side.payloads) != summary.get(field):
      raise VerifyError(f"the summary says {field} {json.dumps(summary.get(field))}, the inputs read "
                        f"independently of the job's code hold {len(side.payloads):,} good records")
  try:
    return independent, independent.cells(summary.get("grid") or {})
  except ValueError as e:
    raise VerifyError(str(e)) from None


def _wanted(independent: expected.Expected, cell: expected.Cell, pairs: int, every: bool, samples: int,
            seed: str) -> Iterator[Tuple[int, expected.Pair]]:
  """The records of a shard to check independently: all, or the first, the last and ``samples`` more."""
  if every:
    return independent.pairs(cell)
  positions = {0, pairs - 1} | set(random.Random(seed).sample(range(pairs), min(samples, pairs)))
  return iter(independent.pairs_at(cell, [k for k in positions if 0 <= k < pairs]))


def _independent_grouped(left_files: List[str], right_files: Optional[List[str]], settings: dict,
                         self_join: Optional[str], summary: dict, read) -> expected.GroupedExpected:
  """The expected grouped (or K per left) output by ``beam_job.expected`` alone, its counts checked against the
  summary's."""
  options = expected.Options.from_flags(settings, self_join)
  names = options.group_names or (None, None)
  left = expected.read_side(left_files, settings["compression"], names[0], read=read)
  right = None if right_files is None else expected.read_side(right_files, settings["compression"], names[1],
                                                               read=read)
  independent = expected.GroupedExpected(left, right, options)
  for side, field in zip(independent.sides, ("left_records", "right_records")):
    if len(side.payloads) != summary.get(field):
      raise VerifyError(f"the summary says {field} {json.dumps(summary.get(field))}, the inputs read "
                        f"independently of the job's code hold {len(side.payloads):,} good records")
  if options.group_names is not None:
    groups = summary.get("groups") if isinstance(summary.get("groups"), dict) else {}
    if groups.get("groups_with_pairs") != len(independent.keys):
      raise VerifyError(f"the summary says groups_with_pairs {json.dumps(groups.get('groups_with_pairs'))}, the "
                        f"inputs read independently of the job's code have {len(independent.keys):,}")
  return independent


def _shown(value) -> str:
  return "absent" if value is None else expected.show(value)


class _GroupChecking:
  """Checks a grouped output against ``beam_job.expected``: the shards in order are one sequence, each group's
  pairs in key order (the summary does not say where a heavy group was cut, so shards are not placed one by one).

  Each checked group's records must be its expected pairs as a multiset (a record routed to another group, a
  draw one position off, a pair lost or doubled: the feature maps differ), and inside one shard in left then
  right ordinal order (among records that only one pair of the group gives). Every group is checked up to
  ``--semantic_check_max`` pairs; beyond, the first, the last and ``--semantic_samples`` more groups (by
  ``--verify_seed``): those of at most that many pairs whole, and of a larger one (whose pairs are not listed),
  with ``--index_features``, its first, last and ``--semantic_samples`` more records, each a pair of the group
  (by the ordinals it names) and that pair's merged features, none twice. Only checked records are parsed."""

  def __init__(self, independent: expected.GroupedExpected, args):
    self._independent = independent
    counts = [independent.group_count(key) for key in independent.keys]
    self._starts = [0, *itertools.accumulate(counts)]
    self.total = self._starts[-1]
    groups = range(len(counts))
    self.sampled: List[Tuple[int, List[int]]] = []  # (group, positions) of the large groups checked in part
    if self.total <= args.semantic_check_max:
      self.checked = list(groups)
    else:
      picked = {0, len(counts) - 1} | set(random.Random(args.verify_seed).sample(groups, min(args.semantic_samples,
                                                                                             len(counts))))
      picked = sorted(g for g in picked if 0 <= g < len(counts))
      self.checked = [g for g in picked if counts[g] <= args.semantic_check_max]
      if independent.options.index_features:
        for g in picked:
          if counts[g] > args.semantic_check_max:
            start, stop = self._starts[g], self._starts[g + 1]
            some = random.Random(f"{args.verify_seed}/{g}").sample(range(start, stop),
                                                                   min(args.semantic_samples, stop - start))
            self.sampled.append((g, sorted({start, stop - 1, *some})))
    ranges = [(g, range(self._starts[g], self._starts[g + 1])) for g in self.checked] + self.sampled
    self._positions = (k for _, positions in sorted(ranges) for k in positions)
    self._pending: Optional[int] = None  # a wanted position that the shard before did not reach
    self._forms = {}  # output position -> form
    self._bases: List[int] = []  # the first position of each shard
    self._paths: List[str] = []
    self._picking: Optional[_Picking] = None

  def shard(self, path: str, base: int) -> _Picking:
    """The picker of the shard whose first record is output position ``base``."""
    self._bases.append(base)
    self._paths.append(path)
    head = [] if self._pending is None else [self._pending]
    wanted = ((k - base, k) for k in itertools.chain(head, self._positions))
    self._picking = _Picking(path, self, wanted)
    return self._picking

  def ended(self) -> None:
    """After a shard: a wanted position it did not reach waits for the next one."""
    waiting = self._picking._next  # pylint: disable=protected-access
    self._pending = None if waiting is None else waiting[1]

  def problem(self, payload: bytes, position: int) -> Optional[str]:
    found, shape = expected.record_form(payload)
    if found is None:
      self._forms[position] = shape
    return found

  def where(self, position: int) -> str:
    return f"a record of {expected.show_key(self._independent.keys[self._group(position)])}"

  def _group(self, position: int) -> int:
    return bisect.bisect_right(self._starts, position) - 1

  def _at(self, position: int) -> str:
    k = bisect.bisect_right(self._bases, position) - 1
    return f"{self._paths[k]}: record {position - self._bases[k]}"

  def check(self, total: int) -> None:
    """After the last shard: the output's count, then each checked group's records."""
    if total != self.total:
      raise VerifyError(f"the output holds {total:,} records; the inputs read independently of the job's code give "
                        f"{self.total:,} pairs within groups")
    independent = self._independent
    for g in self.checked:
      key, start, stop = independent.keys[g], self._starts[g], self._starts[g + 1]
      pairs = independent.group_forms(key)
      want = collections.Counter(shape for _, shape in pairs)
      have = collections.Counter(self._forms[k] for k in range(start, stop))
      group = f"{expected.show_key(key)} (output records {start:,}..{stop - 1:,})"
      for pair, shape in pairs:
        if have[shape] < want[shape]:
          raise VerifyError(f"{group} lacks {independent.where(pair)}"
                            + (f" ({want[shape] - have[shape]} of its {want[shape]})" if want[shape] > 1 else ""))
      for k in range(start, stop):
        if have[self._forms[k]] > want[self._forms[k]]:
          kind = "no pair of its group" if not want[self._forms[k]] else "a pair of its group held again"
          raise VerifyError(f"{self._at(k)}: {kind} ({group})")
      only = {shape: pair for pair, shape in pairs if want[shape] == 1}
      before = (None, None)  # (shard, pair) of the last record that names its pair
      for k in range(start, stop):
        pair = only.get(self._forms[k])
        if pair is None:
          continue
        shard = bisect.bisect_right(self._bases, k)
        if before[0] == shard and before[1] > pair:
          raise VerifyError(f"{self._at(k)}, {independent.where(pair)}, comes after {independent.where(before[1])}"
                            f" in its shard: a group's pairs go by left then right ordinal in a cell ({group})")
        before = (shard, pair)
      for k in range(start, stop):
        del self._forms[k]
    for g, positions in self.sampled:
      self._check_sampled(g, positions)

  def _check_sampled(self, g: int, positions: List[int]) -> None:
    """Records of a large group: each names (``--index_features``) a pair of the group, once, and is its merge."""
    independent = self._independent
    key, names, seen = independent.keys[g], independent.options.index_names, {}
    group = expected.show_key(key)
    for k in positions:
      have = dict(self._forms.pop(k))
      ordinals = []
      for name in names:
        kind, values = have.get(name, (None, ()))
        if kind != "int64_list" or len(values) != 1:
          raise VerifyError(f"{self._at(k)}: its feature {name!r} is not one int64 (--index_features), "
                            f"in {group}")
        ordinals.append(values[0])
      pair = tuple(ordinals)
      if not independent.is_pair(key, pair):
        raise VerifyError(f"{self._at(k)}: names left ordinal {pair[0]} and right ordinal {pair[1]}, no pair of "
                          f"{group}")
      if pair in seen:
        raise VerifyError(f"{self._at(k)}: {independent.where(pair)} again (also {self._at(seen[pair])})")
      seen[pair] = k
      should = dict(expected.form(independent.example(pair)))
      for name in sorted(set(have) | set(should)):
        if have.get(name) != should.get(name):
          raise VerifyError(f"{self._at(k)}, {independent.where(pair)}: feature {name!r} is "
                            f"{_shown(have.get(name))}, expected {_shown(should.get(name))}")

  def said(self) -> str:
    if len(self.checked) == len(self._starts) - 1:
      return "every record"
    out = (f"{len(self.checked):,} of {len(self._starts) - 1:,} groups "
           f"({sum(self._starts[g + 1] - self._starts[g] for g in self.checked):,} records)")
    if self.sampled:
      out += (f" and {sum(len(p) for _, p in self.sampled):,} records of {len(self.sampled):,} larger group(s) "
              f"by their index features")
    return out


class UsageError(Exception):
  """The command line is wrong (exit 2)."""


# The summary's "options", one per flag of the job (``PairOptions.summary``), and the flags its "inputs" holds.
_OPTIONS = ("collision", "left_prefix", "right_prefix", "self_join", "on_corrupt", "max_pairs", "strategy",
            "target_shard_mb", "output_compression", "left_features", "right_features", "index_features",
            "sample_rate", "seed", "group_by", "left_group_by", "right_group_by", "missing_group", "pairs_per_left")
_INPUTS = ("left", "right", "compression")


def _parse(argv: Optional[List[str]]):
  """The command line: verify's own flags, and the job's flags that were given (``given``), nothing else."""
  parser = cli.make_parser(left_required=False)
  parser.prog = "python -m beam_job.verify"
  parser.add_argument("--full_check_max", type=flags.count, default=5_000_000,
                      help="Compare every record when the output has at most this many pairs.")
  parser.add_argument("--sample_shards", type=flags.count, default=4, help="Shards compared record by record otherwise.")
  parser.add_argument("--verify_seed", type=int, default=0)
  parser.add_argument("--semantic_check_max", type=flags.count, default=100_000,
                      help="Parse every record and compare it with the independent definition of the output "
                           "when the output has at most this many pairs.")
  parser.add_argument("--semantic_samples", type=flags.count, default=32,
                      help="Otherwise, records per shard so compared besides its first and last, picked by "
                           "--verify_seed.")
  defaults = {dest: parser.get_default(dest) for dest in _OPTIONS + _INPUTS}
  for action in parser._actions:  # pylint: disable=protected-access  # (set_defaults would set SUPPRESS itself)
    if action.dest in defaults:
      action.default = argparse.SUPPRESS  # an absent flag stays out of ``args``
  try:
    args, unknown = parser.parse_known_args(argv)
  except JobError as e:
    raise UsageError(str(e)) from None
  if unknown:
    raise UsageError(cli.unknown_flag(unknown[0], [parser]) if unknown[0].startswith("-")
                     else f"unexpected argument {unknown[0]!r}")
  given = {dest: getattr(args, dest) for dest in defaults if hasattr(args, dest)}
  return args, given, defaults


def _read_summary(output: str) -> dict:
  path = outputs.summary_path(output)
  if not FileSystems.exists(path):
    raise VerifyError(f"missing summary {path}: the run did not finish")
  with FileSystems.open(path) as f:
    text = f.read()
  try:
    summary = json.loads(text)
  except ValueError as e:
    raise VerifyError(f"{path} is not JSON ({e})") from None
  if not isinstance(summary, dict):
    raise VerifyError(f"{path} is not a JSON object")
  # The parts verify reads its settings from: a damaged summary is a one-line failure, not a traceback.
  inputs = summary.get("inputs")
  shapes = [("options", summary.get("options", {}), dict), ("inputs", inputs, (dict, type(None)))]
  for side in ("left", "right"):
    recorded = inputs.get(side) if isinstance(inputs, dict) else None
    if recorded is not None:
      shapes += [(f"inputs.{side}", recorded, dict)]
      if isinstance(recorded, dict):
        shapes += [(f"inputs.{side}.files", recorded.get("files"), dict),
                   (f"inputs.{side}.patterns", recorded.get("patterns"), list)]
  for field, value, kind in shapes:
    if not isinstance(value, kind):
      raise VerifyError(f"{path}: its field {field} is missing or malformed")
  return summary


def _recorded(summary: dict, defaults: dict) -> dict:
  """The flags of the run, as the summary records them (an older summary's missing ones at their defaults)."""
  recorded = {dest: defaults[dest] for dest in _OPTIONS}
  for dest, value in (summary.get("options") or {}).items():
    if dest in ("left_features", "right_features"):
      value = tuple(value) or None
    elif dest in ("self_join", "group_by", "left_group_by", "right_group_by"):
      value = value or None
    if dest in recorded:
      recorded[dest] = value
  recorded["compression"] = (summary.get("inputs") or {}).get("compression", defaults["compression"])
  return recorded


def _show(value) -> str:
  if isinstance(value, (tuple, list)):
    return ",".join(value)
  return "(none)" if value is None else str(value)


def _settings(summary: dict, given: dict, defaults: dict) -> Tuple[dict, List[str]]:
  """The flags verify checks with: the summary's, overridden by those given; and the disagreements, named."""
  recorded = _recorded(summary, defaults)
  settings = {**recorded, **{dest: value for dest, value in given.items() if dest in recorded}}
  differ = []
  for dest, value in given.items():
    if dest not in recorded or value == recorded[dest]:
      continue
    if dest.endswith("_prefix") and settings["collision"] != "prefix":
      continue  # the prefixes rename nothing then
    differ.append(f"--{dest} {_show(value)} (the run: {_show(recorded[dest])})")
  return settings, differ


def _files(side: str, given: dict, summary: dict, differ: List[str]) -> Optional[List[str]]:
  """The input files of one side (None: no right side, a self-join): those matched by the flag given, else
  those the summary records, each checked to be still there with the size the run read."""
  flag = f"--{side}"
  inputs = summary.get("inputs")
  recorded = inputs.get(side) if inputs else None
  if side in given:
    try:
      files = sources.match_files(sources.split_patterns(given[side]), flag)
    except JobError as e:  # a pattern given on the command line that matches nothing: the command is wrong
      raise UsageError(str(e)) from None
    if inputs and (recorded is None or sorted(recorded["files"]) != files):
      read = f"{len(recorded['files'])} file(s) of {_show(recorded['patterns'])}" if recorded else "no such side"
      differ.append(f"{flag} {given[side]} ({len(files)} file(s); the run read {read})")
    return files
  if inputs is None:
    if side == "left":
      raise VerifyError(f"the summary of {summary.get('output')} does not record its inputs (a run of an older "
                        "version): give --left, and --right if the run had one")
    return None
  if recorded is None:
    return None
  for path, size in recorded["files"].items():
    now = sources.match_sizes([outputs.escape_glob(path)], flag).get(path) if FileSystems.exists(path) else None
    if now is None:
      raise VerifyError(f"input {path}, read by the run, is gone (give {flag} to verify against other files)")
    if now != size:
      raise VerifyError(f"input {path} has changed since the run: {now:,} bytes, the run read {size:,}")
  return sorted(recorded["files"])


def _moved(summary: dict, field: str, output: str):
  """A path of the summary (or a list of them) under ``output`` instead of the run's own prefix."""
  value, recorded = summary.get(field), summary.get("output")
  if not isinstance(recorded, str):
    return value
  move = lambda path: output + path[len(recorded):] if isinstance(path, str) and path.startswith(recorded) else path
  return [move(path) for path in value] if isinstance(value, list) else move(value)


def _expect(summary: dict, field: str, value) -> None:
  said = summary.get(field)
  if said == value:
    return
  if isinstance(value, list) and isinstance(said, list) and len(value) > 1:  # name the first difference only
    at = next((k for k, (a, b) in enumerate(zip(said, value)) if a != b), min(len(said), len(value)))
    said_at = json.dumps(said[at]) if at < len(said) else "nothing more"
    value_at = json.dumps(value[at]) if at < len(value) else "nothing more"
    raise VerifyError(f"the summary lists {len(said)} {field}, the output and inputs give {len(value)}: item {at} "
                      f"is {said_at}, expected {value_at}")
  if said != value:
    raise VerifyError(f"the summary says {field} {json.dumps(summary.get(field))}, the output and inputs give "
                      f"{json.dumps(value)}")


def _check_schema(path: str, names) -> None:
  """The schema is there, a TFMD Schema, and names every feature of the output."""
  if not FileSystems.exists(path):
    raise VerifyError(f"missing schema {path}")
  with FileSystems.open(path) as f:
    text = f.read().decode("utf-8", "replace")
  try:
    schema = text_format.Parse(text, schema_pb2.Schema())
  except text_format.ParseError as e:
    raise VerifyError(f"{path} is not a TFMD schema ({e})") from None
  listed = {feature.name for feature in schema.feature}
  if listed != set(names):
    missing, extra = sorted(set(names) - listed), sorted(listed - set(names))
    raise VerifyError(f"{path} " + (f"lacks feature {missing[0]!r} of the output" if missing
                                    else f"lists feature {extra[0]!r}, which no output record holds"))


def _check_dead_letters(summary: dict, output: str, corrupt: List[Tuple[str, int]]) -> None:
  """Corrupt records: the summary's list is the inputs' (file and record), and so is the dead-letter file."""
  listed = [(c.get("file"), c.get("record")) for c in summary.get("corrupt") or []]
  if listed != corrupt:
    raise VerifyError(f"the summary lists {len(listed)} corrupt record(s), the inputs hold {len(corrupt)}"
                      + (f" (first: {corrupt[0][0]} record {corrupt[0][1]})" if corrupt else ""))
  path = outputs.dead_letter_path(output)
  if not corrupt:
    return
  if summary.get("dead_letter") != path or not FileSystems.exists(path):
    raise VerifyError(f"missing dead-letter list {path} of {len(corrupt)} corrupt record(s)")
  with FileSystems.open(path) as f:
    lines = f.read().decode("utf-8", "replace").splitlines()
  try:
    letters = [(entry["file"], entry["record"]) for entry in map(json.loads, lines)]
  except (ValueError, KeyError, TypeError) as e:
    raise VerifyError(f"{path} is not one JSON object per corrupt record ({e})") from None
  if letters != corrupt:
    raise VerifyError(f"{path} lists {len(letters)} corrupt record(s), the inputs hold {len(corrupt)}")


def _check_published(summary: dict, output: str, plan, names: List[str], corrupt: List[Tuple[str, int]],
                     fields: list) -> dict:
  """What the run published, against the plan rebuilt here: the summary's fields (the plan's and ``fields``),
  its paths, the dead letters and the listing of the prefix (every shard named, no other). Returns the files
  the prefix holds, by path."""
  for field, value in [("left_records", plan.left_count), ("right_records", plan.right_count),
                       ("strategy", plan.strategy), ("grid", plan.grid), ("shuffle_bytes", plan.shuffle_bytes),
                       ("collisions", list(plan.collisions))] + fields:
    _expect(summary, field, value)
  # Paths as the run wrote them: the output may have been copied under another prefix since.
  moved = {field: _moved(summary, field, output) for field in ("shards", "schema", "dead_letter")}
  for field, value in (("shards", names), ("schema", outputs.schema_path(output))):
    _expect(moved, field, value)
  _check_dead_letters(dict(summary, **moved), output, corrupt)
  owned = {o.path: o for o in outputs.list_owned(output)}
  for name in names:
    if name not in owned:
      raise VerifyError(f"missing shard {name}")
  extra = [path for path, o in owned.items() if o.kind == "shard" and path not in names]
  if extra:
    raise VerifyError(f"unexpected shard {extra[0]} (the plan has {plan.shard_count} shards)")
  return owned


def verify(argv: Optional[List[str]] = None) -> str:
  args, given, defaults = _parse(argv)
  output = outputs.normalize(args.output)
  summary = _read_summary(output)
  settings, differ = _settings(summary, given, defaults)
  try:
    return _verify(output, summary, given, settings, differ, args)
  except (VerifyError, JobError) as e:
    if differ:
      raise VerifyError(f"{e} (flags that differ from the summary: {'; '.join(differ)})") from None
    raise


def _verify(output: str, summary: dict, given: dict, settings: dict, differ: List[str], args) -> str:
  left_files = _files("left", given, summary, differ)
  right_files = _files("right", given, summary, differ)
  try:
    options = PairOptions(output, **{dest: settings[dest] for dest in _OPTIONS if dest != "self_join"},
                          self_join=settings["self_join"] or "product")
  except JobError as e:  # flags that contradict each other (or the summary's): a usage error, not a bad output
    raise UsageError(str(e) + (f" (flags that differ from the summary: {'; '.join(differ)})" if differ else "")) \
        from None
  self_join = None if right_files is not None else options.self_join
  compression, on_corrupt = settings["compression"], settings["on_corrupt"]
  if options.grouped:
    return _verify_grouped(output, summary, options, self_join, left_files, right_files, compression, differ, args,
                           settings)
  read = _reader(compression)
  left_stats, left = _read_side(left_files, "--left", compression, on_corrupt, options.prefixes[0],
                                options.selects[0], read=read)
  right_stats, right = _read_side(right_files or left_files, "--right" if right_files else "--left", compression,
                                  on_corrupt, options.prefixes[1], options.selects[1], read=read)
  plan = planning.make_plan(left_stats, right_stats, **options.plan_options(self_join))
  index_names = options.index_names()
  left, right = _ordered(left, plan, 0, index_names[0]), _ordered(right, plan, 1, index_names[1])
  gzipped = options.output_compression
  names = [outputs.shard_name(output, s, plan.shard_count, gzipped) for s in range(plan.shard_count)]
  corrupt = sorted((source, index) for stats in ((left_stats,) if self_join else (left_stats, right_stats))
                   for source, indexes in stats.bad.items() for index in indexes)
  owned = _check_published(summary, output, plan, names, corrupt, [("corrupt_records", len(corrupt))])
  sampled = plan.sample_rate < 1
  full = plan.pairs <= args.full_check_max
  plan_cells = plan.cells
  independent, expected_cells = _independent(left_files, right_files, settings, self_join, summary, read)
  if len(expected_cells) != len(plan_cells):
    raise VerifyError(f"the summary's grid {json.dumps(summary.get('grid'))} has {len(expected_cells):,} cells "
                      f"with pairs, the plan {len(plan_cells):,}")
  every = plan.pairs <= args.semantic_check_max
  compare = set(range(len(plan_cells))) if full else set(
      random.Random(args.verify_seed).sample(range(len(plan_cells)), min(args.sample_shards, len(plan_cells))))
  merge = {"self_join": self_join, "collision": options.collision, "collisions": plan.collisions,
           "sample": (plan.sample_rate, options.seed) if sampled else None}
  total = record_bytes = checked = 0
  for shard, (row, col, pairs) in enumerate(plan_cells):
    cell = expected_cells[shard]
    want = independent.count(cell)
    picking = _Picking(names[shard], independent, _wanted(independent, cell, want, every, args.semantic_samples,
                                                           f"{args.verify_seed}/{shard}"))
    if shard not in compare and not sampled:
      count, size = _count(names[shard], gzipped, picking)
      if count != pairs:
        raise VerifyError(f"{names[shard]} holds {count:,} records, expected {pairs:,}")
    else:
      rows, cols = plan.members(row, col)
      count, size = _compare(names[shard], gzipped, left[rows.start:rows.stop], right[cols.start:cols.stop], merge,
                             picking)
    if picking.problem:
      raise VerifyError(picking.problem)
    checked += picking.checked
    if count != want:
      raise VerifyError(f"{names[shard]} holds {count:,} records; its cell of the summary's grid (left ordinals "
                        f"{cell.rows.start}..{cell.rows.stop - 1} x right ordinals {cell.cols.start}.."
                        f"{cell.cols.stop - 1}) has {want:,} pairs")
    total += count
    record_bytes += size
  if not plan_cells and _count(names[0], gzipped)[0]:
    raise VerifyError(f"{names[0]} should be empty: the job has no pairs")
  _expect(summary, "pairs", total)
  _check_schema(outputs.schema_path(output), set(left_stats.keys) | set(right_stats.keys) |
                {name for name in index_names if name})
  _expect(summary, "record_bytes", record_bytes)
  _expect(summary, "bytes", sum(owned[name].size for name in names))
  how = "every record compared" if full or sampled else f"{len(compare)} of {len(plan_cells)} shards compared"
  how += f"; {'every record' if every else f'{checked:,} records'} checked against the inputs independently"
  overrides = f" (flags that differ from the summary: {'; '.join(differ)})" if differ else ""
  return f"verified {total:,} pairs in {len(names)} shard(s) under {output}: {how}{overrides}"


def _by_group(records, plan: planning.Plan, side: int, index_name: Optional[str]) -> dict:
  """A side's records per group key (``grouping.WHOLE`` without --group_by), each group's sorted by ordinal."""
  groups = {}
  for record in records:
    source, index, prepared = record[:3]
    ordinal = plan.ordinal(side, source, index)
    prepared = examples.with_int64(prepared, index_name, ordinal) if index_name else prepared
    groups.setdefault(record[3] if len(record) == 4 else grouping.WHOLE, []).append((ordinal, prepared))
  for members in groups.values():
    members.sort(key=lambda m: m[0])
  return groups


def _verify_grouped(output: str, summary: dict, options: PairOptions, self_join: Optional[str], left_files,
                    right_files, compression: str, differ: List[str], args, settings: dict) -> str:
  """--group_by / --pairs_per_left: the job's grouped plan rebuilt from the inputs, the summary's fields checked
  against it, and each shard compared byte for byte with what the job's writer (``write.write_member``) gives
  for its cell (up to ``--full_check_max`` pairs; beyond, the records of the other shards are counted where the
  plan knows the count). Records are also checked against ``beam_job.expected`` (``_GroupChecking``)."""
  names_by = options.group_names or (None, None)
  on_corrupt, missing = options.on_corrupt, []
  read = _reader(compression)
  left_stats, left = _read_side(left_files, "--left", compression, on_corrupt, options.prefixes[0],
                                options.selects[0], names_by[0], options.missing_group, "left", missing, read)
  right_missing = [] if right_files else None
  right_stats, right = _read_side(right_files or left_files, "--right" if right_files else "--left", compression,
                                  on_corrupt, options.prefixes[1], options.selects[1], names_by[1],
                                  options.missing_group, "right" if right_files else "left", right_missing, read)
  missing += right_missing or []
  plan = plan_stage._plan(  # pylint: disable=protected-access
      (left_stats, right_stats), options.plan_options(self_join),
      grouped=plan_stage._grouped_options(options, self_join))  # pylint: disable=protected-access
  grouped, index_names = plan.grouped, options.index_names()
  lefts, rights = _by_group(left, plan, 0, index_names[0]), _by_group(right, plan, 1, index_names[1])
  gzipped = options.output_compression
  names = [outputs.shard_name(output, s, plan.shard_count, gzipped) for s in range(plan.shard_count)]
  corrupt = sorted((source, index) for stats in ((left_stats,) if self_join else (left_stats, right_stats))
                   for source, indexes in stats.bad.items() for index in indexes)
  fields = [("corrupt_records", len(corrupt) - len(missing))]
  if options.group_names is not None:
    fields += [("missing_group_records", len(missing)), ("groups", json.loads(json.dumps(grouped.summary())))]
  owned = _check_published(summary, output, plan, names, corrupt, fields)
  full = plan.pairs <= args.full_check_max
  shard_count = grouped.shard_count
  compare = set(range(shard_count)) if full else set(
      random.Random(args.verify_seed).sample(range(shard_count), min(args.sample_shards, shard_count)))
  checking = _GroupChecking(_independent_grouped(left_files, right_files, settings, self_join, summary, read), args)
  total = record_bytes = 0
  for cell in grouped.cells():
    path = names[cell.shard]
    picking = checking.shard(path, total)
    if cell.shard not in compare and cell.pairs is not None:
      count, size = _count(path, gzipped, picking)
      if count != cell.pairs:
        raise VerifyError(f"{path} holds {count:,} records, expected {cell.pairs:,}")
    else:
      def write_cell(out, cell=cell) -> Tuple[int, int]:
        count = size = 0
        for member in cell.members:
          members = (lefts.get(member.key, [])[member.left.start:member.left.stop],
                     rights.get(member.key, [])[member.right.start:member.right.stop])
          pairs, written = write_stage.write_member(grouped, member, *members, out, options, self_join,
                                                    plan.collisions)
          count, size = count + pairs, size + written
        return count, size

      with _open(path, gzipped) as stream:
        sink = _Comparing(stream, picking)
        count, size = write_cell(sink)
        same = sink.ended()
      if not same:
        found, _ = _count(path, gzipped)
        if found != count:
          raise VerifyError(f"{path} holds {found:,} records, expected {count:,} (records dropped or duplicated)")
        raise VerifyError(f"{path}: record {_first_difference(path, gzipped, write_cell)} is not the expected "
                          "merged pair")
    if picking.problem:
      raise VerifyError(picking.problem)
    checking.ended()
    total += count
    record_bytes += size
  if not shard_count and _count(names[0], gzipped)[0]:
    raise VerifyError(f"{names[0]} should be empty: the job has no pairs")
  checking.check(total)
  _expect(summary, "pairs", total)
  _check_schema(outputs.schema_path(output), set(left_stats.keys) | set(right_stats.keys) |
                {name for name in index_names if name})
  _expect(summary, "record_bytes", record_bytes)
  _expect(summary, "bytes", sum(owned[name].size for name in names))
  how = "every shard compared" if full else f"{len(compare)} of {shard_count} shards compared, the others counted"
  how += f"; {checking.said()} checked against the inputs independently"
  overrides = f" (flags that differ from the summary: {'; '.join(differ)})" if differ else ""
  return f"verified {total:,} pairs in {len(names)} shard(s) under {output}: {how}{overrides}"


def main(argv: Optional[List[str]] = None) -> int:
  try:
    print(verify(argv))
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (VerifyError, JobError) as e:
    print(f"verify failed: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())

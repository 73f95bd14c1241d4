"""``python -m beam_job.verify``: check an output against its inputs, with the job's own flags.

It reads both inputs in this process (no Beam), rebuilds the plan the job made, and then, for every shard the
plan names: the shard exists, its frames and CRCs are valid, it holds as many records as its cell has pairs,
and (for outputs of at most ``--full_check_max`` pairs, else for ``--sample_shards`` shards picked by
``--verify_seed``) its records are byte for byte the merged pairs. Exit 0 when all hold; otherwise 1, naming
the shard and what is wrong.

Every shard is streamed: a compared shard is read block by block beside the frames ``cells.write_cell``
writes for its cell (byte-identical to the plain-Python reference writer, which tests assert), and only a
shard that differs is read again frame by frame beside the reference's pairs, to name the first wrong record.
Memory: both inputs, prepared, and a block or two; nothing that grows with the output."""

import contextlib
import gzip
import json
import random
import sys
import zlib
from typing import BinaryIO, Iterator, List, Optional, Tuple

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_job import cells, cli, examples, outputs, planning, sources, tfrecord
from beam_job.errors import JobError
from beam_job.transforms import PairOptions


class VerifyError(Exception):
  """The output is not what the inputs and options imply."""


def _read_side(patterns: str, flag: str, args, prefix: str, select) -> Tuple[planning.SideStats, list]:
  good, bad, records, size, keys = {}, {}, [], 0, set()
  for path in sources.match_files(sources.split_patterns(patterns), flag):
    for record in sources.read_file(path, args.compression):
      problem = record.problem
      if record.payload is not None:
        try:
          prepared = examples.prepare(record.payload, prefix, select)
        except ValueError as e:
          problem = str(e)
        else:
          good[path] = good.get(path, 0) + 1
          size += len(prepared.payload)
          keys.update(prepared.keys)
          records.append((path, record.index, prepared))
          continue
      if args.on_corrupt == "fail":
        raise JobError(sources.corrupt_input(path, record.index, record.offset, problem, record.rest_lost,
                                             sources.detect_compression(path, args.compression)))
      bad.setdefault(path, []).append(record.index)
  stats = planning.SideStats(good, {s: tuple(sorted(i)) for s, i in bad.items()}, size, frozenset(keys))
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


def _count(path: str, compression: str) -> int:
  """The shard's records, read one frame at a time; a bad frame or a broken gzip stream is a VerifyError."""
  count = 0
  with _open(path, compression) as stream:
    try:
      for record in tfrecord.read_frames(stream):
        if record.payload is None:
          raise VerifyError(f"{path}: record {record.index} (byte {record.offset}): {record.problem}")
        count += 1
    except _GZIP_BROKEN as e:
      raise VerifyError(f"{path}: the gzip stream is broken after record {count}: {e}") from None
  return count


class _Comparing:
  """A sink for ``cells.write_cell`` that compares each block written with as many next bytes of a shard.

  It holds one block at a time, so a shard is checked in the memory of a block. After the first difference
  (or a damaged stream) it stops reading and only counts, so the writer still returns the cell's pairs.
  """

  def __init__(self, stream: BinaryIO):
    self._stream = stream
    self.same = True

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

  def ended(self) -> bool:
    """True when the bytes so far were all equal and the shard has nothing more (its gzip trailer checked)."""
    if self.same:
      try:
        self.same = not self._stream.read(1)
      except _GZIP_BROKEN:
        self.same = False
    return self.same


def _compare(path: str, compression: str, rows: list, cols: list, merge: dict) -> int:
  """Checks that the shard is byte for byte the cell's frames; returns its records.

  The expected frames come from ``cells.write_cell``, byte-identical to the reference writer (tests assert
  it), straight into a comparing sink: neither the shard nor the expected cell is ever held whole. Only when
  they differ is the shard read again, frame by frame beside the reference's pairs, to say what is wrong.
  """
  with _open(path, compression) as stream:
    sink = _Comparing(stream)
    pairs, _ = cells.write_cell(rows, cols, sink, **merge)
    if sink.ended():
      return pairs
  count = _count(path, compression)
  if count != pairs:
    raise VerifyError(f"{path} holds {count:,} records, expected {pairs:,} (records dropped or duplicated)")
  with _open(path, compression) as stream:
    expected = cells.pair_examples(rows, cols, **merge)
    for k, (record, want) in enumerate(zip(tfrecord.read_frames(stream), expected)):
      if record.payload != want:
        raise VerifyError(f"{path}: record {k} is not the expected merged pair")
  raise RuntimeError(f"{path}: every record is the reference's merged pair, but the bytes differ from "
                     "cells.write_cell: the native frame writer disagrees with the reference")


def verify(argv: Optional[List[str]] = None) -> str:
  parser = cli.make_parser()
  parser.prog = "python -m beam_job.verify"
  parser.add_argument("--full_check_max", type=cli.count, default=5_000_000,
                      help="Compare every record when the output has at most this many pairs.")
  parser.add_argument("--sample_shards", type=cli.count, default=4, help="Shards compared record by record otherwise.")
  parser.add_argument("--verify_seed", type=int, default=0)
  args = parser.parse_args(argv)
  options = PairOptions(**cli.pair_options(args))
  self_join = (args.self_join or "product") if not args.right else None
  left_stats, left = _read_side(args.left, "--left", args, options.prefixes[0], options.selects[0])
  right_stats, right = _read_side(args.right or args.left, "--right" if args.right else "--left", args,
                                  options.prefixes[1], options.selects[1])
  plan = planning.make_plan(left_stats, right_stats, **options.plan_options(self_join))
  index_names = options.index_names()
  left, right = _ordered(left, plan, 0, index_names[0]), _ordered(right, plan, 1, index_names[1])
  names = [outputs.shard_name(args.output, s, plan.shard_count, args.output_compression)
           for s in range(plan.shard_count)]
  owned = outputs.list_owned(args.output)
  present = {o.path for o in owned}
  for name in names:
    if name not in present:
      raise VerifyError(f"missing shard {name}")
  extra = [o.path for o in owned if o.kind == "shard" and o.path not in names]
  if extra:
    raise VerifyError(f"unexpected shard {extra[0]} (the plan has {plan.shard_count} shards)")
  if outputs.summary_path(args.output) not in present:
    raise VerifyError(f"missing summary {outputs.summary_path(args.output)}: the run did not finish")
  sampled = plan.sample_rate < 1
  full = plan.pairs <= args.full_check_max
  plan_cells = plan.cells
  compare = set(range(len(plan_cells))) if full else set(
      random.Random(args.verify_seed).sample(range(len(plan_cells)), min(args.sample_shards, len(plan_cells))))
  merge = {"self_join": self_join, "collision": args.collision, "collisions": plan.collisions,
           "sample": (plan.sample_rate, args.seed) if sampled else None}
  total = 0
  for shard, (row, col, pairs) in enumerate(plan_cells):
    if shard not in compare and not sampled:
      count = _count(names[shard], args.output_compression)
      if count != pairs:
        raise VerifyError(f"{names[shard]} holds {count:,} records, expected {pairs:,}")
    else:
      rows, cols = plan.members(row, col)
      count = _compare(names[shard], args.output_compression, left[rows.start:rows.stop],
                       right[cols.start:cols.stop], merge)
    total += count
  if not plan_cells and _count(names[0], args.output_compression):
    raise VerifyError(f"{names[0]} should be empty: the job has no pairs")
  with FileSystems.open(outputs.summary_path(args.output)) as f:
    text = f.read()
  try:
    summary = json.loads(text)
  except ValueError as e:
    raise VerifyError(f"{outputs.summary_path(args.output)} is not JSON ({e})") from None
  if not isinstance(summary, dict):
    raise VerifyError(f"{outputs.summary_path(args.output)} is not a JSON object")
  if summary.get("pairs") != total:
    raise VerifyError(f"the summary says {summary.get('pairs')} pairs, the shards hold {total}")
  how = "every record compared" if full or sampled else f"{len(compare)} of {len(plan_cells)} shards compared"
  return f"verified {total:,} pairs in {len(names)} shard(s) under {args.output}: {how}"


def main(argv: Optional[List[str]] = None) -> int:
  try:
    print(verify(argv))
  except (VerifyError, JobError) as e:
    print(f"verify failed: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())

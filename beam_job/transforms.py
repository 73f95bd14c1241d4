"""The Beam plumbing: read records with their positions, plan the job, write each cell where it is computed.

``ReadExamples`` turns file patterns into ``(source, index, payload)`` elements. ``CrossProduct`` takes one or
two such PCollections (a PCollection of your own works too: ``source`` is any string that orders your
records, ``index`` their position in it) and writes every pair's merged Example as sharded TFRecords.
"""

import json
import logging
import uuid
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import AsList, AsSingleton

from beam_job import cells, examples, planning, sinks, sources
from beam_job.errors import JobError

_LOG = logging.getLogger(__name__)
NAMESPACE = "beam_job"
COLLISIONS = ("error", "prefix", "left", "right")
ON_CORRUPT = ("fail", "skip")
STRATEGIES = ("auto", "broadcast", "grid")
OUTPUT_COMPRESSIONS = ("uncompressed", "gzip")
SIDES = ("left", "right")


class Corrupt(NamedTuple):
  """A record left out under ``--on_corrupt skip``, in place of its payload."""
  offset: int
  problem: str
  rest_lost: bool = False


def _describe(source, index, corrupt: Corrupt) -> str:
  where = f"{source}: record {index}" + (f" (byte {corrupt.offset})" if corrupt.offset >= 0 else "")
  lost = "; the rest of the file cannot be read" if corrupt.rest_lost else ""
  return f"{where}: {corrupt.problem}{lost}"


class _ReadFileFn(beam.DoFn):

  def __init__(self, compression: str, on_corrupt: str):
    self._compression = compression
    self._on_corrupt = on_corrupt

  def process(self, path: str):
    for record in sources.read_file(path, self._compression):
      if record.payload is not None:
        yield path, record.index, record.payload
        continue
      corrupt = Corrupt(record.offset, record.problem, record.rest_lost)
      if self._on_corrupt == "fail":
        raise JobError(f"corrupt input {_describe(path, record.index, corrupt)} (--on_corrupt skip leaves it out)")
      _LOG.warning("skipping corrupt input %s", _describe(path, record.index, corrupt))
      yield path, record.index, corrupt


class ReadExamples(beam.PTransform):
  """Reads TFRecord files into ``(path, index, payload)``; with ``on_corrupt='skip'`` a bad frame becomes
  ``(path, index, Corrupt)`` so that it is counted and reported downstream, never dropped silently."""

  def __init__(self, patterns, compression: str = "auto", on_corrupt: str = "fail"):
    super().__init__()
    if compression not in sources.COMPRESSIONS:
      raise JobError(f"--compression must be one of {', '.join(sources.COMPRESSIONS)}, not {compression!r}")
    if on_corrupt not in ON_CORRUPT:
      raise JobError(f"--on_corrupt must be one of {', '.join(ON_CORRUPT)}, not {on_corrupt!r}")
    self._patterns = list(patterns)
    self._compression = compression
    self._on_corrupt = on_corrupt

  def expand(self, pbegin):
    return (pbegin
            | "Patterns" >> beam.Create(self._patterns)
            | "Match" >> fileio.MatchAll()
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "Distinct" >> beam.Distinct()
            | "ReadFrames" >> beam.ParDo(_ReadFileFn(self._compression, self._on_corrupt)))


class _PrepareFn(beam.DoFn):
  """Parses, filters and renames each record once; bad payloads go to the ``corrupt`` output."""

  def __init__(self, side: int, prefix: str, on_corrupt: str, count: bool = True):
    self._side = side
    self._prefix = prefix
    self._on_corrupt = on_corrupt
    self._count = count
    self._records = beam.metrics.Metrics.counter(NAMESPACE, f"{SIDES[side]}_records")
    self._corrupt = beam.metrics.Metrics.counter(NAMESPACE, "corrupt_records")

  def process(self, element):
    source, index, payload = element
    if not isinstance(payload, Corrupt):
      try:
        prepared = examples.prepare(payload, self._prefix)
      except ValueError as e:
        payload = Corrupt(-1, str(e))
        if self._on_corrupt == "fail":
          raise JobError(f"corrupt input {_describe(source, index, payload)} (--on_corrupt skip leaves it out)")
      else:
        if self._count:
          self._records.inc()
        yield source, index, prepared
        return
    if self._count:
      self._corrupt.inc()
    yield beam.pvalue.TaggedOutput("corrupt", (source, index, payload))


class _SideStatsFn(beam.CombineFn):
  """Counts good records per source, collects corrupt indexes, payload bytes and feature names."""

  def create_accumulator(self):
    return {}, {}, 0, set()

  def add_input(self, acc, element):
    good, bad, size, keys = acc
    source, index, record = element
    if isinstance(record, Corrupt):
      bad.setdefault(source, []).append(index)
    else:
      good[source] = good.get(source, 0) + 1
      size += len(record.payload)
      keys.update(record.keys)
    return good, bad, size, keys

  def merge_accumulators(self, accumulators):
    good, bad, size, keys = self.create_accumulator()
    for g, b, s, k in accumulators:
      for source, n in g.items():
        good[source] = good.get(source, 0) + n
      for source, indexes in b.items():
        bad.setdefault(source, []).extend(indexes)
      size += s
      keys |= k
    return good, bad, size, keys

  def extract_output(self, acc):
    good, bad, size, keys = acc
    return planning.SideStats(good=dict(good), bad={s: tuple(sorted(i)) for s, i in bad.items()},
                              payload_bytes=size, keys=frozenset(keys))


def _to_cells(element, side: int, plan: planning.Plan):
  """Sends a record to every cell of its row (left) or column (right) that has pairs."""
  if side == 1 and plan.strategy == "broadcast":
    return
  source, index, record = element
  ordinal = plan.ordinal(side, source, index)
  chunk = plan.chunk(side, ordinal)
  shards = plan.cell_shards
  others = plan.cols if side == 0 else plan.rows
  for other in range(others):
    cell = (chunk, other) if side == 0 else (other, chunk)
    if cell in shards:
      yield cell, (side, ordinal, record)


def _broadcast_side(element, plan: planning.Plan):
  if plan.strategy == "broadcast":
    source, index, record = element
    yield plan.ordinal(1, source, index), record


class _WriteCellFn(beam.DoFn):
  """Writes one cell's pairs to its temporary shard and reports what it wrote."""

  def __init__(self, output: str, token: str, merge: dict, compression: str, fail_cell=None):
    self._output = output
    self._token = token
    self._merge = merge
    self._compression = compression
    self._fail_cell = fail_cell  # test hook: a cell (row, col) that raises half-way through
    self._pairs = beam.metrics.Metrics.counter(NAMESPACE, "pairs_written")
    self._bytes = beam.metrics.Metrics.counter(NAMESPACE, "bytes_written")

  def process(self, element, plan: planning.Plan, broadcast):
    cell, members = element
    left = sorted(((ordinal, record) for side, ordinal, record in members if side == 0), key=lambda m: m[0])
    if plan.strategy == "broadcast":
      right = sorted(broadcast, key=lambda m: m[0])
    else:
      right = sorted(((ordinal, record) for side, ordinal, record in members if side == 1), key=lambda m: m[0])
    shard = plan.cell_shards[cell]
    path = f"{sinks.temp_dir(self._output, self._token)}/shard-{shard:05d}"
    with sinks.open_shard(path, self._compression) as out:
      if self._fail_cell == cell:
        out.write(b"partial")
        raise RuntimeError(f"injected failure in cell {cell}")
      pairs, size = cells.write_cell(left, right, out, collisions=plan.collisions, **self._merge)
    self._pairs.inc(pairs)
    self._bytes.inc(size)
    yield {"shard": shard, "temp": path, "pairs": pairs, "record_bytes": size}


class _FinalizeFn(beam.DoFn):
  """Publishes the shards once every cell succeeded, then writes the summary."""

  def __init__(self, output: str, token: str, compression: str, overwrite: bool, options: dict):
    self._output = output
    self._token = token
    self._compression = compression
    self._overwrite = overwrite
    self._options = options

  def process(self, plan: planning.Plan, results, corrupt):
    results = sorted(results, key=lambda r: r["shard"])
    if [r["shard"] for r in results] != list(range(len(plan.cells))):
      raise RuntimeError(f"expected {len(plan.cells)} cells, got shards {[r['shard'] for r in results]}")
    folder = sinks.temp_dir(self._output, self._token)
    count = plan.shard_count
    names = [planning.shard_name(self._output, shard, count, self._compression) for shard in range(count)]
    temps = [r["temp"] for r in results]
    if not results:  # no pairs at all: still one (empty) shard, so readers of the prefix find a file
      temps = [f"{folder}/shard-00000"]
      with sinks.open_shard(temps[0], self._compression):
        pass
    sinks.publish(list(zip(temps, names)), self._output, self._overwrite)
    corrupt = sorted(corrupt, key=lambda c: (c[0], c[1]))
    summary = {
        "output": self._output,
        "left_records": plan.left_count,
        "right_records": plan.right_count,
        "pairs": sum(r["pairs"] for r in results),
        "corrupt_records": len(corrupt),
        "corrupt": [{"file": source, "record": index, "offset": c.offset, "problem": c.problem,
                     "rest_of_file_lost": c.rest_lost} for source, index, c in corrupt],
        "shards": names,
        "bytes": sum(sinks.size_of(name) for name in names),
        "record_bytes": sum(r["record_bytes"] for r in results),
        "strategy": plan.strategy,
        "grid": {"rows": plan.rows, "cols": plan.cols, "row_chunk": plan.row_chunk,
                 "col_chunk": plan.col_chunk, "cells": len(plan.cells)},
        "collisions": list(plan.collisions),
        "options": self._options,
    }
    if corrupt:  # the dead-letter list, one JSON object per line, before the summary that announces it
      sinks.write_text(sinks.dead_letter_path(self._output),
                       "".join(json.dumps(c, sort_keys=True) + "\n" for c in summary["corrupt"]),
                       f"{folder}/corrupt.jsonl")
      summary["dead_letter"] = sinks.dead_letter_path(self._output)
    sinks.write_text(sinks.summary_path(self._output), json.dumps(summary, indent=2, sort_keys=True) + "\n",
                     f"{folder}/summary.json")
    sinks.remove_dir(folder)
    yield summary


def _plan(left_stats, right_stats, options: dict):
  return planning.make_plan(left_stats, right_stats, **options)


class CrossProduct(beam.PTransform):
  """Writes every pair of two PCollections of ``(source, index, serialized Example)`` as merged Examples.

  Apply it to ``(left, right)``, or to one PCollection to pair it with itself (see ``self_join``). Output is
  ``{output}-SSSSS-of-NNNNN.tfrecord[.gz]`` plus ``{output}-summary.json``, written last; the result is a
  PCollection holding the summary dict. Records are ordered by ``source`` then ``index``; that order fixes
  which pairs ``combinations`` keeps and the bytes of every shard.
  """

  def __init__(self, output: str, *, collision: str = "error", left_prefix: str = "left_",
               right_prefix: str = "right_", self_join: str = "product", on_corrupt: str = "fail",
               max_pairs: int = 1_000_000_000, strategy: str = "auto", target_shard_mb: float = 256,
               output_compression: str = "uncompressed", overwrite: bool = False, _fail_cell=None):
    super().__init__()
    for flag, value, allowed in (("collision", collision, COLLISIONS), ("self_join", self_join, planning.SELF_JOINS),
                                 ("on_corrupt", on_corrupt, ON_CORRUPT), ("strategy", strategy, STRATEGIES),
                                 ("output_compression", output_compression, OUTPUT_COMPRESSIONS)):
      if value not in allowed:
        raise JobError(f"--{flag} must be one of {', '.join(allowed)}, not {value!r}")
    if max_pairs < 0:
      raise JobError(f"--max_pairs must be at least 0, not {max_pairs}")
    if not target_shard_mb > 0:
      raise JobError(f"--target_shard_mb must be positive, not {target_shard_mb}")
    if not output:
      raise JobError("--output must name a prefix")
    self._output = output
    self._collision = collision
    self._prefixes = (left_prefix, right_prefix) if collision == "prefix" else ("", "")
    self._self_join = self_join
    self._on_corrupt = on_corrupt
    self._max_pairs = max_pairs
    self._strategy = strategy
    self._target_bytes = int(target_shard_mb * 1_000_000)
    self._compression = output_compression
    self._overwrite = overwrite
    self._fail_cell = _fail_cell
    self._token = uuid.uuid4().hex[:12]  # one temporary folder per job: retried cells rewrite their own file

  def _summary_options(self, self_join):
    return {"collision": self._collision, "left_prefix": self._prefixes[0], "right_prefix": self._prefixes[1],
            "self_join": self_join, "output_compression": self._compression,
            "target_shard_mb": self._target_bytes / 1_000_000}

  def expand(self, inputs):
    left, right = inputs if isinstance(inputs, tuple) else (inputs, None)
    self_join = self._self_join if right is None else None
    if right is not None and self._self_join != "product":
      raise JobError("--self_join applies only when --right is omitted")
    left_records = left | "PrepareLeft" >> beam.ParDo(
        _PrepareFn(0, self._prefixes[0], self._on_corrupt)).with_outputs("corrupt", main="records")
    right_records = (left if right is None else right) | "PrepareRight" >> beam.ParDo(
        _PrepareFn(1, self._prefixes[1], self._on_corrupt, count=right is not None)).with_outputs(
            "corrupt", main="records")
    sides = (left_records, right_records)
    stats = [(s.records, s.corrupt) | f"Flatten{SIDES[i].title()}" >> beam.Flatten()
             | f"{SIDES[i].title()}Stats" >> beam.CombineGlobally(_SideStatsFn()) for i, s in enumerate(sides)]
    plan = stats[0] | "Plan" >> beam.Map(_plan, AsSingleton(stats[1]), {
        "strategy": self._strategy, "self_join": self_join, "collision": self._collision,
        "prefixes": self._prefixes, "max_pairs": self._max_pairs, "target_shard_bytes": self._target_bytes})
    corrupt_parts = [left_records.corrupt] + ([right_records.corrupt] if right is not None else [])
    corrupt = corrupt_parts | "AllCorrupt" >> beam.Flatten()
    merge = {"self_join": self_join, "collision": self._collision}
    results = ([s.records | f"To{SIDES[i].title()}Cells" >> beam.FlatMap(_to_cells, i, AsSingleton(plan))
                for i, s in enumerate(sides)]
               | "FlattenCells" >> beam.Flatten()
               | "GroupCells" >> beam.GroupByKey()
               | "WriteCells" >> beam.ParDo(
                   _WriteCellFn(self._output, self._token, merge, self._compression, self._fail_cell),
                   AsSingleton(plan),
                   AsList(right_records.records | "Broadcast" >> beam.FlatMap(_broadcast_side, AsSingleton(plan)))))
    return plan | "Finalize" >> beam.ParDo(
        _FinalizeFn(self._output, self._token, self._compression, self._overwrite,
                    self._summary_options(self_join or "")), AsList(results), AsList(corrupt))

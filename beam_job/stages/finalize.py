"""Finalize: once every cell is written, check every count against the plan and publish the run: the shards
renamed into place, the schema, the dead-letter list, and the summary last (``beam_job.publish``)."""

import collections
import json
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
from apache_beam.pvalue import AsList, AsSingleton

from beam_job import output_schema, outputs, planning, publish, sinks
from beam_job.errors import JobError
from beam_job.planning import SIDES

if TYPE_CHECKING:
  from beam_job.transforms import PairOptions


def _check_results(plan: planning.Plan, results: List[dict], read: collections.Counter, corrupt: int) -> None:
  """Finalize publishes nothing unless every stage's count agrees: records read, good and corrupt records in
  the plan, corrupt records listed, and the records and pairs of every cell."""
  corrupt_planned = {side: sum(len(indexes) for indexes in plan.bad[SIDES.index(side)].values()) for side in read}
  if corrupt != sum(corrupt_planned.values()):
    raise RuntimeError(f"record accounting: {sum(corrupt_planned.values())} corrupt record(s) in the plan, "
                       f"{corrupt} reached the dead-letter list; the runner lost or duplicated records")
  for side, planned in zip(SIDES, (plan.left_count, plan.right_count)):
    if side not in read:
      continue
    bad = corrupt_planned[side]
    if read[side] != planned + bad:
      raise RuntimeError(f"record accounting, {side} side: {read[side]} read, {planned} good + {bad} corrupt in "
                         "the plan; the runner lost or duplicated records")
  if plan.grouped is not None:
    _check_grouped(plan, results)
    return
  shards = [r["shard"] for r in results]
  if shards != list(range(len(plan.cells))):
    raise RuntimeError(f"record accounting: the plan has {len(plan.cells)} cells, {len(results)} reported "
                       f"(shards {shards[:10]}{' ...' if len(shards) > 10 else ''})")
  if plan.sparse:  # each cell checked its records against its kept pairs, worked out again from the sampling
    return
  for result, (row, col, pairs) in zip(results, plan.cells):
    expected = plan.members(row, col)
    if (result["left"], result["right"]) != (len(expected[0]), len(expected[1])):
      raise RuntimeError(f"record accounting: cell {(row, col)} reported {result['left']} x {result['right']} "
                         f"records, the plan routes {len(expected[0])} x {len(expected[1])}")
    if plan.sample_rate >= 1 and result["pairs"] != pairs:
      raise RuntimeError(f"record accounting: cell {(row, col)} wrote {result['pairs']} pairs, the plan has "
                         f"{pairs}")


def _check_grouped(plan: planning.Plan, results: List[dict]) -> None:
  """A grouped plan's cells: each reported once, each with the records of its groups' parts, and the pairs of
  each cell whose count the plan knows (and, unsampled, the pairs of all cells: the grouped pair count)."""
  grouped = plan.grouped
  shards = [r["shard"] for r in results]
  if shards != list(range(grouped.shard_count)):
    raise RuntimeError(f"record accounting: the plan has {grouped.shard_count} cells, {len(results)} reported "
                       f"(shards {shards[:10]}{' ...' if len(shards) > 10 else ''})")
  for result, cell in zip(results, grouped.cells()):
    if (result["left"], result["right"]) != cell.records:
      raise RuntimeError(f"record accounting: cell {cell.shard} reported {result['left']} x {result['right']} "
                         f"records, the plan routes {cell.records[0]} x {cell.records[1]}")
    if plan.sample_rate >= 1 and cell.pairs is not None and result["pairs"] != cell.pairs:
      raise RuntimeError(f"record accounting: cell {cell.shard} wrote {result['pairs']} pairs, the plan has "
                         f"{cell.pairs}")
  written = sum(r["pairs"] for r in results)
  if plan.sample_rate >= 1 and written != grouped.pairs:
    raise RuntimeError(f"record accounting: the cells wrote {written} pairs, the plan has {grouped.pairs} within "
                       "groups")


def _check_sources(plan: planning.Plan, inputs: dict) -> None:
  """Every file the run read is one its patterns matched when the job was built (and recorded in the summary
  for ``beam_job.verify``): a file that appeared in between would be in the output but not in the summary."""
  for side, name in enumerate(SIDES):
    files = (inputs.get(name) or inputs["left"])["files"]
    for source in sorted(set(plan.offsets[side]) | set(plan.bad[side])):
      if source not in files:
        raise JobError(f"input {source} was read but not matched by the {name} patterns when the job started "
                       "(it appeared while the job ran); rerun the job")


class _FinalizeFn(beam.DoFn):
  """Publishes the run once every cell succeeded and every count agrees (see ``publish.py``)."""

  def __init__(self, options: "PairOptions", self_join: Optional[str], inputs: Optional[dict]):
    self._options = options
    self._self_join = self_join
    self._inputs = inputs

  def process(self, plan: planning.Plan, results: List[Dict[str, Any]],
              stats: Tuple[planning.SideStats, planning.SideStats], *per_side: List) -> Iterable[Dict[str, Any]]:
    """``per_side``: each side read's corrupt records, ``(source, index, Corrupt)``, then its read counts,
    ``(side, count)`` per bundle."""
    options, output, token = self._options, self._options.output, plan.run
    left_stats, right_stats = stats
    results = sorted(results, key=lambda r: r["shard"])
    sides = len(per_side) // 2
    corrupt = [record for records in per_side[:sides] for record in records]
    read = collections.Counter()
    for counts in per_side[sides:]:
      for side, count in counts:
        read[side] += count
    _check_results(plan, results, read, len(corrupt))
    if self._inputs is not None:
      _check_sources(plan, self._inputs)
    folder = outputs.temp_dir(output, token)
    if not results:  # no pairs at all: still one (empty) shard, so readers of the prefix find a file
      path = sinks.attempt_path(folder, 0, 1)
      with sinks.open_shard(path, options.output_compression) as out:
        pass
      results = [{"shard": 0, "temp": path, "size": out.count, "pairs": 0, "record_bytes": 0}]
    count = plan.shard_count
    names = [outputs.shard_name(output, shard, count, options.output_compression) for shard in range(count)]
    corrupt = sorted(corrupt, key=lambda c: (c[0], c[1]))
    missing = sum(1 for _, _, c in corrupt if c.missing_group)
    summary = {
        "run": token,
        "output": output,
        "left_records": plan.left_count,
        "right_records": plan.right_count,
        "pairs": sum(r["pairs"] for r in results),
        "corrupt_records": len(corrupt) - missing,
        "corrupt": [dict({"file": source, "record": index, "offset": c.offset, "problem": c.problem,
                          "rest_of_file_lost": c.rest_lost}, **({"missing_group": True} if c.missing_group else {}))
                    for source, index, c in corrupt],
        "shards": names,
        "bytes": sum(r["size"] for r in results),
        "record_bytes": sum(r["record_bytes"] for r in results),
        "strategy": plan.strategy,
        "grid": plan.grid,
        "shuffle_bytes": plan.shuffle_bytes,
        "collisions": list(plan.collisions),
        "options": options.summary(self._self_join),
        "schema": outputs.schema_path(output),
    }
    if self._inputs is not None:
      summary["inputs"] = self._inputs
    if options.group_names is not None:  # records left out for want of a key, and the groups
      summary["missing_group_records"] = missing
      summary["groups"] = plan.grouped.summary()
    features = output_schema.output_features(
        (left_stats.features, right_stats.features), (plan.left_count, plan.right_count),
        collision=options.collision, pairs=summary["pairs"], self_join=self._self_join,
        sampled=options.sample_rate < 1 or options.grouped, index_names=options.index_names())
    texts = {outputs.schema_path(output): output_schema.to_pbtxt(features)}
    if corrupt:  # the dead-letter list, one JSON object per line, published before the summary announces it
      texts[outputs.dead_letter_path(output)] = "".join(json.dumps(c, sort_keys=True) + "\n"
                                                        for c in summary["corrupt"])
      summary["dead_letter"] = outputs.dead_letter_path(output)
    moves = [(r["temp"], name, r["size"]) for r, name in zip(results, names)]
    summary_text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    yield json.loads(publish.publish(output, token, lambda: publish.make_manifest(
        output, token, moves, texts, summary_text, options.overwrite)))


class Finalize(beam.PTransform):
  """Applied to ``{"plan": ..., "cells": ..., "stats": ..., "corrupt": (...), "read": (...)}``: the plan
  singleton, ``WriteCells``' results, the ``(left, right)`` ``SideStats`` singleton, and the corrupt records
  and read counts of each side read (``PreparedSide.corrupt``, ``.read``). Outputs the published summary, a
  dict."""

  def __init__(self, options: "PairOptions", self_join: Optional[str], inputs: Optional[dict]):
    super().__init__()
    self._options, self._self_join, self._inputs = options, self_join, inputs

  def expand(self, job) -> beam.PCollection[Dict[str, Any]]:
    # One side input per PCollection: flattening them first would cost a stage of its own.
    per_side = [AsList(pcoll) for pcoll in (*job["corrupt"], *job["read"])]
    return job["plan"] | "Publish" >> beam.ParDo(
        _FinalizeFn(self._options, self._self_join, self._inputs), AsList(job["cells"]), AsSingleton(job["stats"]),
        *per_side)

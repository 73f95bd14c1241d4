"""Plan: the two sides' stats to the plan (``planning.make_plan``), a singleton every later stage reads as a
side input. In a real run the plan step also starts the run; under ``--dry_run`` it only describes the plan."""

import dataclasses
import json
import uuid
from typing import TYPE_CHECKING, Any, Dict, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.pvalue import AsList, AsSingleton

from beam_job import describe, grouping, outputs, planning, publish
from beam_job.errors import JobError

if TYPE_CHECKING:
  from beam_job.transforms import PairOptions


class _Run(NamedTuple):
  output: str
  overwrite: bool
  gzip: bool


def _new_token(_) -> str:
  return uuid.uuid4().hex[:12]


def _key_problems(left_stats: planning.SideStats, right_stats: planning.SideStats, names, self_join) -> list:
  """Group keys that cannot pair anything, which would otherwise give a complete-looking empty output: a side
  none of whose records has a key (a misspelt name under --missing_group skip), or int64 keys on one side and
  bytes keys on the other (they never match)."""
  sides = [("left", left_stats, names[0])] + ([] if self_join is not None else [("right", right_stats, names[1])])
  for side, stats, name in sides:
    if not stats.groups and stats.bad:
      skipped = sum(len(indexes) for indexes in stats.bad.values())
      return [f"no {side} record holds a group key {name!r} ({skipped:,} record(s) left out, without a key or "
              f"corrupt): check the name given to --group_by or --{side}_group_by"]
  if self_join is None and left_stats.groups and right_stats.groups:
    kinds = [{key[0] for key in stats.groups} for stats in (left_stats, right_stats)]
    if len(kinds[0]) == len(kinds[1]) == 1 and kinds[0] != kinds[1]:
      shown = ["int64" if kind == {grouping.INT64} else "bytes" for kind in kinds]
      return [f"the group keys are {shown[0]} on the left ({names[0]!r}) and {shown[1]} on the right "
              f"({names[1]!r}): int64 and bytes keys never match, so no pair would be written"]
  return []


def _grouped(plan: planning.Plan, left_stats: planning.SideStats, right_stats: planning.SideStats,
             grouped: dict, by_key: bool, dry_run: bool, names=None) -> planning.Plan:
  """The plan of --group_by / --pairs_per_left: ``planning``'s for ordinals, counts and collisions (planned
  with no --max_pairs, which applies to the grouped pairs), with ``grouping``'s cells. Without --group_by
  (``by_key`` false) the whole product is one group, ``grouping.WHOLE``, whose ranks are the ordinals."""
  self_join = grouped["self_join"]
  if not by_key:
    counts = {grouping.WHOLE: (plan.left_count, plan.right_count)}
  elif self_join is not None:  # paired with itself: each group's records on both sides
    counts = {key: (count, count) for key, count in left_stats.groups.items()}
  else:
    counts = {key: (left_stats.groups.get(key, 0), right_stats.groups.get(key, 0))
              for key in left_stats.groups.keys() | right_stats.groups.keys()}
  problems = list(plan.problems) + (_key_problems(left_stats, right_stats, names, self_join) if by_key else [])
  if problems and not dry_run:
    raise JobError(problems[0])
  try:
    cells = grouping.make_grouped_plan(counts, plan.averages, **grouped)
  except JobError as e:
    if not dry_run:
      raise
    problems.append(str(e))
    cells = grouping.make_grouped_plan(counts, plan.averages, **dict(grouped, max_pairs=planning.MAX_PAIRS))
  pair_bytes = sum(plan.averages) + planning.PAIR_OVERHEAD_BYTES
  return dataclasses.replace(plan, grouped=cells, strategy="grouped", sparse=False, pairs=cells.pairs,
                             estimated_bytes=int(cells.pairs * pair_bytes), problems=tuple(problems))


def _plan(stats: Tuple[planning.SideStats, planning.SideStats], options: dict, run: Optional[_Run] = None,
          token: Optional[str] = None, grouped: Optional[dict] = None) -> planning.Plan:
  """Plans the job from both sides' stats. In a real run (``run``) it then starts the run: takes the lease (idempotent,
  so a retry is harmless; the CLI took it already), rolls back dead runs, refuses an earlier output without
  --overwrite, and leaves the plan's totals in the run's temporary folder for progress displays. ``grouped``: the
  options of a grouped plan (``PairOptions.grouped_options``, and ``by_key``), None for the full product."""
  left_stats, right_stats = stats
  if grouped is None:
    plan = planning.make_plan(left_stats, right_stats, **options)
  else:
    grouped = dict(grouped)
    by_key = grouped.pop("by_key")
    names = grouped.pop("names")
    plan = planning.make_plan(left_stats, right_stats, **dict(options, max_pairs=planning.MAX_PAIRS, strategy="grid"))
    plan = _grouped(plan, left_stats, right_stats, grouped, by_key, options.get("dry_run", False), names)
  if run is None:
    return plan
  publish.begin(run.output, token, run.overwrite)
  folder = outputs.temp_dir(run.output, token)
  publish.write_text(f"{folder}/plan.json", json.dumps(
      {"pairs": plan.pairs, "estimated_bytes": plan.estimated_bytes, "gzip": run.gzip}), f"{folder}/plan.tmp")
  return dataclasses.replace(plan, run=token)


def _grouped_options(options: "PairOptions", self_join: Optional[str]) -> Optional[dict]:
  if not options.grouped:
    return None
  return dict(options.grouped_options(self_join), by_key=options.group_names is not None,
              names=options.group_names)


class Plan(beam.PTransform):
  """Applied to the ``(left, right)`` ``planning.SideStats`` singleton (``GatherStats``): the plan, with the
  run's token as its ``run``, once the run has begun (see ``_plan``).

  The token names the run's lease and temporary folder. It is chosen when the pipeline runs, in a stage of its
  own, so that a retried plan step sees the token it began with; a caller that is itself one run (the CLI)
  passes its own (``token``), so that it can clean up after a failure."""

  def __init__(self, options: "PairOptions", self_join: Optional[str], token: Optional[str] = None):
    super().__init__()
    self._options, self._self_join, self._token = options, self_join, token

  def expand(self, stats) -> beam.PCollection[planning.Plan]:
    options = self._options
    token = self._token or AsSingleton(stats.pipeline | "RunToken" >> beam.Create([None])
                                       | "ChooseToken" >> beam.Map(_new_token))
    run = _Run(options.output, options.overwrite, options.output_compression == "gzip")
    return stats | "MakePlan" >> beam.Map(_plan, options.plan_options(self._self_join), run, token,
                                          _grouped_options(options, self._self_join))


class DescribePlan(beam.PTransform):
  """``--dry_run``: applied to the stats singleton as ``Plan``, the plan's description
  (``describe.plan_description``), in which a failed check is a problem to report, not an error. It starts no
  run and writes nothing."""

  def __init__(self, options: "PairOptions", self_join: Optional[str], left_out=None):
    super().__init__()
    self._options, self._self_join, self._left_out = options, self_join, left_out

  def expand(self, stats) -> beam.PCollection[Dict[str, Any]]:
    options = dict(self._options.plan_options(self._self_join), dry_run=True)
    left_out = ([] if self._left_out is None else AsList(self._left_out | "LeftOut" >> beam.Map(
        lambda record: (record[0], record[1], record[2].problem, record[2].missing_group))))
    return (stats | "Plan" >> beam.Map(_plan, options, None, None, _grouped_options(self._options, self._self_join))
            | "Describe" >> beam.Map(describe.plan_description, self._options, left_out))

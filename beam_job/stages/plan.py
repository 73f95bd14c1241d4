"""Plan: the two sides' stats to the plan (``planning.make_plan``), a singleton every later stage reads as a
side input. In a real run the plan step also starts the run; under ``--dry_run`` it only describes the plan."""

import dataclasses
import json
import uuid
from typing import TYPE_CHECKING, Any, Dict, NamedTuple, Optional

import apache_beam as beam
from apache_beam.pvalue import AsSingleton

from beam_job import describe, outputs, planning, publish

if TYPE_CHECKING:
  from beam_job.transforms import PairOptions


class _Run(NamedTuple):
  output: str
  overwrite: bool
  gzip: bool


def _new_token(_) -> str:
  return uuid.uuid4().hex[:12]


def _plan(left_stats: planning.SideStats, right_stats: planning.SideStats, options: dict,
          run: Optional[_Run] = None, token: Optional[str] = None) -> planning.Plan:
  """Plans the job. In a real run (``run``) it then starts the run: takes the lease (idempotent, so a retry is
  harmless; the CLI took it already), rolls back dead runs, refuses an earlier output without --overwrite, and
  leaves the plan's totals in the run's temporary folder for progress displays."""
  plan = planning.make_plan(left_stats, right_stats, **options)
  if run is None:
    return plan
  publish.begin(run.output, token, run.overwrite)
  folder = outputs.temp_dir(run.output, token)
  publish.write_text(f"{folder}/plan.json", json.dumps(
      {"pairs": plan.pairs, "estimated_bytes": plan.estimated_bytes, "gzip": run.gzip}), f"{folder}/plan.tmp")
  return dataclasses.replace(plan, run=token)


class Plan(beam.PTransform):
  """Applied to ``(left_stats, right_stats)`` (``planning.SideStats`` singletons): the plan, with the run's
  token as its ``run``, once the run has begun (see ``_plan``).

  The token names the run's lease and temporary folder. It is chosen when the pipeline runs, in a stage of its
  own, so that a retried plan step sees the token it began with; a caller that is itself one run (the CLI)
  passes its own (``token``), so that it can clean up after a failure."""

  def __init__(self, options: "PairOptions", self_join: Optional[str], token: Optional[str] = None):
    super().__init__()
    self._options, self._self_join, self._token = options, self_join, token

  def expand(self, stats) -> beam.PCollection[planning.Plan]:
    left_stats, right_stats = stats
    options = self._options
    token = self._token or AsSingleton(left_stats.pipeline | "RunToken" >> beam.Create([None])
                                       | "ChooseToken" >> beam.Map(_new_token))
    run = _Run(options.output, options.overwrite, options.output_compression == "gzip")
    return left_stats | "MakePlan" >> beam.Map(_plan, AsSingleton(right_stats), options.plan_options(self._self_join),
                                               run, token)


class DescribePlan(beam.PTransform):
  """``--dry_run``: applied to ``(left_stats, right_stats)`` as ``Plan``, the plan's description
  (``describe.plan_description``), in which a failed check is a problem to report, not an error. It starts no
  run and writes nothing."""

  def __init__(self, options: "PairOptions", self_join: Optional[str]):
    super().__init__()
    self._options, self._self_join = options, self_join

  def expand(self, stats) -> beam.PCollection[Dict[str, Any]]:
    left_stats, right_stats = stats
    options = dict(self._options.plan_options(self._self_join), dry_run=True)
    return (left_stats | "Plan" >> beam.Map(_plan, AsSingleton(right_stats), options)
            | "Describe" >> beam.Map(describe.plan_description, self._options))

"""The job as one composite: ``CrossProduct`` runs the stages of ``beam_job.stages`` in the order the data flows.

``ReadExamples`` turns file patterns into ``(source, index, payload)`` elements. ``CrossProduct`` takes one or
two such PCollections (a PCollection of your own works too: ``source`` is any string that orders your
records, ``index`` their position in it) and writes every pair's merged Example as sharded TFRecords.
"""

import dataclasses
from typing import Any, Dict, Optional, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import TypeOptions

from beam_job import outputs, planning, running_modes, sampling
from beam_job.errors import JobError
from beam_job.flags import COLLISIONS, DEFAULTS, MISSING_GROUP, ON_CORRUPT, OUTPUT_COMPRESSIONS, STRATEGIES
from beam_job.stages.finalize import Finalize
from beam_job.stages.plan import DescribePlan, Plan
from beam_job.stages.prepare import GatherStats, PreparedSide, PrepareSide
from beam_job.stages.read import Corrupt, ReadExamples
from beam_job.stages.write import WriteCells

__all__ = ["Corrupt", "CrossProduct", "DescribePairs", "PairOptions", "ReadExamples"]


@dataclasses.dataclass(frozen=True)
class PairOptions:
  """Everything ``CrossProduct`` is told, checked once at construction (before any pipeline runs). The fields
  are the job's flags but the inputs' (``beam_job.flags``), with the flags' defaults."""
  output: str
  collision: str = DEFAULTS["collision"]
  left_prefix: str = DEFAULTS["left_prefix"]
  right_prefix: str = DEFAULTS["right_prefix"]
  self_join: str = "product"  # the flag's None (unset) means product here
  on_corrupt: str = DEFAULTS["on_corrupt"]
  max_pairs: int = DEFAULTS["max_pairs"]
  strategy: str = DEFAULTS["strategy"]
  target_shard_mb: float = DEFAULTS["target_shard_mb"]
  output_compression: str = DEFAULTS["output_compression"]
  overwrite: bool = DEFAULTS["overwrite"]
  left_features: Optional[Tuple[str, ...]] = DEFAULTS["left_features"]
  right_features: Optional[Tuple[str, ...]] = DEFAULTS["right_features"]
  index_features: bool = DEFAULTS["index_features"]
  sample_rate: float = DEFAULTS["sample_rate"]
  seed: int = DEFAULTS["seed"]
  group_by: Optional[str] = DEFAULTS["group_by"]
  left_group_by: Optional[str] = DEFAULTS["left_group_by"]
  right_group_by: Optional[str] = DEFAULTS["right_group_by"]
  missing_group: str = DEFAULTS["missing_group"]
  pairs_per_left: Optional[int] = DEFAULTS["pairs_per_left"]

  def __post_init__(self):
    for flag, value, allowed in (("collision", self.collision, COLLISIONS), ("missing_group", self.missing_group,
                                                                             MISSING_GROUP),
                                 ("self_join", self.self_join, planning.SELF_JOINS),
                                 ("on_corrupt", self.on_corrupt, ON_CORRUPT), ("strategy", self.strategy, STRATEGIES),
                                 ("output_compression", self.output_compression, OUTPUT_COMPRESSIONS)):
      if value not in allowed:
        raise JobError(f"--{flag} must be one of {', '.join(allowed)}, not {value!r}")
    # The same bounds as the command line's (beam_job.cli), for callers who build the options in Python.
    for flag, value in (("max_pairs", self.max_pairs), ("seed", self.seed)):
      if not isinstance(value, int) or isinstance(value, bool):
        raise JobError(f"--{flag} must be a whole number, not {value!r}")
    if self.max_pairs < 0:
      raise JobError(f"--max_pairs must be at least 0, not {self.max_pairs}")
    if self.max_pairs > planning.MAX_PAIRS:
      raise JobError(f"--max_pairs must be at most {planning.MAX_PAIRS:,} (2**63 - 1), not {self.max_pairs}")
    if not self.target_shard_mb > 0:
      raise JobError(f"--target_shard_mb must be positive, not {self.target_shard_mb}")
    if not self.target_shard_mb <= planning.MAX_TARGET_SHARD_MB:
      raise JobError(f"--target_shard_mb must be at most {planning.MAX_TARGET_SHARD_MB:,.0f} (one TB), "
                     f"not {self.target_shard_mb}")
    if not 0 < self.sample_rate <= 1:
      raise JobError(f"--sample_rate must be in (0, 1], not {self.sample_rate}")
    if self.sample_rate < sampling.MIN_RATE:
      raise JobError(f"--sample_rate must be at least {sampling.MIN_RATE:g}, the smallest supported rate, "
                     f"not {self.sample_rate}")
    if not sampling.MIN_SEED <= self.seed <= sampling.MAX_SEED:
      raise JobError(f"--seed must be a whole number from {sampling.MIN_SEED} to {sampling.MAX_SEED} "
                     f"(64-bit signed), not {self.seed}")
    self._check_groups()
    if not self.output:
      raise JobError("--output must name a prefix")
    object.__setattr__(self, "output", outputs.normalize(self.output))

  def _check_groups(self) -> None:
    if self.group_by is not None and (self.left_group_by is not None or self.right_group_by is not None):
      raise JobError("--group_by names the group feature of both sides; --left_group_by and --right_group_by "
                     "are for names that differ: give one or the other")
    if (self.left_group_by is None) != (self.right_group_by is None):
      given, missing = ("left", "right") if self.left_group_by is not None else ("right", "left")
      raise JobError(f"--{given}_group_by needs --{missing}_group_by (or --group_by for one name on both sides)")
    for flag in ("group_by", "left_group_by", "right_group_by"):
      value = getattr(self, flag)
      if value is not None and (not isinstance(value, str) or not value.strip()):
        raise JobError(f"--{flag} must name a feature, not {value!r}")
    if self.pairs_per_left is not None:
      if not isinstance(self.pairs_per_left, int) or isinstance(self.pairs_per_left, bool):
        raise JobError(f"--pairs_per_left must be a whole number, not {self.pairs_per_left!r}")
      if not 1 <= self.pairs_per_left <= planning.MAX_PAIRS:
        raise JobError(f"--pairs_per_left must be from 1 to {planning.MAX_PAIRS:,}, not {self.pairs_per_left}")
      if self.sample_rate < 1:
        raise JobError("--pairs_per_left and --sample_rate both choose which pairs to keep: give one of them "
                       "(--pairs_per_left K keeps exactly K per left record, --sample_rate each pair by chance)")
    if self.missing_group != "fail" and self.group_names is None:
      raise JobError("--missing_group applies only with --group_by (or --left_group_by and --right_group_by)")
    if self.strategy == "broadcast" and self.grouped:
      raise JobError("--strategy broadcast does not apply with --group_by or --pairs_per_left, whose cells are "
                     "planned per group: omit it")

  @property
  def group_names(self) -> Optional[Tuple[str, str]]:
    """The group feature of each side (names before prefixing), None without --group_by."""
    if self.group_by is not None:
      return self.group_by, self.group_by
    if self.left_group_by is not None:
      return self.left_group_by, self.right_group_by
    return None

  @property
  def grouped(self) -> bool:
    """Whether the job is planned by ``grouping`` (pairs within groups, or exactly K per left record): without
    --group_by, --pairs_per_left plans the whole product as one group."""
    return self.group_names is not None or self.pairs_per_left is not None

  @property
  def prefixes(self) -> Tuple[str, str]:
    return (self.left_prefix, self.right_prefix) if self.collision == "prefix" else ("", "")

  @property
  def selects(self):
    return tuple(None if names is None else frozenset(names) for names in (self.left_features, self.right_features))

  def index_names(self) -> Tuple[Optional[str], Optional[str]]:
    """The two ordinal features of ``--index_features``: the prefixes' under ``--collision prefix``, else
    ``left_index`` and ``right_index``, so that under every policy each side's ordinal is its own feature (one
    name for both would collide, or lose one side's index under ``left|right``)."""
    if not self.index_features:
      return None, None
    prefixes = self.prefixes if self.collision == "prefix" else ("left_", "right_")
    return prefixes[0] + "index", prefixes[1] + "index"

  def plan_options(self, self_join: Optional[str]) -> dict:
    return {"strategy": self.strategy, "self_join": self_join, "collision": self.collision,
            "prefixes": self.prefixes, "max_pairs": self.max_pairs,
            "target_shard_bytes": int(self.target_shard_mb * 1_000_000), "selects": self.selects,
            "index_names": self.index_names(), "sample_rate": self.sample_rate}

  def grouped_options(self, self_join: Optional[str]) -> dict:
    """What ``grouping.make_grouped_plan`` needs besides the counts."""
    return {"self_join": self_join, "target_shard_bytes": int(self.target_shard_mb * 1_000_000),
            "max_pairs": self.max_pairs, "pairs_per_left": self.pairs_per_left, "sample_rate": self.sample_rate}

  def summary(self, self_join: Optional[str]) -> dict:
    """The summary's ``options``: every flag of the run but the inputs' (those are the summary's ``inputs``), with
    its value or default, so that ``beam_job.verify`` can check the output from the summary alone. The prefixes
    rename features only under ``--collision prefix``; ``self_join`` is ``""`` when --right was given."""
    return {"collision": self.collision, "left_prefix": self.left_prefix, "right_prefix": self.right_prefix,
            "self_join": self_join or "", "output_compression": self.output_compression,
            "target_shard_mb": self.target_shard_mb, "sample_rate": self.sample_rate, "seed": self.seed,
            "left_features": list(self.left_features or []), "right_features": list(self.right_features or []),
            "index_features": self.index_features, "on_corrupt": self.on_corrupt, "max_pairs": self.max_pairs,
            "strategy": self.strategy, "group_by": self.group_by or "", "left_group_by": self.left_group_by or "",
            "right_group_by": self.right_group_by or "", "missing_group": self.missing_group,
            "pairs_per_left": self.pairs_per_left}


def _pair_options(output: str, options: dict) -> PairOptions:
  for name in ("left_features", "right_features"):
    if options.get(name) is not None:
      options[name] = tuple(options[name])
  return PairOptions(output, **options)


def _prepare(options: PairOptions, inputs) -> Tuple[Tuple[PreparedSide, PreparedSide], Optional[str]]:
  """Both sides prepared, and the self-join mode. A self-join parses each record once: for one side when its
  sides are prepared alike, else for both sides from the same parse."""
  left, right = inputs if isinstance(inputs, tuple) else (inputs, None)
  running_modes.refuse_lossy_mode(left.pipeline.options, left.pipeline.runner)
  types = left.pipeline.options.view_as(TypeOptions)
  if types.runtime_type_check or types.performance_runtime_type_check:
    raise JobError("--runtime_type_check and --performance_runtime_type_check are not supported: Beam's checker "
                   "takes the windowed values that the job's steps emit once per bundle for elements of the main "
                   "output; the job's element types are checked when the pipeline is built")
  if right is not None and options.self_join != "product":
    raise JobError("--self_join applies only when --right is omitted")
  self_join = options.self_join if right is None else None
  if right is None and options.left_group_by is not None:
    raise JobError("--left_group_by and --right_group_by name the group feature of each of two sides; without "
                   "--right use --group_by")
  if right is None:  # a self-join: its records parsed once, for one side or for both renamed apart
    if options.prefixes[0] == options.prefixes[1] and options.selects[0] == options.selects[1]:
      left_side = left | "PrepareLeft" >> PrepareSide(0, options, read=True)
      return (left_side, left_side), self_join
    return left | "PrepareBoth" >> PrepareSide(0, options, read=True, both=True), self_join
  return (left | "PrepareLeft" >> PrepareSide(0, options, read=True),
          right | "PrepareRight" >> PrepareSide(1, options, read=True)), self_join


class CrossProduct(beam.PTransform):
  """Writes every pair of two PCollections of ``(source, index, serialized Example)`` as merged Examples.

  Apply it to ``(left, right)``, or to one PCollection to pair it with itself (see ``self_join``). Output is
  ``{output}-SSSSS-of-NNNNN.tfrecord[.gz]``, ``{output}-schema.pbtxt`` and ``{output}-summary.json``, written
  last; the result is a PCollection holding the summary dict (``DescribePairs`` gives the plan instead,
  writing nothing). Records are ordered by ``source`` then ``index``; that order fixes which pairs
  ``combinations`` keeps and the bytes of every shard. Keyword arguments are the fields of ``PairOptions``
  (the CLI's flags). ``inputs`` (``{"compression": ..., "left": {"patterns": [...], "files": {path: size}},
  "right": ... or None}``, as the CLI matched them) goes into the summary, for ``beam_job.verify``; every
  source read must be one of its files.
  """

  def __init__(self, output: str, *, temp_token: Optional[str] = None, inputs: Optional[dict] = None, **options):
    super().__init__()
    self._options = _pair_options(output, options)
    self._inputs = inputs
    # The run's token names its temporary folder and lease; chosen when the pipeline runs unless a caller that
    # is itself one run (the CLI) passes its own, so that it can clean up after a failure.
    self._token = temp_token

  def expand(self, inputs) -> beam.PCollection[Dict[str, Any]]:
    options = self._options
    # read (ReadExamples, before this transform) -> prepare -> plan -> write cells -> finalize
    sides, self_join = _prepare(options, inputs)
    stats = (sides[0].tallies, sides[1].tallies) | "Stats" >> GatherStats()
    plan = stats | "Plan" >> Plan(options, self_join, self._token)
    cells = (sides[0].records, sides[1].records) | "WriteCells" >> WriteCells(options, self_join, plan)
    read = sides if isinstance(inputs, tuple) else sides[:1]  # the sides read from their own records
    return ({"plan": plan, "cells": cells, "stats": stats, "corrupt": tuple(side.corrupt for side in read),
             "read": tuple(side.read for side in read)}
            | "Finalize" >> Finalize(options, self_join, self._inputs))


class DescribePairs(beam.PTransform):
  """``--dry_run``: what ``CrossProduct`` with the same options would do to the same inputs, as the plan's
  description (a dict: records, pairs, shards, grid, collisions, problems); nothing is written."""

  def __init__(self, output: str, **options):
    super().__init__()
    self._options = _pair_options(output, options)

  def expand(self, inputs) -> beam.PCollection[Dict[str, Any]]:
    # Read leniently: a record the real run would fail on is left out and listed among the problems.
    options = self._options
    lenient = dataclasses.replace(options, on_corrupt="skip",
                                  missing_group="skip" if options.group_names else options.missing_group)
    sides, self_join = _prepare(lenient, inputs)
    read = sides if isinstance(inputs, tuple) else sides[:1]
    left_out = tuple(side.corrupt for side in read) | "LeftOut" >> beam.Flatten()
    stats = (sides[0].tallies, sides[1].tallies) | "Stats" >> GatherStats()
    return stats | "DescribePlan" >> DescribePlan(options, self_join, left_out)

"""The Beam plumbing: read records with their positions, plan the job, write each cell where it is computed.

``ReadExamples`` turns file patterns into ``(source, index, payload)`` elements. ``CrossProduct`` takes one or
two such PCollections (a PCollection of your own works too: ``source`` is any string that orders your
records, ``index`` their position in it) and writes every pair's merged Example as sharded TFRecords.
"""

import collections
import dataclasses
import json
import logging
import time
import uuid
from typing import List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import AsIter, AsList, AsSingleton
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils import shared

from beam_job import (cells, describe, examples, lease, output_schema, outputs, planning, publish, running_modes,
                      sampling, sinks, sources)
from beam_job.errors import JobError
from beam_job.flags import COLLISIONS, DEFAULTS, ON_CORRUPT, OUTPUT_COMPRESSIONS, STRATEGIES
from beam_job.planning import SIDES

_LOG = logging.getLogger(__name__)
NAMESPACE = "beam_job"


class Corrupt(NamedTuple):
  """A record left out under ``--on_corrupt skip``, in place of its payload."""
  offset: int
  problem: str
  rest_lost: bool = False




class _ReadFileFn(beam.DoFn):

  def __init__(self, compression: str, on_corrupt: str):
    self._compression = compression
    self._on_corrupt = on_corrupt

  def process(self, path: str):
    if FileSystems.get_scheme(path) is None:
      problem = sources.file_problem(path)
      if problem:  # Beam's match may list a FIFO or skip nothing: never block on one or read a folder
        raise JobError(f"input {path} {problem}")
    for record in sources.read_file(path, self._compression):
      if record.payload is not None:
        yield path, record.index, record.payload
        continue
      corrupt = Corrupt(record.offset, record.problem, record.rest_lost)
      where = (path, record.index, *corrupt, sources.detect_compression(path, self._compression))
      if self._on_corrupt == "fail":
        raise JobError(sources.corrupt_input(*where))
      _LOG.warning("skipping corrupt input %s", sources.describe_record(*where))
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


class _Tally:
  """What a bundle (or several, merged) learned about one side: good records and payload bytes per source,
  corrupt indexes, how many records hold each feature name with each kind and length of value list (for the
  schema, ``examples.prepare``'s shapes), and each source's exact indexes (``planning.IndexRuns``), which must
  be 0, 1, 2, ... as ordinals need."""

  def __init__(self):
    self.good = collections.Counter()
    self.bad = {}
    self.size = 0
    self.shapes = {}
    self.indexes = {}

  def add(self, source: str, index: int, prepared: Optional[examples.Prepared]) -> None:
    if prepared is None:
      self.bad.setdefault(source, []).append(index)
    else:
      self.good[source] += 1
      self.size += len(prepared.payload)
    runs = self.indexes.get(source)
    if runs is None:
      runs = self.indexes[source] = planning.IndexRuns()
    runs.add(index)

  def merge(self, other: "_Tally") -> None:
    self.good.update(other.good)
    for source, found in other.bad.items():
      self.bad.setdefault(source, []).extend(found)
    self.size += other.size
    for shape, records in other.shapes.items():
      self.shapes[shape] = self.shapes.get(shape, 0) + records
    for source, runs in other.indexes.items():
      self.indexes.setdefault(source, planning.IndexRuns()).merge(runs)

  def stats(self) -> planning.SideStats:
    for source, runs in self.indexes.items():
      problem = runs.problem()
      if problem:
        raise JobError(f"the records of source {source!r} are not numbered 0, 1, 2, ... without gaps or repeats "
                       f"({problem}): the runner lost or repeated records, or the indexes of a PCollection "
                       "given to CrossProduct are not positions")
    features = output_schema.side_features(self.shapes)
    return planning.SideStats(good=dict(self.good), bad={s: tuple(sorted(i)) for s, i in self.bad.items()},
                              payload_bytes=self.size, keys=frozenset(features), features=features)


class _PrepareFn(beam.DoFn):
  """Parses, filters and renames each record once, into ``(source, index, payload)``; bad payloads go to the
  ``corrupt`` output. What the plan and the schema need is tallied in the same pass and leaves once per bundle
  (``stats``), so records travel on as bytes only."""

  def __init__(self, side: int, prefix: str, on_corrupt: str, select=None, count: bool = True):
    self._side = side
    self._prefix = prefix
    self._select = select
    self._on_corrupt = on_corrupt
    self._count = count
    self._records = beam.metrics.Metrics.counter(NAMESPACE, f"{SIDES[side]}_records")
    self._corrupt = beam.metrics.Metrics.counter(NAMESPACE, "corrupt_records")

  def start_bundle(self):
    self._tally = _Tally()
    self._finder = sources.RecordFinder()  # used only for a payload that is not an Example

  def finish_bundle(self):
    self._finder.close()
    yield beam.pvalue.TaggedOutput("stats", GlobalWindows.windowed_value(self._tally))

  def process(self, element):
    source, index, payload = element
    if not isinstance(payload, Corrupt):
      try:
        prepared = examples.prepare(payload, self._prefix, self._select, self._tally.shapes)
      except ValueError as e:
        offset, kind = self._finder.find(source, index, payload) or (-1, "uncompressed")
        payload = Corrupt(offset, str(e))
        if self._on_corrupt == "fail":
          self._finder.close()
          raise JobError(sources.corrupt_input(source, index, offset, str(e), kind=kind)) from None
      else:
        self._tally.add(source, index, prepared)
        if self._count:
          self._records.inc()
        yield source, index, prepared.payload
        return
    self._tally.add(source, index, None)
    if self._count:
      self._corrupt.inc()
    yield beam.pvalue.TaggedOutput("corrupt", (source, index, payload))


class _CountFn(beam.DoFn):
  """Counts the records read where they are read (it runs in the reading stage, outputs nothing per element):
  one ``(side, count)`` per bundle, with no shuffle of its own."""

  def __init__(self, side: str):
    self._side = side

  def start_bundle(self):
    self._count = 0

  def process(self, element):
    self._count += 1
    return ()

  def finish_bundle(self):
    yield GlobalWindows.windowed_value((self._side, self._count))


class _SideStatsFn(beam.CombineFn):
  """Merges the per-bundle tallies of one side into its ``SideStats``."""

  def create_accumulator(self):
    return _Tally()

  def add_input(self, acc, tally):
    acc.merge(tally)
    return acc

  def merge_accumulators(self, accumulators):
    merged = _Tally()
    for acc in accumulators:
      merged.merge(acc)
    return merged

  def extract_output(self, acc):
    return acc.stats()


# Records between stages: ``(shard, (ordinal * 2 + side, payload))``, integers and bytes with Beam's
# deterministic coders (VarInt, Bytes) instead of pickled tuples.
Routed = Tuple[int, Tuple[int, bytes]]


def _ordinal(plan: planning.Plan, side: int, source: str, index: int) -> int:
  ordinal = plan.ordinal(side, source, index)
  count = plan.left_count if side == 0 else plan.right_count
  if not 0 <= ordinal < count:
    raise RuntimeError(f"record accounting, {SIDES[side]} side: {source} record {index} has ordinal {ordinal}, the "
                       f"plan has {count} record(s); the runner lost or duplicated records before planning")
  return ordinal


def _to_cells(element, side: int, plan: planning.Plan, index_name: Optional[str]):
  """Sends a record to every cell of its row (left) or column (right) that has pairs."""
  if side == 1 and plan.strategy == "broadcast":
    return
  source, index, payload = element
  ordinal = _ordinal(plan, side, source, index)
  if index_name:
    payload = examples.with_int64(examples.from_payload(payload), index_name, ordinal).payload
  chunk = plan.chunk(side, ordinal)
  value = (ordinal * 2 + side, payload)
  for shard in (plan.row_shards(chunk) if side == 0 else plan.column_shards(chunk)):
    yield shard, value


def _broadcast_side(element, plan: planning.Plan, index_name: Optional[str]):
  if plan.strategy == "broadcast":
    source, index, payload = element
    ordinal = _ordinal(plan, 1, source, index)
    if index_name:
      payload = examples.with_int64(examples.from_payload(payload), index_name, ordinal).payload
    yield ordinal, payload


def _check_members(where: str, side: str, ordinals: List[int], expected: range) -> None:
  """A cell holds each record of its row (column) exactly once: any runner loss or duplicate fails it here."""
  if len(ordinals) == len(expected) and (not ordinals or (ordinals[0] == expected.start and
                                                          ordinals[-1] == expected.stop - 1 and
                                                          len(set(ordinals)) == len(ordinals))):
    return
  raise RuntimeError(f"record accounting: {where} received {len(ordinals)} {side} record(s) (distinct "
                     f"{len(set(ordinals))}), the plan routes {len(expected)} to it (ordinals {expected.start}.."
                     f"{expected.stop - 1}); the runner lost or duplicated records between routing and the cell")


def _records(members, with_keys: bool) -> List[Tuple[int, examples.Prepared]]:
  """``(ordinal, Prepared)`` sorted by ordinal; names are read back from the payload only when needed."""
  members.sort(key=lambda member: member[0])
  if with_keys:
    return [(ordinal, examples.from_payload(payload)) for ordinal, payload in members]
  return [(ordinal, examples.Prepared((), (), payload)) for ordinal, payload in members]


class _BroadcastSide:
  """The broadcast right side, sorted by ordinal, one copy per worker process (``shared.Shared``)."""

  def __init__(self, elements, right_count: int, with_keys: bool):
    self.records = _records(list(elements), with_keys)
    _check_members("the broadcast side", "right", [o for o, _ in self.records], range(right_count))


class _WriteCellFn(beam.DoFn):
  """Writes one cell's pairs to a temporary object of its own and reports its name and size."""

  def __init__(self, options: "PairOptions", self_join: Optional[str]):
    self._options = options
    self._self_join = self_join
    self._shared = shared.Shared()  # the broadcast side, built once per worker process
    self._renewed = 0.0
    self._pairs = beam.metrics.Metrics.counter(NAMESPACE, "pairs_written")
    self._bytes = beam.metrics.Metrics.counter(NAMESPACE, "bytes_written")

  def process(self, element, plan: planning.Plan, broadcast):
    shard, members = element
    options, token = self._options, plan.run
    if time.time() - self._renewed > lease.RENEW_SECONDS:
      lease.renew(options.output, token)
      self._renewed = time.time()
    row, col, _ = plan.cells[shard]
    expected = plan.members(row, col)
    with_keys = options.collision in ("left", "right") and bool(plan.collisions)
    sides = ([], [])
    for key, payload in members:
      sides[key & 1].append((key >> 1, payload))
    left = _records(sides[0], with_keys)
    if plan.strategy == "broadcast":
      whole = self._shared.acquire(lambda: _BroadcastSide(broadcast, plan.right_count, with_keys), tag=token)
      right = whole.records[expected[1].start:expected[1].stop]
      if sides[1]:
        raise RuntimeError(f"record accounting: cell {(row, col)} received right records although the right "
                           "side is broadcast")
    else:
      right = _records(sides[1], with_keys)
    _check_members(f"cell {(row, col)}", "left", [o for o, _ in left], expected[0])
    _check_members(f"cell {(row, col)}", "right", [o for o, _ in right], expected[1])
    path = sinks.attempt_path(outputs.temp_dir(options.output, token), shard, plan.shard_count)
    sample = (options.sample_rate, options.seed) if options.sample_rate < 1 else None
    with sinks.open_shard(path, options.output_compression) as out:
      pairs, size = cells.write_cell(left, right, out, self_join=self._self_join, collision=options.collision,
                                     collisions=plan.collisions, sample=sample)
    self._pairs.inc(pairs)
    self._bytes.inc(size)
    yield {"shard": shard, "temp": path, "size": out.count, "pairs": pairs, "record_bytes": size,
           "left": len(left), "right": len(right)}


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
  shards = [r["shard"] for r in results]
  if shards != list(range(len(plan.cells))):
    raise RuntimeError(f"record accounting: the plan has {len(plan.cells)} cells, {len(results)} reported "
                       f"(shards {shards[:10]}{' ...' if len(shards) > 10 else ''})")
  for result, (row, col, pairs) in zip(results, plan.cells):
    expected = plan.members(row, col)
    if (result["left"], result["right"]) != (len(expected[0]), len(expected[1])):
      raise RuntimeError(f"record accounting: cell {(row, col)} reported {result['left']} x {result['right']} "
                         f"records, the plan routes {len(expected[0])} x {len(expected[1])}")
    if plan.sample_rate >= 1 and result["pairs"] != pairs:
      raise RuntimeError(f"record accounting: cell {(row, col)} wrote {result['pairs']} pairs, the plan has "
                         f"{pairs}")


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

  def process(self, plan: planning.Plan, results, corrupt, counts, left_stats, right_stats):
    options, output, token = self._options, self._options.output, plan.run
    results = sorted(results, key=lambda r: r["shard"])
    corrupt = list(corrupt)
    read = collections.Counter()
    for side, count in counts:  # per bundle
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
    summary = {
        "run": token,
        "output": output,
        "left_records": plan.left_count,
        "right_records": plan.right_count,
        "pairs": sum(r["pairs"] for r in results),
        "corrupt_records": len(corrupt),
        "corrupt": [{"file": source, "record": index, "offset": c.offset, "problem": c.problem,
                     "rest_of_file_lost": c.rest_lost} for source, index, c in corrupt],
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
    features = output_schema.output_features(
        (left_stats.features, right_stats.features), (plan.left_count, plan.right_count),
        collision=options.collision, pairs=summary["pairs"], self_join=self._self_join,
        sampled=options.sample_rate < 1, index_names=options.index_names())
    texts = {outputs.schema_path(output): output_schema.to_pbtxt(features)}
    if corrupt:  # the dead-letter list, one JSON object per line, published before the summary announces it
      texts[outputs.dead_letter_path(output)] = "".join(json.dumps(c, sort_keys=True) + "\n"
                                                        for c in summary["corrupt"])
      summary["dead_letter"] = outputs.dead_letter_path(output)
    moves = [(r["temp"], name, r["size"]) for r, name in zip(results, names)]
    summary_text = json.dumps(summary, indent=2, sort_keys=True) + "\n"
    yield json.loads(publish.publish(output, token, lambda: publish.make_manifest(
        output, token, moves, texts, summary_text, options.overwrite)))


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

  def __post_init__(self):
    for flag, value, allowed in (("collision", self.collision, COLLISIONS),
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
    if not self.output:
      raise JobError("--output must name a prefix")
    object.__setattr__(self, "output", outputs.normalize(self.output))

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

  def summary(self, self_join: Optional[str]) -> dict:
    """The summary's ``options``: every flag of the run but the inputs' (those are the summary's ``inputs``), with
    its value or default, so that ``beam_job.verify`` can check the output from the summary alone. The prefixes
    rename features only under ``--collision prefix``; ``self_join`` is ``""`` when --right was given."""
    return {"collision": self.collision, "left_prefix": self.left_prefix, "right_prefix": self.right_prefix,
            "self_join": self_join or "", "output_compression": self.output_compression,
            "target_shard_mb": self.target_shard_mb, "sample_rate": self.sample_rate, "seed": self.seed,
            "left_features": list(self.left_features or []), "right_features": list(self.right_features or []),
            "index_features": self.index_features, "on_corrupt": self.on_corrupt, "max_pairs": self.max_pairs,
            "strategy": self.strategy}


class _PrepareSide(beam.PTransform):
  """Parses each record once into its encoded entries and gathers the side's stats (``planning.SideStats``)."""

  def __init__(self, side: int, options: PairOptions, count: bool):
    super().__init__()
    self._side, self._options, self._count = side, options, count

  def expand(self, records):
    side, options = self._side, self._options
    prepared = records | "Parse" >> beam.ParDo(_PrepareFn(
        side, options.prefixes[side], options.on_corrupt, options.selects[side], self._count)).with_output_types(
            Tuple[str, int, bytes]).with_outputs("corrupt", "stats", main="records")
    stats = prepared.stats | "Stats" >> beam.CombineGlobally(_SideStatsFn())
    return prepared.records, prepared.corrupt, stats


def _plan(left_stats, right_stats, options: dict, run: Optional["_Run"] = None, token: Optional[str] = None):
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


class _Run(NamedTuple):
  output: str
  overwrite: bool
  gzip: bool


def _new_token(_) -> str:
  return uuid.uuid4().hex[:12]


class CrossProduct(beam.PTransform):
  """Writes every pair of two PCollections of ``(source, index, serialized Example)`` as merged Examples.

  Apply it to ``(left, right)``, or to one PCollection to pair it with itself (see ``self_join``). Output is
  ``{output}-SSSSS-of-NNNNN.tfrecord[.gz]``, ``{output}-schema.pbtxt`` and ``{output}-summary.json``, written
  last; the result is a PCollection holding the summary dict (the plan's description with ``dry_run``).
  Records are ordered by ``source`` then ``index``; that order fixes which pairs ``combinations`` keeps and
  the bytes of every shard. Keyword arguments are the fields of ``PairOptions`` (the CLI's flags). ``inputs``
  (``{"compression": ..., "left": {"patterns": [...], "files": {path: size}}, "right": ... or None}``, as the
  CLI matched them) goes into the summary, for ``beam_job.verify``; every source read must be one of its files.
  """

  def __init__(self, output: str, *, dry_run: bool = False, temp_token: Optional[str] = None,
               inputs: Optional[dict] = None, **options):
    super().__init__()
    for name in ("left_features", "right_features"):
      if options.get(name) is not None:
        options[name] = tuple(options[name])
    self._options = PairOptions(output, **options)
    self._dry_run = dry_run
    self._inputs = inputs
    # The run's token names its temporary folder and lease; chosen when the pipeline runs unless a caller that
    # is itself one run (the CLI) passes its own, so that it can clean up after a failure.
    self._token = temp_token

  def expand(self, inputs):
    left, right = inputs if isinstance(inputs, tuple) else (inputs, None)
    running_modes.refuse_lossy_mode(left.pipeline.options, left.pipeline.runner)
    options = self._options
    if right is not None and options.self_join != "product":
      raise JobError("--self_join applies only when --right is omitted")
    self_join = options.self_join if right is None else None
    left_side = left | "PrepareLeft" >> _PrepareSide(0, options, True)
    if right is None and options.prefixes[0] == options.prefixes[1] and options.selects[0] == options.selects[1]:
      right_side = left_side  # a self-join whose sides are prepared alike: prepare once
    else:
      right_side = (left if right is None else right) | "PrepareRight" >> _PrepareSide(1, options, right is not None)
    sides = (left_side, right_side)
    if self._dry_run:
      return (left_side[2] | "Plan" >> beam.Map(_plan, AsSingleton(right_side[2]),
                                                dict(options.plan_options(self_join), dry_run=True))
              | "Describe" >> beam.Map(describe.plan_description, options))
    # The run's token names its lease and temporary folder. Chosen when the pipeline runs (unless the CLI, which
    # is itself one run, passes its own), in a stage of its own: a retried Plan sees the token it began with.
    token = self._token or AsSingleton(left.pipeline | "RunToken" >> beam.Create([None])
                                       | "ChooseToken" >> beam.Map(_new_token))
    run = _Run(options.output, options.overwrite, options.output_compression == "gzip")
    plan = left_side[2] | "Plan" >> beam.Map(_plan, AsSingleton(right_side[2]), options.plan_options(self_join),
                                             run, token)
    index_names = options.index_names()
    routed = [side[0] | f"To{SIDES[i].title()}Cells" >> beam.FlatMap(
        _to_cells, i, AsSingleton(plan), index_names[i]).with_output_types(Routed) for i, side in enumerate(sides)]
    broadcast = right_side[0] | "Broadcast" >> beam.FlatMap(
        _broadcast_side, AsSingleton(plan), index_names[1]).with_output_types(Tuple[int, bytes])
    results = (routed | "FlattenCells" >> beam.Flatten()
               | "GroupCells" >> beam.GroupByKey()
               | "WriteCells" >> beam.ParDo(_WriteCellFn(options, self_join), AsSingleton(plan),
                                            AsIter(broadcast)))
    corrupt = [left_side[1]] + ([right_side[1]] if right is not None else []) | "AllCorrupt" >> beam.Flatten()
    counted = [(left, "left")] + ([(right, "right")] if right is not None else [])
    counts = ([records | f"Count{side.title()}Read" >> beam.ParDo(_CountFn(side))
               for records, side in counted] | "AllCounts" >> beam.Flatten())
    return plan | "Finalize" >> beam.ParDo(_FinalizeFn(options, self_join, self._inputs), AsList(results), AsList(corrupt),
                                           AsList(counts), AsSingleton(left_side[2]), AsSingleton(right_side[2]))

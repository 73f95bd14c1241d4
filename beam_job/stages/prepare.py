"""Prepare: each record parsed, selected and renamed once, and what the plan and the schema need about a side
(``planning.SideStats``) tallied in the same pass; records travel on as bytes only."""

import collections
import logging
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, NamedTuple, Optional, Tuple

import apache_beam as beam
from apache_beam.pvalue import AsIter
from apache_beam.transforms.window import GlobalWindows

from beam_job import blocks, examples, grouping, output_schema, planning, sources
from beam_job.errors import JobError
from beam_job.planning import SIDES
from beam_job.stages import NAMESPACE
from beam_job.stages.read import Corrupt, Record

_LOG = logging.getLogger(__name__)

if TYPE_CHECKING:
  from beam_job.transforms import PairOptions

class _Tally:
  """What a bundle (or several, merged) learned about one side: good records and payload bytes per source,
  corrupt indexes, how many records hold each feature name with each kind and length of value list (for the
  schema, ``examples.prepare``'s shapes), each source's exact indexes (``planning.IndexRuns``), which must
  be 0, 1, 2, ... as ordinals need, and its payload bytes per block of indexes (``planning.SideStats.sizes``)."""

  def __init__(self):
    self.good = collections.Counter()
    self.bad: Dict[str, List[int]] = {}
    self.size = 0
    self.shapes: Dict[tuple, int] = {}
    self.indexes: Dict[str, planning.IndexRuns] = {}
    self.groups = collections.Counter()  # --group_by: encoded key -> good records
    self.sizes: Dict[str, Dict[int, int]] = {}
    self.largest = 0

  def add(self, source: str, index: int, prepared: Optional[examples.Prepared]) -> None:
    if prepared is None:
      self.bad.setdefault(source, []).append(index)
    else:
      size = len(prepared.payload)
      self.good[source] += 1
      self.size += size
      planning.tally_size(self.sizes, source, index, size)
      self.largest = max(self.largest, size)
    runs = self.indexes.get(source)
    if runs is None:
      runs = self.indexes[source] = planning.IndexRuns()
    runs.add(index)

  def merge(self, other: "_Tally") -> None:
    self.good.update(other.good)
    for source, found in other.bad.items():
      self.bad.setdefault(source, []).extend(found)
    self.size += other.size
    self.groups.update(other.groups)
    planning.merge_sizes(self.sizes, other.sizes)
    self.largest = max(self.largest, other.largest)
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
                              payload_bytes=self.size, keys=frozenset(features), features=features,
                              groups=dict(self.groups), sizes=self.sizes, largest=self.largest)


class _PrepareFn(beam.DoFn):
  """Parses, filters and renames each record once, into its payload, and outputs a source's records in blocks,
  ``(source, indexes, lengths, payloads)`` (``beam_job.blocks``); bad payloads go to the ``corrupt`` output.
  What the plan and the schema need is tallied in the same pass and leaves once per bundle (``tallies``), so
  records travel on as bytes only.

  ``views`` are the sides made of these records, ``(side, prefix, select)``: one, or both sides of a self-join
  renamed or selected apart, prepared from the same parse (``examples.prepare_views``). The first view's
  records and tallies are the ``records`` and ``tallies`` outputs, a second's ``right_records`` and
  ``right_tallies``.

  A grouped job (``in_blocks=False``) outputs one record per element, ``(source, index, payload)``. With
  ``group_by`` (the group feature) the record's group key comes from the same parse and travels with it,
  ``(source, index, payload, key)``, and the records per key are tallied; a record without one fails the job
  or, with ``missing_group='skip'``, goes to the ``corrupt`` output marked ``missing_group``."""

  def __init__(self, views: Tuple[Tuple[int, str, Optional[frozenset]], ...], on_corrupt: str, count: bool = True,
               group_by: Optional[str] = None, missing_group: str = "fail", in_blocks: bool = True):
    self._views = views
    self._blocks = in_blocks
    self._side = views[0][0]
    self._group_by = group_by
    self._missing_group = missing_group
    self._missing = beam.metrics.Metrics.counter(NAMESPACE, "missing_group_records")
    self._on_corrupt = on_corrupt
    self._count = count
    self._records = beam.metrics.Metrics.counter(NAMESPACE, f"{SIDES[self._side]}_records")
    self._corrupt = beam.metrics.Metrics.counter(NAMESPACE, "corrupt_records")
    self._tags = [None] + [f"{SIDES[side]}_records" for side, _, _ in views[1:]]

  def start_bundle(self):
    self._tallies = [_Tally() for _ in self._views]
    # What examples.prepare_views takes for each view: its prefix, selection and this bundle's shape counts.
    self._prepare_as = [(prefix, select, tally.shapes) for (_, prefix, select), tally in zip(self._views,
                                                                                            self._tallies)]
    self._finder = sources.RecordFinder()  # used only for a payload that is not an Example
    # Per view, the source whose records are being packed: records of a source arrive together as it is read,
    # so a bundle of many files holds one open block per view, not one per file.
    self._open: List[Tuple[Optional[str], blocks.Packer]] = [(None, blocks.Packer()) for _ in self._views]

  def _pack(self, view: int, tag: Optional[str], source: str, index: int, payload: bytes):
    open_source, packer = self._open[view]
    if source != open_source:
      block = packer.flush()
      if block:
        yield self._block(tag, open_source, block)
      self._open[view] = (source, packer)
    block = packer.add(index, payload)
    if block:
      yield self._block(tag, source, block)

  def _block(self, tag: Optional[str], source: str, block: blocks.Block, windowed: bool = False):
    element = (source, *block)
    if windowed:
      element = GlobalWindows.windowed_value(element)
    return element if tag is None else beam.pvalue.TaggedOutput(tag, element)

  def finish_bundle(self):
    self._finder.close()
    for tag, (source, packer) in zip(self._tags, self._open):
      block = packer.flush()
      if block:
        yield self._block(tag, source, block, windowed=True)
    for (side, _, _), tag, tally in zip(self._views, self._tags, self._tallies):
      yield beam.pvalue.TaggedOutput("tallies" if tag is None else f"{SIDES[side]}_tallies",
                                     GlobalWindows.windowed_value(tally))

  def process(self, element: Record):
    source, index, payload = element
    if not isinstance(payload, Corrupt):
      try:
        prepared, key = examples.prepare_views(payload, self._prepare_as, self._group_by)
      except grouping.MissingKey as e:
        where = f"{SIDES[self._side]} input {source} record {index}"
        if self._missing_group == "fail":
          self._finder.close()
          raise JobError(f"{where}: {e}; --missing_group skip leaves such records out") from None
        offset, _ = self._finder.find(source, index, payload) or (-1, "uncompressed")
        payload = Corrupt(offset, str(e), missing_group=True)
        for tally in self._tallies:
          tally.add(source, index, None)
        if self._count:
          self._missing.inc()
        yield beam.pvalue.TaggedOutput("corrupt", (source, index, payload))
        return
      except ValueError as e:
        offset, kind = self._finder.find(source, index, payload) or (-1, "uncompressed")
        payload = Corrupt(offset, str(e))
        if self._on_corrupt == "fail":
          self._finder.close()
          raise JobError(sources.corrupt_input(source, index, offset, str(e), kind=kind)) from None
        _LOG.warning("skipping corrupt input %s", sources.describe_record(source, index, offset, str(e), kind=kind))
      else:
        if self._count:
          self._records.inc()
        for i, (view, tag, tally) in enumerate(zip(prepared, self._tags, self._tallies)):
          tally.add(source, index, view)
          if self._blocks:
            yield from self._pack(i, tag, source, index, view.payload)
            continue
          if key is not None:
            tally.groups[key] += 1
          record = (source, index, view.payload) if key is None else (source, index, view.payload, key)
          yield record if tag is None else beam.pvalue.TaggedOutput(tag, record)
        return
    for tally in self._tallies:
      tally.add(source, index, None)
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

  def process(self, element: Record) -> Iterable[Tuple[str, int]]:
    self._count += 1
    return ()

  def finish_bundle(self):
    yield GlobalWindows.windowed_value((self._side, self._count))


def _side_stats(tallies: Iterable[_Tally]) -> planning.SideStats:
  merged = _Tally()
  for tally in tallies:
    merged.merge(tally)
  return merged.stats()


def _both_stats(_, left: Iterable[_Tally], right: Iterable[_Tally],
                same: bool) -> Tuple[planning.SideStats, planning.SideStats]:
  stats = _side_stats(left)
  return stats, stats if same else _side_stats(right)


class GatherStats(beam.PTransform):
  """Applied to the two sides' per-bundle tallies (``PreparedSide.tallies``; the same PCollection twice for a
  self-join prepared once): one ``(left, right)`` pair of ``planning.SideStats``, a singleton.

  One step merges the tallies as it iterates them (``AsIter``), driven by an impulse, so the pair exists even
  when a side has no bundle at all; a ``CombineGlobally`` per side would cost several stages each."""

  def expand(self, tallies) -> beam.PCollection[Tuple[planning.SideStats, planning.SideStats]]:
    left, right = tallies
    return (left.pipeline | "Start" >> beam.Create([None])
            | "Merge" >> beam.Map(_both_stats, AsIter(left), AsIter(right), left is right))


class PreparedSide(NamedTuple):
  """What ``PrepareSide`` makes of one side's records."""
  records: beam.PCollection  # blocks of prepared payloads, (source, *blocks.Block); one record per element when
  # grouped: (source, index, payload) and its key with --group_by
  corrupt: beam.PCollection  # of (source, index, Corrupt), for the dead-letter list
  tallies: beam.PCollection  # what each bundle learned about the side, for GatherStats
  read: Optional[beam.PCollection]  # of (side name, records read) per bundle; None unless the side is read here


class PrepareSide(beam.PTransform):
  """Parses each record once into its encoded entries and gathers the side's stats (``planning.SideStats``).

  ``read`` says that these records are the side's own (not the left side's, paired with itself): only then
  are they counted, in Beam counters and in ``PreparedSide.read`` for the accounting of ``Finalize``.
  ``both=True`` prepares a self-join's two sides, renamed or selected apart, from the one parse of each
  record: the result is then a pair of ``PreparedSide`` (the right one with no reading of its own)."""

  def __init__(self, side: int, options: "PairOptions", read: bool, both: bool = False):
    super().__init__()
    self._side, self._options, self._read, self._both = side, options, read, both

  def expand(self, records: beam.PCollection[Record]):  # -> PreparedSide (Beam reads only PCollection hints)
    side, options = self._side, self._options
    group_by = options.group_names[side] if options.group_names else None
    views = tuple((s, options.prefixes[s], options.selects[s]) for s in ((0, 1) if self._both else (side,)))
    in_blocks = not options.grouped
    record_type = (Tuple[str, bytes, bytes, bytes] if in_blocks else Tuple[str, int, bytes] if group_by is None
                   else Tuple[str, int, bytes, bytes])
    tagged = {"corrupt": Any, "tallies": Any}
    if self._both:
      tagged.update(right_records=record_type, right_tallies=Any)
    prepared = records | "Parse" >> beam.ParDo(_PrepareFn(
        views, options.on_corrupt, self._read, group_by, options.missing_group, in_blocks)).with_output_types(
            record_type, **tagged).with_outputs(*tagged, main="records")
    read = records | "CountRead" >> beam.ParDo(_CountFn(SIDES[side])) if self._read else None
    first = PreparedSide(prepared.records, prepared.corrupt, prepared.tallies, read)
    if not self._both:
      return first
    return first, PreparedSide(prepared.right_records, prepared.corrupt, prepared.right_tallies, None)

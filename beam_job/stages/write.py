"""Write cells: each record routed to the cells of its row (left) or column (right), or, for a sampled grid
routed by its kept pairs, to the cells where it keeps a pair (``sparse_cells``), each cell's records grouped,
and each cell written, where it is computed, to a temporary shard of its own."""

import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.pvalue import AsIter, AsSingleton
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils import shared

from beam_job import blocks, cells, examples, grouping, lease, outputs, planning, sampling, sinks, sparse_cells
from beam_job.planning import SIDES
from beam_job.stages import NAMESPACE

if TYPE_CHECKING:
  from beam_job.transforms import PairOptions

# Records between stages: ``(shard, (ordinal * 2 + side, payload))``, integers and bytes with Beam's
# deterministic coders (VarInt, Bytes) instead of pickled tuples.
Routed = Tuple[int, Tuple[int, bytes]]
# Kept-pair routing (``Plan.sparse``) joins on right ordinals: ``(right ordinal, (shard, b""))`` asks for a right
# record in a cell, ``(right ordinal, (OFFERED, payload))`` is the record; ``(shard, (MARKER, b""))`` reaches
# every cell once, so that each cell is written (and checks its records) even when nothing is routed to it.
Wanted = Tuple[int, Tuple[int, bytes]]
OFFERED = MARKER = -1
Prepared = Tuple[str, int, bytes]  # a prepared record: (source, index, payload)
PreparedBlock = Tuple[str, bytes, bytes, bytes]  # prepared records of one source: (source, *blocks.Block)
# Grouped (--group_by, --pairs_per_left): ``(shard, (key, ordinal * 2 + side, payload))``, the encoded group key
# too, since a shard may hold many groups; and ``((key, ordinal // RANK_BLOCK), (ordinal, payload))`` on the way
# to a rank, for the records of groups cut along their side.
GroupRouted = Tuple[int, Tuple[bytes, int, bytes]]
ToRank = Tuple[Tuple[bytes, int], Tuple[int, bytes]]


def _ordinal(plan: planning.Plan, side: int, source: str, index: int) -> int:
  ordinal = plan.ordinal(side, source, index)
  count = plan.left_count if side == 0 else plan.right_count
  if not 0 <= ordinal < count:
    raise RuntimeError(f"record accounting, {SIDES[side]} side: {source} record {index} has ordinal {ordinal}, the "
                       f"plan has {count} record(s); the runner lost or duplicated records before planning")
  return ordinal


def _indexed(element: Prepared, side: int, plan: planning.Plan, index_name: Optional[str]) -> Tuple[int, bytes]:
  """The record's ordinal and payload, with the ordinal as feature ``index_name`` (``--index_features``)."""
  source, index, payload = element
  ordinal = _ordinal(plan, side, source, index)
  if index_name:
    payload = examples.with_int64(examples.from_payload(payload), index_name, ordinal).payload
  return ordinal, payload


def _to_cells(element: Prepared, side: int, plan: planning.Plan, index_name: Optional[str]) -> Iterator[Routed]:
  """Sends a record to every cell of its row (left) or column (right) that has pairs."""
  ordinal, payload = _indexed(element, side, plan, index_name)
  chunk = plan.chunk(side, ordinal)
  value = (ordinal * 2 + side, payload)
  for shard in (plan.row_shards(chunk) if side == 0 else plan.column_shards(chunk)):
    yield shard, value


def _to_kept_cells(element: Prepared, side: int, plan: planning.Plan, index_name: Optional[str], seed: int):
  """Kept-pair routing: a left record to the cells where it keeps pairs, asking (on the ``wanted`` output) for
  each kept right record there; a right record to the join on its ordinal."""
  ordinal, payload = _indexed(element, side, plan, index_name)
  if side == 1:
    yield beam.pvalue.TaggedOutput("wanted", (ordinal, (OFFERED, payload)))
    return
  for shard, kept in sparse_cells.left_cells(plan, seed, ordinal):
    yield shard, (ordinal * 2, payload)
    for right in kept:
      yield beam.pvalue.TaggedOutput("wanted", (right, (shard, b"")))


def _deliver(element: Tuple[int, Iterable[Tuple[int, bytes]]]) -> Iterator[Routed]:
  """A right record to each cell that asked for it (kept-pair routing); it must have arrived exactly once."""
  ordinal, values = element
  payloads, shards = [], set()
  for shard, payload in values:
    if shard == OFFERED:
      payloads.append(payload)
    else:
      shards.add(shard)
  if len(payloads) != 1:
    raise RuntimeError(f"record accounting: right record {ordinal} reached the join on right ordinals "
                       f"{len(payloads)} time(s), asked for by {len(shards)} cell(s); the runner lost or duplicated "
                       "records between routing and the join")
  for shard in sorted(shards):
    yield shard, (ordinal * 2 + 1, payloads[0])


def _markers(plan: planning.Plan) -> Iterator[Routed]:
  if plan.sparse:
    for shard in range(len(plan.cells)):
      yield shard, (MARKER, b"")


class _RouteFn(beam.DoFn):
  """Routes the prepared records of each block, ``(tag, (source, indexes, lengths, payloads))`` (``blocks``), as
  each side ``routes[tag]`` names (both for a self-join's one PCollection): to the cells of its row or column
  (of its kept pairs, ``Plan.sparse``, with the right side to the ``wanted`` output), or, for the right side of
  a broadcast plan, into the blocks of the ``broadcast`` output, numbered by ordinal (a side input each worker
  holds whole, so it stays in blocks: see ``blocks`` for why)."""

  def __init__(self, routes: Dict[int, Tuple[int, ...]], index_names: Tuple[Optional[str], Optional[str]],
               seed: int):
    self._routes = routes
    self._index_names = index_names
    self._seed = seed

  def start_bundle(self):
    self._broadcast = blocks.Packer()

  def process(self, tagged: Tuple[int, PreparedBlock], plan: planning.Plan):
    tag, (source, indexes, lengths, packed) = tagged
    sides = self._routes[tag]
    for index, payload in blocks.unpack((indexes, lengths, packed)):
      yield from self._route((source, index, payload), sides, plan)

  def _route(self, element: Prepared, sides: Tuple[int, ...], plan: planning.Plan):
    for side in sides:
      if side == 1 and plan.strategy == "broadcast":
        block = self._broadcast.add(*_indexed(element, 1, plan, self._index_names[1]))
        if block:
          yield beam.pvalue.TaggedOutput("broadcast", block)
      elif plan.sparse:
        yield from _to_kept_cells(element, side, plan, self._index_names[side], self._seed)
      else:
        yield from _to_cells(element, side, plan, self._index_names[side])

  def finish_bundle(self):
    block = self._broadcast.flush()
    if block:
      yield beam.pvalue.TaggedOutput("broadcast", GlobalWindows.windowed_value(block))


def _check_members(where: str, side: str, ordinals: Sequence[int], expected: Sequence[int]) -> None:
  """A cell holds exactly the records the plan routes to it (``ordinals`` sorted): those of its row (column), or
  of its kept pairs; any runner loss or duplicate fails it here."""
  if len(ordinals) == len(expected) and all(a == b for a, b in zip(ordinals, expected)):
    return
  which = (f"ordinals {expected.start}..{expected.stop - 1}" if isinstance(expected, range) else
           "those with kept pairs")
  raise RuntimeError(f"record accounting: {where} received {len(ordinals)} {side} record(s) (distinct "
                     f"{len(set(ordinals))}), the plan routes {len(expected)} to it ({which}); the runner lost or "
                     "duplicated records between routing and the cell")


def _kept_columns(plan: planning.Plan, seed: int, row: int, col: int, markers: int,
                  left: List[Tuple[int, Any]], right: List[Tuple[int, Any]]) -> Callable[[int], List[int]]:
  """A cell routed by kept pairs: checks that it holds exactly the records of its kept pairs (worked out again
  from the sampling) and its one marker; returns, for ``cells.write_reference``, the positions in ``right``
  paired with each position in ``left``: the pairs, in the order, that sampling the whole cell gives."""
  where = f"cell {(row, col)}"
  if markers != 1:
    raise RuntimeError(f"record accounting: {where} received its marker {markers} time(s); the runner lost or "
                       "duplicated records between routing and the cell")
  kept_rows = sparse_cells.cell_rows(plan, seed, row, col)
  _check_members(where, "left", [o for o, _ in left], [o for o, _ in kept_rows])
  _check_members(where, "right", [o for o, _ in right], sparse_cells.cell_columns(kept_rows))
  position = {ordinal: j for j, (ordinal, _) in enumerate(right)}
  return lambda i: [position[ordinal] for ordinal in kept_rows[i][1]]


def _records(members: List[Tuple[int, bytes]], with_keys: bool) -> List[Tuple[int, examples.Prepared]]:
  """``(ordinal, Prepared)`` sorted by ordinal; names are read back from the payload only when needed."""
  members.sort(key=lambda member: member[0])
  if with_keys:
    return [(ordinal, examples.from_payload(payload)) for ordinal, payload in members]
  return [(ordinal, examples.Prepared((), (), payload)) for ordinal, payload in members]


class _BroadcastSide:
  """The broadcast right side in ordinal order, one copy per worker process (``shared.Shared``), each record
  placed at its ordinal as its block is read: no sort, and a record missing or received twice fails the job.
  Held as payloads alone (a cell takes a ``cells.Run`` of them), or as ``(ordinal, Prepared)`` records when the
  merge needs their names (``--collision left`` or ``right`` with colliding names)."""

  def __init__(self, broadcast: Iterable[blocks.Block], right_count: int, with_keys: bool):
    payloads: List[Optional[bytes]] = [None] * right_count
    received = 0
    for block in broadcast:
      for ordinal, payload in blocks.unpack(block):
        received += 1
        if not 0 <= ordinal < right_count or payloads[ordinal] is not None:
          raise RuntimeError(f"record accounting: the broadcast side received right record {ordinal} "
                             f"{'twice' if 0 <= ordinal < right_count else 'which the plan does not have'} (the "
                             f"plan has {right_count}); the runner lost or duplicated records")
        payloads[ordinal] = payload
    if received != right_count:
      raise RuntimeError(f"record accounting: the broadcast side received {received} right record(s), the plan "
                         f"has {right_count}; the runner lost or duplicated records between routing and the cell")
    self._payloads = None if with_keys else payloads
    self._records = [(ordinal, examples.from_payload(payload)) for ordinal, payload in enumerate(payloads)] if (
        with_keys) else None

  def columns(self, span: range) -> Union[cells.Run, List[Tuple[int, examples.Prepared]]]:
    """The right records of a cell's column range."""
    if self._records is not None:
      return self._records[span.start:span.stop]
    return cells.Run(span.start, self._payloads[span.start:span.stop])


class _WriteCellFn(beam.DoFn):
  """Writes one cell's pairs to a temporary object of its own and reports its name and size."""

  def __init__(self, options: "PairOptions", self_join: Optional[str]):
    self._options = options
    self._self_join = self_join
    self._shared = shared.Shared()  # the broadcast side, built once per worker process
    self._renewed = 0.0
    self._pairs = beam.metrics.Metrics.counter(NAMESPACE, "pairs_written")
    self._bytes = beam.metrics.Metrics.counter(NAMESPACE, "bytes_written")

  def process(self, element: Tuple[int, Iterable[Tuple[int, bytes]]], plan: planning.Plan,
              broadcast: Iterable[blocks.Block]) -> Iterable[Dict[str, Any]]:
    shard, members = element
    options, token = self._options, plan.run
    if time.time() - self._renewed > lease.RENEW_SECONDS:
      lease.renew(options.output, token)
      self._renewed = time.time()
    row, col, _ = plan.cells[shard]
    expected = plan.members(row, col)
    with_keys = options.collision in ("left", "right") and bool(plan.collisions)
    sides, markers = ([], []), 0
    for key, payload in members:
      if key == MARKER:
        markers += 1
      else:
        sides[key & 1].append((key >> 1, payload))
    left = _records(sides[0], with_keys)
    columns = None
    if plan.strategy == "broadcast":
      whole = self._shared.acquire(lambda: _BroadcastSide(broadcast, plan.right_count, with_keys), tag=token)
      right = whole.columns(expected[1])
      if sides[1]:
        raise RuntimeError(f"record accounting: cell {(row, col)} received right records although the right "
                           "side is broadcast")
    else:
      right = _records(sides[1], with_keys)
    if plan.sparse:
      columns = _kept_columns(plan, options.seed, row, col, markers, left, right)
    else:
      _check_members(f"cell {(row, col)}", "left", [o for o, _ in left], expected[0])
      _check_members(f"cell {(row, col)}", "right", right.ordinals if isinstance(right, cells.Run) else [
          o for o, _ in right], expected[1])
    path = sinks.attempt_path(outputs.temp_dir(options.output, token), shard, plan.shard_count)
    merge = {"self_join": self._self_join, "collision": options.collision, "collisions": plan.collisions}
    with sinks.open_shard(path, options.output_compression) as out:
      if columns is not None:
        pairs, size = cells.write_reference(left, right, out, columns=columns, **merge)
      else:
        sample = (options.sample_rate, options.seed) if options.sample_rate < 1 else None
        pairs, size = cells.write_cell(left, right, out, sample=sample, **merge)
    self._pairs.inc(pairs)
    self._bytes.inc(size)
    yield {"shard": shard, "temp": path, "size": out.count, "pairs": pairs, "record_bytes": size,
           "left": len(left), "right": len(right)}


# --- grouped: --group_by and --pairs_per_left --------------------------------------------------------------


def _key(element) -> bytes:
  """A grouped record's key: its group's, or the one group of --pairs_per_left without --group_by."""
  return element[3] if len(element) == 4 else grouping.WHOLE


def _to_group_cells(element, side: int, plan: planning.Plan, index_name: Optional[str]) -> Iterator[GroupRouted]:
  """Sends a record to the cells of its group's row (left) or column (right): the group's one cell when it is
  packed, else by its rank, which is its ordinal without --group_by. A record whose group is cut along its side
  goes through ``_to_rank`` first; a record of a group without pairs goes nowhere."""
  grouped, key = plan.grouped, _key(element)
  if grouped.index(key) is None or (key != grouping.WHOLE and grouped.needs_rank(side, key)):
    return
  ordinal, payload = _indexed(element[:3], side, plan, index_name)
  value = (key, ordinal * 2 + side, payload)
  for shard in grouped.shards(side, key, ordinal if key == grouping.WHOLE else 0):
    yield shard, value


def _to_rank(element, side: int, plan: planning.Plan, index_name: Optional[str]) -> Iterator[ToRank]:
  key = _key(element)
  if key == grouping.WHOLE or not plan.grouped.needs_rank(side, key):
    return
  ordinal, payload = _indexed(element[:3], side, plan, index_name)
  yield (key, ordinal // grouping.RANK_BLOCK), (ordinal, payload)


def _ranked(element: Tuple[Tuple[bytes, int], Iterable[Tuple[int, bytes]]], side: int, plan: planning.Plan,
            bases: Dict[Tuple[bytes, int], int]) -> Iterator[GroupRouted]:
  """The records of one block of a cut group (at most ``RANK_BLOCK``), ranked: the block's base plus their
  position by ordinal (records keep the side's order within a group), then sent as ``_to_group_cells``."""
  (key, block), members = element
  base = bases[(key, block)]
  for position, (ordinal, payload) in enumerate(sorted(members, key=lambda member: member[0])):
    value = (key, ordinal * 2 + side, payload)
    for shard in plan.grouped.shards(side, key, base + position):
      yield shard, value


class _RouteGroups(beam.PTransform):
  """One side's records to their cells (``GroupRouted``), ranking those of groups cut along the side: their
  (key, block) counts give each block's first rank (``grouping.rank_bases``), a small side input."""

  def __init__(self, side: int, plan: beam.PCollection, index_name: Optional[str]):
    super().__init__()
    self._side, self._plan, self._index_name = side, plan, index_name

  def expand(self, records):
    side, plan = self._side, AsSingleton(self._plan)
    direct = records | "Direct" >> beam.FlatMap(_to_group_cells, side, plan, self._index_name).with_output_types(
        GroupRouted)
    to_rank = records | "ToRank" >> beam.FlatMap(_to_rank, side, plan, self._index_name).with_output_types(ToRank)
    bases = (to_rank | "Blocks" >> beam.Keys().with_output_types(Tuple[bytes, int])
             | "CountBlocks" >> beam.combiners.Count.PerElement()
             | "BlockTable" >> beam.combiners.ToDict()
             | "Bases" >> beam.Map(grouping.rank_bases))
    ranked = (to_rank | "GroupBlocks" >> beam.GroupByKey()
              | "Rank" >> beam.FlatMap(_ranked, side, plan, AsSingleton(bases)).with_output_types(GroupRouted))
    return (direct, ranked) | "Routed" >> beam.Flatten()


def _check_group(where: str, side: str, ordinals: List[int], expected: range) -> None:
  if len(ordinals) == len(expected) and len(set(ordinals)) == len(ordinals):
    return
  raise RuntimeError(f"record accounting: {where} received {len(ordinals)} {side} record(s) (distinct "
                     f"{len(set(ordinals))}), the plan routes {len(expected)} to it (ranks {expected.start}.."
                     f"{expected.stop - 1}); the runner lost or duplicated records between routing and the cell")


def write_member(grouped: grouping.GroupedPlan, member: grouping.Member, left: List[Tuple[int, examples.Prepared]],
                 right: List[Tuple[int, examples.Prepared]], out, options: "PairOptions", self_join: Optional[str],
                 collisions: Tuple[str, ...]) -> Tuple[int, int]:
  """Writes one group's part of a cell (``left`` and ``right``: its records as ``(ordinal, Prepared)`` sorted by
  ordinal, the ranks of ``member``); returns (pairs, bytes). Records are named by rank within the group (so that
  a self-join's step compares ranks); a draw (--pairs_per_left) or a sample is seeded by the left record's
  ordinal, so the pairs do not depend on the cells. ``beam_job.verify`` writes the same to compare."""
  ordinals = [ordinal for ordinal, _ in left]
  left = [(member.left.start + i, record) for i, (_, record) in enumerate(left)]
  right = [(member.right.start + j, record) for j, (_, record) in enumerate(right)]
  merge = {"self_join": self_join, "collision": options.collision, "collisions": collisions}
  k, seed, start, stop = options.pairs_per_left, options.seed, member.right.start, member.right.stop
  if k is not None:
    count = grouped.rights[grouped.index(member.key)]

    def columns(i):
      rank = member.left.start + i
      first = grouping.first_candidate(rank, self_join)
      return [first + p - start for p in sampling.pick_in(
          seed, ordinals[i], k, grouping.eligible(rank, count, self_join), start - first, stop - first)]
  elif options.sample_rate < 1:
    step = planning.MIN_STEP.get(self_join)

    def columns(i):
      begin = start if step is None else max(start, member.left.start + i + step)
      return [rank - start for rank in sampling.kept_columns(seed, options.sample_rate, ordinals[i], begin, stop)]
  else:
    return cells.write_cell(left, right, out, **merge)
  return cells.write_reference(left, right, out, columns=columns, **merge)


class _WriteGroupCellFn(beam.DoFn):
  """Writes one cell of a grouped plan: its groups in key order, each group's part as a cell of its own
  (left rank, then right rank), all to one temporary shard."""

  def __init__(self, options: "PairOptions", self_join: Optional[str]):
    self._options = options
    self._self_join = self_join
    self._renewed = 0.0
    self._pairs = beam.metrics.Metrics.counter(NAMESPACE, "pairs_written")
    self._bytes = beam.metrics.Metrics.counter(NAMESPACE, "bytes_written")

  def process(self, element: Tuple[int, Iterable[Tuple[bytes, int, bytes]]],
              plan: planning.Plan) -> Iterable[Dict[str, Any]]:
    shard, values = element
    options, token, grouped = self._options, plan.run, plan.grouped
    if time.time() - self._renewed > lease.RENEW_SECONDS:
      lease.renew(options.output, token)
      self._renewed = time.time()
    cell = grouped.cell(shard)
    by_key = {member.key: ([], []) for member in cell.members}
    for key, code, payload in values:
      if key not in by_key:
        raise RuntimeError(f"record accounting: cell {shard} received a record of group "
                           f"{grouping.display_key(key) if key else '(all)'}, which the plan puts elsewhere")
      by_key[key][code & 1].append((code >> 1, payload))
    with_keys = options.collision in ("left", "right") and bool(plan.collisions)
    path = sinks.attempt_path(outputs.temp_dir(options.output, token), shard, plan.shard_count)
    pairs = size = 0
    with sinks.open_shard(path, options.output_compression) as out:
      for member in cell.members:
        left, right = (_records(records, with_keys) for records in by_key[member.key])
        where = f"cell {shard} (group {grouping.display_key(member.key) if member.key else '(all)'})"
        _check_group(where, "left", [o for o, _ in left], member.left)
        _check_group(where, "right", [o for o, _ in right], member.right)
        written = write_member(grouped, member, left, right, out, options, self._self_join, plan.collisions)
        pairs += written[0]
        size += written[1]
    self._pairs.inc(pairs)
    self._bytes.inc(size)
    # The records received (not the plan's own numbers), so that Finalize's check compares two counts.
    yield {"shard": shard, "temp": path, "size": out.count, "pairs": pairs, "record_bytes": size,
           "left": sum(len(lefts) for lefts, _ in by_key.values()),
           "right": sum(len(rights) for _, rights in by_key.values())}


class WriteCells(beam.PTransform):
  """Applied to ``(left, right)`` prepared records (in blocks, ``PreparedBlock``; one record per element when
  grouped, ``Prepared`` and its key): writes every cell of ``plan`` (the ``Plan`` singleton) to a
  temporary shard and outputs one result per cell (shard, temporary name, size, pairs, records per side).

  A grid sends each record to the cells of its row or column; a broadcast plan sends the left records to their
  row's cells and the whole right side to every worker, as a side input; a sampled grid routed by its kept pairs
  sends each left record to the cells where it keeps pairs and each right record, through a join on right
  ordinals, to the cells that ask for it (``sparse_cells``)."""

  def __init__(self, options: "PairOptions", self_join: Optional[str], plan: beam.PCollection[planning.Plan]):
    super().__init__()
    self._options, self._self_join, self._plan = options, self_join, plan

  def expand(self, records) -> beam.PCollection[Dict[str, Any]]:
    plan, index_names = self._plan, self._options.index_names()
    if self._options.grouped:
      routed = [side | f"To{SIDES[i].title()}GroupCells" >> _RouteGroups(i, plan, index_names[i])
                for i, side in enumerate(records)]
      return (routed | "FlattenCells" >> beam.Flatten()
              | "GroupCells" >> beam.GroupByKey()
              | "WriteCell" >> beam.ParDo(_WriteGroupCellFn(self._options, self._self_join), AsSingleton(plan)))
    # One routing pass over both sides' records, tagged with their side (a self-join's one PCollection is routed
    # as both sides at once): routing them apart would cost two stages more.
    if records[0] is records[1]:
      routes, inputs = {0: (0, 1)}, [records[0]]
    else:
      routes, inputs = {0: (0,), 1: (1,)}, records
    tagged = ([pcoll | f"Tag{SIDES[i].title()}" >> beam.Map(lambda block, tag: (tag, block), i).with_output_types(
        Tuple[int, PreparedBlock]) for i, pcoll in enumerate(inputs)] | "BothSides" >> beam.Flatten())
    routed = tagged | "ToCells" >> beam.ParDo(_RouteFn(routes, index_names, self._options.seed),
                                              AsSingleton(plan)).with_output_types(
        Routed, broadcast=blocks.Block, wanted=Wanted).with_outputs("broadcast", "wanted", main="cells")
    to_cells = routed.cells
    # The plan may route by kept pairs: right records go where asked for. (The local runner materializes this
    # Flatten, one more pass over the routed records; Dataflow and Flink fuse it into its producers.)
    if planning.may_route_by_kept_pairs(self._options.sample_rate, self._options.strategy):
      delivered = routed.wanted | "JoinWanted" >> beam.GroupByKey() | "Deliver" >> beam.FlatMap(
          _deliver).with_output_types(Routed)
      markers = plan | "Markers" >> beam.FlatMap(_markers).with_output_types(Routed)
      to_cells = (to_cells, delivered, markers) | "ToKeptCells" >> beam.Flatten()
    return (to_cells
            | "GroupCells" >> beam.GroupByKey()
            | "WriteCell" >> beam.ParDo(_WriteCellFn(self._options, self._self_join), AsSingleton(plan),
                                        AsIter(routed.broadcast)))

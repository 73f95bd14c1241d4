"""A sampled grid routed by its kept pairs (``Plan.sparse``): each record reaches exactly the cells where it keeps
a pair, the shards are byte-identical to routing every record to its whole row and column, the shuffle shrinks
to about the output's size, and a record lost or repeated on the new paths fails the job."""

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from beam_job import cli, planning, sampling, sparse_cells
from beam_job.stages import write
from tests.helpers import make_example, parse, read_tfrecords, write_tfrecord

MODES = (None, "product", "combinations", "combinations_with_replacement")


def _plan(n, m, row_chunk, col_chunk, self_join, rate):
  if self_join is not None:  # a self-join's grid is square, over one side
    m, col_chunk = n, row_chunk
  return planning.Plan(strategy="grid", self_join=self_join, left_count=n, right_count=m, row_chunk=row_chunk,
                       col_chunk=col_chunk, offsets=({}, {}), bad=({}, {}), collisions=(), pairs=0,
                       estimated_bytes=0, sample_rate=rate, sparse=True)


def _kept_pairs(plan, seed):
  """Every kept pair, from the sampling alone, as a nested loop would find them."""
  step = planning.MIN_STEP.get(plan.self_join)
  return {(i, j) for i in range(plan.left_count)
          for j in sampling.kept_columns(seed, plan.sample_rate, i, 0 if step is None else i + step,
                                         plan.right_count)}


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 60), st.integers(0, 60), st.integers(1, 25), st.integers(1, 25), st.sampled_from(MODES),
       st.sampled_from([0.01, 0.1, 0.3, 0.9]), st.integers(-5, 5))
def test_left_records_reach_exactly_the_cells_that_work_out_their_kept_pairs(n, m, row_chunk, col_chunk,
                                                                           self_join, rate, seed):
  plan = _plan(n, m, row_chunk, col_chunk, self_join, rate)
  routed = {}  # shard -> [(left ordinal, kept right ordinals)], as routing sends them
  for i in range(plan.left_count):
    shards = [shard for shard, _ in sparse_cells.left_cells(plan, seed, i)]
    assert shards == sorted(set(shards))
    for shard, kept in sparse_cells.left_cells(plan, seed, i):
      routed.setdefault(shard, []).append((i, kept))
  everything = set()
  for shard, (row, col, _) in enumerate(plan.cells):
    kept_rows = sparse_cells.cell_rows(plan, seed, row, col)
    assert routed.pop(shard, []) == kept_rows
    rows, cols = plan.members(row, col)
    for i, kept in kept_rows:
      assert i in rows and kept and all(j in cols for j in kept)
      everything.update((i, j) for j in kept)
    assert sparse_cells.cell_columns(kept_rows) == sorted({j for _, kept in kept_rows for j in kept})
  assert not routed  # no record went to a shard the plan does not have
  assert everything == _kept_pairs(plan, seed)


def _stats(count, record_bytes):
  return planning.SideStats(good={"f": count}, bad={}, payload_bytes=count * record_bytes, keys=frozenset())


def _make(n, m, record_bytes, **options):
  options = dict({"strategy": "grid", "self_join": None, "collision": "error", "prefixes": ("", ""),
                  "max_pairs": planning.MAX_PAIRS, "target_shard_bytes": 256 << 20}, **options)
  return planning.make_plan(_stats(n, record_bytes), _stats(m, record_bytes), **options)


def test_a_sparse_sample_is_routed_by_its_kept_pairs_and_moves_about_the_output():
  plan = _make(10 ** 7, 10 ** 7, 10_000, sample_rate=1e-7)
  assert plan.sparse and plan.grid["routed_by_kept_pairs"]
  whole = dataclasses.replace(plan, sparse=False)
  assert whole.shuffle_bytes > 100e12  # every record to each of its row's (column's) ~750 cells
  assert plan.shuffle_bytes < 2 * plan.estimated_bytes < whole.shuffle_bytes / 200
  assert plan.shuffle_bytes == plan.sparse_shuffle_bytes
  small = _make(10 ** 5, 10 ** 5, 10_000, sample_rate=1e-5)
  assert small.sparse and small.shuffle_bytes < dataclasses.replace(small, sparse=False).shuffle_bytes / 4


@pytest.mark.parametrize("n, m, options, sparse", [
    (10 ** 5, 10 ** 5, {}, False),  # unsampled: every cell keeps every pair
    (20, 500_000, {"strategy": "broadcast", "sample_rate": 1e-3}, False),  # the right side is everywhere already
    (2000, 2000, {"sample_rate": 0.5}, False),  # dense: nearly every cell keeps pairs of each record
    (20_000, 20_000, {"sample_rate": 1e-4}, False),  # 56% of the bytes: not worth a shuffle more
    (2000, 2000, {"sample_rate": 1e-4}, True),  # 18%
    (2000, 2000, {"sample_rate": 1e-4, "self_join": "combinations"}, True),
])
def test_only_sparse_sampled_grids_are_routed_by_kept_pairs(n, m, options, sparse):
  plan = _make(n, m, 100, **options)
  assert plan.sparse == sparse and plan.grid.get("routed_by_kept_pairs", False) == sparse
  whole = dataclasses.replace(plan, sparse=False).shuffle_bytes
  assert (plan.sparse_shuffle_bytes <= planning.SPARSE_MAX_SHARE * whole) == sparse
  assert plan.shuffle_bytes == (plan.sparse_shuffle_bytes if sparse else whole)


@pytest.mark.parametrize("rate, record_bytes", [(1e-3, 10), (1e-4, 1000), (0.02, 50)])
def test_the_sparse_estimate_is_what_routing_moves(rate, record_bytes):
  """The estimate behind the choice, against the elements routing by kept pairs really sends for a plan: left
  records to their cells, each right record to the join and on to the cells that ask, a request per kept pair
  and a marker per cell."""
  plan = dataclasses.replace(_make(3000, 2000, record_bytes, sample_rate=rate), sparse=True)
  left_sent = requests = 0
  asked = set()
  for i in range(plan.left_count):
    for shard, kept in sparse_cells.left_cells(plan, 1, i):
      left_sent += 1
      requests += len(kept)
      asked.update((shard, j) for j in kept)
  moved = (record_bytes * (left_sent + plan.right_count + len(asked))
           + planning.REQUEST_BYTES * (requests + len(plan.cells)))
  assert abs(plan.sparse_shuffle_bytes - moved) <= 0.1 * moved


# --- end to end ---------------------------------------------------------------------------------------------

N_LEFT, N_RIGHT, RATE, SEED = 220, 180, 0.004, 5


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  folder = tmp_path_factory.mktemp("sparse")
  write_tfrecord(str(folder / "left.tfrecord"), [make_example({"u": [i], "k": [b"l%d" % i]} if i % 3 else {"u": [i]})
                                                 for i in range(N_LEFT)])
  write_tfrecord(str(folder / "right.tfrecord"), [make_example({"v": [j * 0.5], "k": [b"r%d" % j]}) for j in
                                                  range(N_RIGHT)])
  return ["--left", str(folder / "left.tfrecord"), "--right", str(folder / "right.tfrecord"), "--sample_rate",
          str(RATE), "--seed", str(SEED), "--strategy", "grid"]


def _whole_rows(monkeypatch):
  """Plans as before kept-pair routing: every record to its whole row or column."""
  make_plan = planning.make_plan
  monkeypatch.setattr(planning, "make_plan", lambda *a, **k: dataclasses.replace(make_plan(*a, **k), sparse=False))


@pytest.mark.parametrize("flags", [
    ["--collision", "prefix", "--index_features"],
    ["--collision", "left"],
    ["--collision", "right", "--output_compression", "gzip"],
    ["--self_join", "combinations", "--collision", "prefix", "--index_features"],
    ["--self_join", "product", "--collision", "prefix", "--index_features", "--target_shard_mb", "0.002"],
], ids=["prefix", "left-wins", "right-wins-gzip", "combinations", "self-product-small-shards"])
def test_routing_by_kept_pairs_writes_the_same_bytes_as_whole_rows(inputs, tmp_path, monkeypatch, flags):
  argv = inputs + flags if "--self_join" not in flags else inputs[:2] + inputs[4:] + flags
  sparse = cli.run(argv + ["--output", str(tmp_path / "sparse" / "p")])
  assert sparse["grid"]["routed_by_kept_pairs"] and sparse["grid"]["cells"] >= 10
  with monkeypatch.context() as patch:
    _whole_rows(patch)
    whole = cli.run(argv + ["--output", str(tmp_path / "whole" / "p")])
  assert "routed_by_kept_pairs" not in whole["grid"]
  assert sparse["shuffle_bytes"] < whole["shuffle_bytes"]
  compression = "gzip" if "gzip" in flags else None
  shards = [read_tfrecords([path], compression) for path in sparse["shards"]]
  assert shards == [read_tfrecords([path], compression) for path in whole["shards"]]
  assert sparse["pairs"] == sum(len(records) for records in shards) > 0
  if "--index_features" in flags:  # the pairs are the sampling's, as a nested loop keeps them
    self_join = flags[flags.index("--self_join") + 1] if "--self_join" in flags else None
    count = N_LEFT if self_join else N_RIGHT
    plan = _plan(N_LEFT, count, 1, 1, self_join, RATE)
    features = [parse(record).features.feature for records in shards for record in records]
    pairs = [(f["left_index"].int64_list.value[0], f["right_index"].int64_list.value[0]) for f in features]
    assert sorted(pairs) == sorted(_kept_pairs(plan, SEED))


def _fails(argv, tmp_path, message):
  with pytest.raises(Exception, match=message):
    cli.run(argv + ["--collision", "prefix", "--output", str(tmp_path / "out" / "p")])
  assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _changing(monkeypatch, name, change):
  real = getattr(write, name)
  monkeypatch.setattr(write, name, lambda *args: change(list(real(*args)), *args))


def test_a_left_record_missing_a_cell_of_its_kept_pairs_fails_naming_the_cell(inputs, tmp_path, monkeypatch):
  first = []

  def lose_first_cell(outputs, element, side, *_):
    if side == 0 and not first and any(isinstance(o, tuple) for o in outputs):
      first.append(element[1])
      return [o for o in outputs if not isinstance(o, tuple)]  # its requests stay, the record is lost
    return outputs

  _changing(monkeypatch, "_to_kept_cells", lose_first_cell)
  _fails(inputs, tmp_path, r"record accounting: cell \(\d+, \d+\) received \d+ left record\(s\) \(distinct \d+\), "
                           r"the plan routes \d+ to it \(those with kept pairs\)")


def test_a_lost_request_fails_in_the_cell(inputs, tmp_path, monkeypatch):
  def lose_requests(outputs, element, side, *_):  # every left record's: some right record is asked for by none
    return [o for o in outputs if isinstance(o, tuple)] if side == 0 else outputs

  _changing(monkeypatch, "_to_kept_cells", lose_requests)
  _fails(inputs, tmp_path, r"cell \(\d+, \d+\) received \d+ right record\(s\) \(distinct \d+\), the plan routes "
                           r"\d+ to it \(those with kept pairs\)")


@pytest.mark.parametrize("side, message", [
    (0, r"cell \(\d+, \d+\) received \d+ left record\(s\) \(distinct \d+\), the plan routes \d+ to it \(those with "
        r"kept pairs\)"),
    (1, r"cell \(\d+, \d+\) received \d+ right record\(s\) \(distinct \d+\), the plan routes \d+ to it \(those with "
        r"kept pairs\)"),
    (None, r"cell \(\d+, \d+\) received its marker 2 time\(s\)")], ids=["left", "right", "marker"])
def test_a_record_or_marker_repeated_on_its_way_to_a_cell_fails(inputs, tmp_path, monkeypatch, side, message):
  """What reaches a cell is checked exactly: a left record, a delivered right record or a marker twice fails."""
  if side == 0:
    _changing(monkeypatch, "_to_kept_cells", lambda outputs, element, s, *_: outputs + [
        o for o in outputs if isinstance(o, tuple)][:1] if s == 0 else outputs)
  elif side == 1:
    _changing(monkeypatch, "_deliver", lambda outputs, element: outputs + outputs[:1])
  else:
    _changing(monkeypatch, "_markers", lambda outputs, plan: outputs + outputs[:1])
  _fails(inputs, tmp_path, message)


@pytest.mark.parametrize("times", [0, 2])
def test_a_right_record_lost_or_repeated_before_the_join_fails(inputs, tmp_path, monkeypatch, times):
  _changing(monkeypatch, "_to_kept_cells", lambda outputs, element, side, *_: outputs * times if side == 1 else
            outputs)
  _fails(inputs, tmp_path, rf"record accounting: right record \d+ reached the join on right ordinals {times} "
                           r"time\(s\), asked for by \d+ cell\(s\)")


def test_a_lost_marker_fails(inputs, tmp_path, monkeypatch):
  """A cell that receives records but not its marker fails; one that receives nothing at all is missing from
  the results, which Finalize counts."""
  _changing(monkeypatch, "_markers", lambda outputs, plan: outputs[1:])
  _fails(inputs, tmp_path, r"record accounting: (cell \(0, 0\) received its marker 0 time\(s\)|the plan has 16 "
                           r"cells, 15 reported)")

"""beam_job.planning: pair counts, the plan's cells, its checks and messages, ordinals and shard names."""

import dataclasses
import itertools
import pickle
from collections import Counter

import pytest
from hypothesis import given, settings, strategies as st, target as aim

from beam_job import planning
from beam_job.errors import JobError
from beam_job.output_schema import Values
from beam_job.outputs import shard_name
from beam_job.planning import IndexRuns, SideStats, cell_pairs, make_plan, total_pairs

MODES = [None, "product", "combinations", "combinations_with_replacement"]


def keep(l, r, mode):
  if mode == "combinations":
    return r > l
  if mode == "combinations_with_replacement":
    return r >= l
  return True


def brute_pairs(rows, cols, mode):
  return sum(keep(l, r, mode) for l in range(*rows) for r in range(*cols))


def stats(count, payload_bytes=None, keys=(), sources=None):
  if sources is None:
    sources = {"s": count}
  return SideStats(good=dict(sources), bad={}, payload_bytes=10 * count if payload_bytes is None else payload_bytes,
                   keys=frozenset(keys))


def plan(left, right, **options):
  defaults = dict(strategy="grid", self_join=None, collision="error", prefixes=("", ""), max_pairs=10 ** 12,
                  target_shard_bytes=1 << 20)
  defaults.update(options)
  return make_plan(left, right, **defaults)


# --- cell_pairs and total_pairs ----------------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 25), st.integers(0, 25), st.integers(0, 25), st.integers(0, 25), st.sampled_from(MODES))
def test_cell_pairs_matches_brute_force(a, b, c, d, mode):
  assert cell_pairs((a, b), (c, d), mode) == brute_pairs((a, b), (c, d), mode)


def test_cell_pairs_examples():
  assert cell_pairs((0, 4), (0, 4), None) == 16
  assert cell_pairs((0, 4), (0, 4), "product") == 16
  assert cell_pairs((0, 4), (0, 4), "combinations") == 6
  assert cell_pairs((0, 4), (0, 4), "combinations_with_replacement") == 10
  assert cell_pairs((2, 4), (0, 2), "combinations") == 0  # below the diagonal
  assert cell_pairs((0, 2), (2, 4), "combinations") == 4  # above the diagonal: every pair
  assert cell_pairs((3, 3), (0, 9), None) == 0
  assert cell_pairs((5, 3), (0, 9), None) == 0


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 30), st.integers(0, 30), st.sampled_from(MODES))
def test_total_pairs(n, m, mode):
  if mode in ("combinations", "combinations_with_replacement"):
    expected = sum(1 for _ in getattr(itertools, mode)(range(n), 2))
    assert total_pairs(n, n, mode) == expected
    assert total_pairs(n, n, mode) == cell_pairs((0, n), (0, n), mode)
  else:
    assert total_pairs(n, m, mode) == n * m == cell_pairs((0, n), (0, m), mode)


# --- make_plan: the cells cover every pair exactly once ------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 25), st.integers(0, 25), st.sampled_from(MODES), st.sampled_from(["broadcast", "grid"]),
       st.integers(1, 5000), st.integers(0, 400), st.integers(0, 400))
def test_cells_cover_every_pair_once(n, m, self_join, strategy, target, left_bytes, right_bytes):
  if self_join in ("combinations", "combinations_with_replacement"):
    m, right_bytes = n, left_bytes  # a self join pairs a side with itself
  p = plan(stats(n, left_bytes), stats(m, right_bytes), strategy=strategy, self_join=self_join,
           target_shard_bytes=target)
  assert p.strategy == strategy
  assert p.pairs == total_pairs(n, m, self_join)
  assert sum(count for _, _, count in p.cells) == p.pairs
  # Every kept pair falls into a listed cell, and each cell lists exactly its pairs.
  expected = Counter((l // p.row_chunk, r // p.col_chunk) for l in range(n) for r in range(m)
                     if keep(l, r, self_join))
  assert {(row, col): count for row, col, count in p.cells} == dict(expected)
  assert len(p.cells) == len(expected)
  # Cells are in row-major order and each has pairs.
  assert [(row, col) for row, col, _ in p.cells] == sorted(expected)
  assert all(count > 0 for _, _, count in p.cells)
  # Routing finds each cell's shard from its row and from its column, and nothing else.
  by_row = {(row, col): shard for row in range(p.rows) for col, shard in
            zip(range(p.first_col(row), p.cols), p.row_shards(row))}
  by_col = {}
  for col in range(p.cols):
    for shard in p.column_shards(col):
      by_col[(p.cells[shard][0], col)] = shard
  assert by_row == by_col == {(row, col): i for i, (row, col, _) in enumerate(p.cells)}
  assert pickle.loads(pickle.dumps(p)).cells[:] == p.cells[:]
  assert p.shard_count == max(1, len(p.cells))
  assert p.row_chunk >= 1 and p.col_chunk >= 1
  if n:
    assert p.rows == -(-n // p.row_chunk)
    assert max(row for row, _, _ in p.cells or [(0, 0, 0)]) < p.rows
  pair_bytes = left_bytes / max(n, 1) + right_bytes / max(m, 1) + planning.PAIR_OVERHEAD_BYTES
  per_cell = max(1, int(target / pair_bytes))  # as the plan divides (441 // 44.1 is 9.0, 441 / 44.1 is 10.0)
  assert all(count <= per_cell for _, _, count in p.cells)
  if self_join in ("combinations", "combinations_with_replacement") and strategy == "grid":
    assert p.row_chunk == p.col_chunk


def test_many_cells_when_shards_are_small():
  p = plan(stats(100, 1000), stats(50, 500), strategy="grid", target_shard_bytes=40 * 30)
  # pair_bytes = 10 + 10 + 20 = 40, so 30 pairs per cell: 5 x 6 chunks
  assert (p.row_chunk, p.col_chunk) == (5, 6)
  assert len(p.cells) == 20 * 9
  assert sum(c for _, _, c in p.cells) == 5000 == p.pairs
  assert p.estimated_bytes == 5000 * 40


def test_broadcast_rows():
  p = plan(stats(100, 1000), stats(50, 500), strategy="broadcast", target_shard_bytes=40 * 120)
  assert (p.row_chunk, p.col_chunk) == (2, 50)
  assert [c for _, _, c in p.cells] == [100] * 50


def test_auto_strategy_picks_by_right_size():
  small = plan(stats(3), stats(3, planning.BROADCAST_MAX_BYTES), strategy="auto")
  big = plan(stats(3), stats(3, planning.BROADCAST_MAX_BYTES + 1), strategy="auto")
  assert small.strategy == "broadcast"
  assert big.strategy == "grid"


def test_empty_sides_give_no_cells():
  for n, m in ((0, 0), (0, 5), (5, 0)):
    p = plan(stats(n), stats(m))
    assert list(p.cells) == [] and p.pairs == 0 and p.shard_count == 1


# --- make_plan: refusals -----------------------------------------------------------------------------------


def test_max_pairs_refusal():
  with pytest.raises(JobError) as info:
    plan(stats(1500), stats(1000), max_pairs=1_499_999)
  message = str(info.value)
  assert "1,500,000 pairs" in message
  assert "1,500 x 1,000 records" in message
  assert "--max_pairs 1,499,999" in message
  assert plan(stats(1500), stats(1000), max_pairs=1_500_000).pairs == 1_500_000  # the limit itself is allowed


def test_max_pairs_counts_the_self_join():
  with pytest.raises(JobError, match=r"would write 45 pairs .*--max_pairs 44"):
    plan(stats(10), stats(10), self_join="combinations", max_pairs=44)
  assert plan(stats(10), stats(10), self_join="combinations", max_pairs=45).pairs == 45


def test_max_pairs_checked_before_collisions():
  with pytest.raises(JobError, match="--max_pairs"):
    plan(stats(10, keys={"a"}), stats(10, keys={"a"}), max_pairs=1)


def test_collision_error_names_the_features():
  with pytest.raises(JobError) as info:
    plan(stats(2, keys={"b", "a", "only_left"}), stats(2, keys={"a", "b", "only_right"}))
  assert str(info.value) == ("2 feature name(s) exist on both sides: 'a', 'b'; choose how to merge them with "
                             "--collision prefix|left|right")


def test_collision_error_shows_ten_names():
  keys = {f"f{i:02d}" for i in range(12)}
  with pytest.raises(JobError) as info:
    plan(stats(1, keys=keys), stats(1, keys=keys))
  message = str(info.value)
  assert message.startswith("12 feature name(s) exist on both sides: 'f00', 'f01', ")
  assert "'f09' ...; choose" in message and "'f10'" not in message
  assert "--collision" in message


def test_prefix_still_colliding():
  with pytest.raises(JobError) as info:
    plan(stats(1, keys={"x_a"}), stats(1, keys={"x_a"}), collision="prefix", prefixes=("x_", "x_"))
  assert str(info.value) == ("feature name(s) still collide after renaming with --left_prefix 'x_' and "
                             "--right_prefix 'x_': 'x_a'; choose other prefixes")


@pytest.mark.parametrize("policy", ["left", "right"])
def test_left_right_policies_keep_collisions(policy):
  p = plan(stats(1, keys={"c", "a", "l"}), stats(1, keys={"a", "c", "r"}), collision=policy)
  assert p.collisions == ("a", "c")


def test_no_collision_is_fine_under_every_policy():
  for policy in ("error", "prefix", "left", "right"):
    assert plan(stats(1, keys={"a"}), stats(1, keys={"b"}), collision=policy).collisions == ()


# --- ordinals and shard names ------------------------------------------------------------------------------


def test_ordinal_orders_sources_by_path_and_skips_corrupt():
  left = SideStats(good={"gs://b/2.tfrecord": 3, "gs://b/10.tfrecord": 5, "gs://a/z.tfrecord": 2},
                   bad={"gs://b/10.tfrecord": (1, 4)}, payload_bytes=100, keys=frozenset())
  p = plan(left, stats(1))
  assert p.offsets[0] == {"gs://a/z.tfrecord": 0, "gs://b/10.tfrecord": 2, "gs://b/2.tfrecord": 7}
  assert [p.ordinal(0, "gs://a/z.tfrecord", i) for i in (0, 1)] == [0, 1]
  # gs://b/10 has 7 frames, 1 and 4 corrupt: the good ones are 0, 2, 3, 5, 6
  assert [p.ordinal(0, "gs://b/10.tfrecord", i) for i in (0, 2, 3, 5, 6)] == [2, 3, 4, 5, 6]
  assert [p.ordinal(0, "gs://b/2.tfrecord", i) for i in (0, 1, 2)] == [7, 8, 9]
  assert p.left_count == 10


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text("abc/", min_size=1, max_size=4),
                       st.lists(st.booleans(), max_size=8), max_size=4))
def test_ordinals_are_a_dense_numbering(files):
  # files: source -> corrupt flag per frame
  good = {s: flags.count(False) for s, flags in files.items()}
  bad = {s: tuple(i for i, f in enumerate(flags) if f) for s, flags in files.items() if any(flags)}
  side = SideStats(good=good, bad=bad, payload_bytes=0, keys=frozenset())
  p = plan(side, stats(1))
  ordinals = [p.ordinal(0, s, i) for s in sorted(files) for i, f in enumerate(files[s]) if not f]
  assert ordinals == list(range(sum(good.values())))


def test_chunk():
  p = plan(stats(100, 1000), stats(50, 500), strategy="grid", target_shard_bytes=40 * 30)
  assert (p.chunk(0, 0), p.chunk(0, 4), p.chunk(0, 5), p.chunk(1, 5), p.chunk(1, 6)) == (0, 0, 1, 0, 1)


@pytest.mark.parametrize("args, expected", [
    (("out/pairs", 0, 1, "uncompressed"), "out/pairs-00000-of-00001.tfrecord"),
    (("gs://b/p", 7, 12, "gzip"), "gs://b/p-00007-of-00012.tfrecord.gz"),
    (("p", 12345, 99999, "uncompressed"), "p-12345-of-99999.tfrecord"),
    (("p", 3, 123456, "gzip"), "p-000003-of-123456.tfrecord.gz"),
])
def test_shard_name(args, expected):
  assert shard_name(*args) == expected


@pytest.mark.parametrize("parts,problem", [
    ([range(10)], None), ([range(5, 10), range(5)], None), ([[3, 1, 2, 0], [4]], None), ([[]], None),
    ([range(10), [4]], "index 4 appears more than once"), ([[0, 0, 3, 3]], "index 0 appears more than once"),
    ([range(3), range(4, 6)], "indexes 3..3 are missing"), ([range(2, 5)], "indexes 0..1 are missing"),
    ([list(range(3000, 0, -1)) + [0]], None), ([list(range(3000, 0, -1)) + [0, 1500]], "index 1500 appears more than once"),
])
def test_index_runs_are_exact_in_any_order_and_any_split(parts, problem):
  merged = IndexRuns()
  for part in parts:
    runs = IndexRuns()
    for index in part:
      runs.add(index)
    merged.merge(pickle.loads(pickle.dumps(runs)))
  assert merged.problem() == problem
  assert len(merged.runs) <= 2


# --- sampled jobs are split at least SAMPLED_SPLITS ways per side ------------------------------------------


@pytest.mark.parametrize("n, m, strategy, rows, cols", [
    (9, 9, "grid", 5, 5), (5, 1000, "grid", 5, 4), (6, 6, "grid", 6, 6), (3, 2, "grid", 3, 2),
    (100, 100, "broadcast", 17, 1), (20, 5, "broadcast", 20, 1), (17, 5, "broadcast", 17, 1),
])
def test_sampled_jobs_split_every_side_that_has_the_records(n, m, strategy, rows, cols):
  # Chunks of ceil(n / 4) records cut 9 records into 3 chunks, and ceil(n / 16) cut 100 into 15: the split
  # must reach SAMPLED_SPLITS per side (broadcast: SAMPLED_SPLITS ** 2 rows) whenever the side has the records.
  p = plan(stats(n, 100 * n), stats(m, 100 * m), strategy=strategy, sample_rate=0.01, target_shard_bytes=256_000_000)
  assert (p.rows, p.cols) == (rows, cols)
  assert len(p.cells) == rows * cols


def test_cells_index_from_the_end_like_any_sequence():
  p = plan(stats(100, 1000), stats(50, 500), strategy="grid", target_shard_bytes=40 * 30)
  p2 = plan(stats(10), stats(10), self_join="combinations", target_shard_bytes=40 * 4)
  for cells in (p.cells, p2.cells):
    assert cells[-1] == cells[len(cells) - 1] and cells[-len(cells)] == cells[0]
    assert list(reversed(cells)) == cells[::-1] == list(cells)[::-1]
    for bad in (len(cells), -len(cells) - 1):
      with pytest.raises(IndexError):
        cells[bad]  # pylint: disable=pointless-statement


# --- bounds at any scale (issue 11): memory, cell size and plan size, from SideStats alone ------------------

# The largest record the bounds are stated for.
MAX_RECORD_BYTES = 10_000_000
# A cell's records as a worker holds them: at most CELL_INPUT_MAX_BYTES of payloads and names (at
# NAME_MEMORY_BYTES each), past it only by a chunk of a single record on either side, and at most CELL_RECORDS
# records a side at RECORD_MEMORY_BYTES each, and NAMED_RECORD_BYTES more when their names are held.
CELL_HELD_BOUND = (planning.CELL_INPUT_MAX_BYTES + 2 * MAX_RECORD_BYTES
                   + 2 * planning.CELL_RECORDS * (planning.RECORD_MEMORY_BYTES + planning.NAMED_RECORD_BYTES))
# A worker process writing one cell: the grid's payloads as the runner hands them over, the records as the
# writer holds them and one trimmed copy under --collision left|right; broadcast the same, less the right
# side's delivery, plus the whole right side, which is at most BROADCAST_LIMIT_BYTES. Both add two write blocks.
WORKER_MEMORY_BOUND = max(3 * CELL_HELD_BOUND, 2 * CELL_HELD_BOUND + planning.BROADCAST_LIMIT_BYTES) + \
    2 * planning.WRITE_BLOCK_BYTES
CLI_TARGET_SHARD_BYTES = 256_000_000  # --target_shard_mb 256


def test_the_worker_memory_bound_is_under_2_gib():
  assert WORKER_MEMORY_BOUND < 2 << 30  # 1.96 GiB with today's constants


def sized(count, record_bytes, keys=(), names=0):
  """A side of ``count`` records of ``record_bytes``, each with ``names`` feature entries (for the schema)."""
  features = {"f": Values(count * names, count * names, frozenset({"INT"}), 1, 1)} if names else {}
  return SideStats(good={"data": count}, bad={}, payload_bytes=record_bytes * count, keys=frozenset(keys),
                   features=features)


def cli_plan(n, m, record_bytes=10_000, **options):
  """A plan with the CLI's defaults (--strategy auto, --target_shard_mb 256, --collision error)."""
  settings = dict(strategy="auto", self_join=None, collision="error", prefixes=("", ""),
                  max_pairs=planning.MAX_PAIRS, target_shard_bytes=CLI_TARGET_SHARD_BYTES)
  settings.update(options)
  return make_plan(sized(n, record_bytes), sized(m, record_bytes), **settings)


def spot_cells(p):
  """A few cells by index (first, middle, last): a big plan is never listed."""
  count = len(p.cells)
  return [p.cells[i] for i in sorted({0, count // 2, count - 1})] if count else []


def check_bounds(p, n, m, record_bytes, target, sample_rate):
  """Every bound the plan promises, from the grid and a few cells; returns how close the plan comes to the
  memory and byte bounds (1 = at the bound)."""
  rows, cols = min(p.row_chunk, n), min(p.col_chunk, m)
  sizes = (record_bytes[0] if n else 0, record_bytes[1] if m else 0)
  # Records: at most CELL_RECORDS a side.
  assert 1 <= p.row_chunk <= planning.CELL_RECORDS and 1 <= p.col_chunk <= planning.CELL_RECORDS
  # Bytes: at most min(target, CELL_INPUT_MAX_BYTES) of records, past it only by a chunk of one record.
  budget = min(target, planning.CELL_INPUT_MAX_BYTES)
  single = (sizes[0] if rows == 1 else 0) + (sizes[1] if cols == 1 else 0)
  assert p.cell_input_bytes <= budget + single
  closeness = {"cell input": p.cell_input_bytes / (budget + single)}
  # Memory of a worker process.
  assert p.broadcast_memory_bytes <= planning.BROADCAST_LIMIT_BYTES
  assert p.cell_memory_bytes + p.broadcast_memory_bytes <= WORKER_MEMORY_BOUND
  closeness["worker memory"] = (p.cell_memory_bytes + p.broadcast_memory_bytes) / WORKER_MEMORY_BOUND
  # Pairs: a cell holds at most the target's pairs (sampled: expects at most that many).
  pair_bytes = sizes[0] + sizes[1] + planning.PAIR_OVERHEAD_BYTES
  per_cell = max(1, int(target / pair_bytes))
  if sample_rate >= 1:
    assert rows * cols <= per_cell
  else:
    assert rows * cols * sample_rate <= max(1, target / pair_bytes) * (1 + 1e-9)
  # The plan's size does not depend on its cells.
  assert len(pickle.dumps(p)) < 1024
  for row, col, count in spot_cells(p):
    assert 0 <= row < p.rows and 0 <= col < p.cols and count > 0
    if sample_rate >= 1:
      assert count <= per_cell
  # Sampled: the work is still cut into at least SAMPLED_SPLITS x SAMPLED_SPLITS cells where it can be.
  if sample_rate < 1:
    splits = planning.SAMPLED_SPLITS
    if p.strategy == "broadcast":
      assert p.rows >= min(splits ** 2, n)
      with_pairs = 0 if not total_pairs(n, m, p.self_join) else n - (p.self_join == "combinations")
      assert len(p.cells) >= min(splits ** 2, with_pairs)
    else:
      assert p.rows >= min(splits, n) and p.cols >= min(splits, m)
      assert len(p.cells) >= min(splits ** 2, total_pairs(min(splits, n), min(splits, m), p.self_join))
  return closeness


SCALE_JOBS = [  # (left records, right records, bytes a record, options, strategy chosen)
    (10 ** 5, 10 ** 5, 10_000, {}, "grid"),
    (10 ** 7, 100, 10_000, {}, "broadcast"),
    (100, 10 ** 7, 10_000, {}, "grid"),
    (10 ** 4, 10 ** 6, 10_000, {}, "grid"),
    (10 ** 5, 10 ** 5, 10_000, {"sample_rate": 1e-5}, "grid"),
    (10 ** 7, 10 ** 7, 10_000, {"sample_rate": 1e-7}, "grid"),
    (20, 500_000, 100, {"strategy": "broadcast"}, "broadcast"),
]


@pytest.mark.parametrize("n, m, record_bytes, options, strategy", SCALE_JOBS)
def test_bounds_of_the_scale_jobs(n, m, record_bytes, options, strategy):
  # The jobs of benchmarks/scale_plan.py.
  p = cli_plan(n, m, record_bytes, **options)
  assert p.strategy == strategy
  check_bounds(p, n, m, (record_bytes, record_bytes), CLI_TARGET_SHARD_BYTES, options.get("sample_rate", 1.0))
  assert len(pickle.dumps(p)) < 400


def test_forced_broadcast_of_a_large_side_is_refused():
  with pytest.raises(JobError) as info:
    cli_plan(100, 10 ** 7, strategy="broadcast")
  assert str(info.value) == ("--strategy broadcast would hold the whole right side (10,000,000 records, about "
                             "102,880 MB in memory) in every worker process, more than the 1,074 MB bound; use "
                             "--strategy grid")
  # The bound itself: payloads plus RECORD_MEMORY_BYTES a record.
  at_limit = planning.BROADCAST_LIMIT_BYTES - planning.RECORD_MEMORY_BYTES
  assert cli_plan(1, 1, at_limit, strategy="broadcast").broadcast_memory_bytes == planning.BROADCAST_LIMIT_BYTES
  with pytest.raises(JobError, match="; use --strategy grid$"):
    cli_plan(1, 1, at_limit + 1, strategy="broadcast")


@pytest.mark.parametrize("self_join", [None, "combinations"])
def test_the_pickled_plan_does_not_grow_with_its_cells(self_join):
  # The same sides cut for 256 MB and for 256 KB shards: over 1000 times the cells, the same few numbers.
  plans = [cli_plan(10 ** 5, 10 ** 5, self_join=self_join, strategy="grid", target_shard_bytes=target)
           for target in (CLI_TARGET_SHARD_BYTES, CLI_TARGET_SHARD_BYTES // 1000)]
  assert len(plans[1].cells) >= 1000 * len(plans[0].cells)
  for p in plans:
    assert p.cells[-1]  # computed, and cached, before pickling
  sizes = [len(pickle.dumps(p)) for p in plans]
  assert abs(sizes[0] - sizes[1]) <= 4 and max(sizes) < 400, sizes
  copy = pickle.loads(pickle.dumps(plans[1]))
  assert [copy.cells[i] for i in (0, -1)] == [plans[1].cells[i] for i in (0, -1)]


COUNTS = st.one_of(st.integers(0, 40), st.integers(0, 10 ** 9))
RECORD_BYTES = st.one_of(st.sampled_from([1, 100, 10_000, MAX_RECORD_BYTES]), st.integers(1, MAX_RECORD_BYTES))
TARGETS = st.one_of(st.just(CLI_TARGET_SHARD_BYTES), st.integers(1, 10 ** 12))
RATES = st.one_of(st.just(1.0), st.sampled_from([1e-9, 1e-5, 0.5]), st.floats(1e-9, 1.0))


# An entry takes at least 6 bytes of payload (its tag and length, the name's, a one-byte name, an empty Feature).
NAMES = st.one_of(st.just(1), st.floats(0, 1))


@settings(max_examples=1500, deadline=None)
@given(COUNTS, COUNTS, RECORD_BYTES, RECORD_BYTES, st.sampled_from(["grid", "broadcast", "auto"]),
       st.sampled_from(MODES), RATES, st.sampled_from(["error", "left", "right"]), TARGETS, NAMES)
def test_bounds_hold_at_any_size(n, m, left_bytes, right_bytes, strategy, self_join, rate, collision, target,
                                 names):
  if self_join is not None:
    m, right_bytes = n, left_bytes  # a self-join pairs a side with itself
  keys = ({"l"}, {"r"}) if collision == "error" else ({"shared", "l"}, {"shared", "r"})
  options = dict(strategy=strategy, self_join=self_join, collision=collision, prefixes=("", ""),
                 max_pairs=planning.MAX_PAIRS, target_shard_bytes=target, sample_rate=rate)
  names = [max(1, int(names * size // 6)) for size in (left_bytes, right_bytes)]  # names a record, up to all
  left, right = sized(n, left_bytes, keys[0], names[0]), sized(m, right_bytes, keys[1], names[1])
  held = planning.held_bytes(right.payload_bytes, m, m * names[1] if collision != "error" else None)
  if strategy == "broadcast" and held > planning.BROADCAST_LIMIT_BYTES:
    with pytest.raises(JobError, match=r"^--strategy broadcast would hold .*; use --strategy grid$"):
      make_plan(left, right, **options)
    return
  p = make_plan(left, right, **options)
  assert p.strategy == strategy or strategy == "auto"
  assert bool(p.collisions) == (collision != "error")
  for label, closeness in check_bounds(p, n, m, (left_bytes, right_bytes), target, rate).items():
    aim(closeness, label=label)  # steer the search towards the bounds


# --- a self-join's cells are found in closed form, without a table per row ---------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 60), st.integers(1, 40), st.integers(0, 80), st.integers(0, 60))
def test_floor_sum(n, m, a, b):
  assert planning._floor_sum(n, m, a, b) == sum((a * i + b) // m for i in range(n))  # pylint: disable=protected-access


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 3000), st.sampled_from(["combinations", "combinations_with_replacement"]),
       st.sampled_from(["grid", "broadcast"]), st.integers(1, 10 ** 6), st.floats(1e-6, 1.0))
def test_self_join_row_starts_are_the_running_cell_counts(n, self_join, strategy, target, rate):
  p = plan(stats(n), stats(n), self_join=self_join, strategy=strategy, target_shard_bytes=target, sample_rate=rate)
  starts = [0]
  for row in range(p.rows):
    starts.append(starts[-1] + p.cols - p.first_col(row))
  assert [p.row_start(row) for row in range(p.rows + 1)] == starts
  assert len(p.cells) == starts[-1]
  for row in range(p.rows):
    if starts[row + 1] > starts[row]:  # a row with cells: its first and last cell lead back to it
      assert p.row_of(starts[row]) == p.row_of(starts[row + 1] - 1) == row


def test_a_billion_record_self_join_finds_its_cells_without_a_table():
  p = cli_plan(10 ** 9, 10 ** 9, self_join="combinations", strategy="grid")
  count = len(p.cells)
  assert p.rows == 8_849_558 and count == p.rows * (p.rows + 1) // 2
  for shard in (0, count // 2, count - 1):
    row, col, pairs = p.cells[shard]
    assert p.row_start(row) <= shard < p.row_start(row + 1) and col == p.first_col(row) + shard - p.row_start(row)
    assert 0 < pairs <= p.row_chunk * p.col_chunk
  assert set(vars(p)) == {field.name for field in dataclasses.fields(p)} | {"cells"}  # nothing per row


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 150), st.sampled_from(MODES), st.sampled_from(["grid", "broadcast"]), st.integers(1, 10 ** 5))
def test_cells_iterate_as_they_index(n, self_join, strategy, target):
  p = plan(stats(n), stats(n if self_join else 37), self_join=self_join, strategy=strategy, target_shard_bytes=target)
  assert list(p.cells) == [p.cells[i] for i in range(len(p.cells))]


# --- the memory model, against what a worker really holds ----------------------------------------------------


def _measured(build):
  """Bytes still allocated after ``build()``, with what it returns alive."""
  import tracemalloc  # pylint: disable=import-outside-toplevel
  tracemalloc.start()
  try:
    kept = build()  # pylint: disable=unused-variable  # alive while measured
    return tracemalloc.get_traced_memory()[0]
  finally:
    tracemalloc.stop()


@pytest.mark.parametrize("names", [1, 4, 20, 100])
@pytest.mark.parametrize("named", [False, True], ids=["payloads", "with names"])
def test_the_memory_model_bounds_what_a_cell_and_the_broadcast_side_hold(names, named):
  """``held_bytes`` (RECORD_MEMORY_BYTES, NAMED_RECORD_BYTES, NAME_MEMORY_BYTES) against tracemalloc: 3,000
  records of ``names`` features as the runner delivers them to a cell, ``(ordinal, payload)``, and as the writer
  holds them (``write._records``), and as the broadcast side's per-process copy holds them. The model is an
  upper bound, and not a loose one (at least 60% of it is real)."""
  from beam_job import blocks, examples  # pylint: disable=import-outside-toplevel
  from beam_job.stages import write  # pylint: disable=import-outside-toplevel
  from tests.helpers import make_example  # pylint: disable=import-outside-toplevel
  count = 3000
  payloads = [examples.prepare(make_example({f"feature_{j:03d}": [i] for j in range(names)})).payload
              for i in range(count)]
  model = planning.held_bytes(sum(map(len, payloads)), count, count * names if named else None)
  # The cell: decoded copies of the payloads (as the runner's coder makes them), then the writer's records.
  cell = _measured(lambda: write._records([(1000 + i, bytes(bytearray(p))) for i, p in enumerate(payloads)],
                                          named))  # pylint: disable=protected-access
  assert 0.6 * model <= cell <= model
  packer, packed = blocks.Packer(1 << 16), []
  for ordinal, payload in enumerate(payloads):
    packed.append(packer.add(ordinal, payload))
  packed = [block for block in packed + [packer.flush()] if block]
  side = _measured(lambda: write._BroadcastSide(packed, count, named))  # pylint: disable=protected-access
  assert side <= model


# --- uneven record sizes: chunks cut by count, bounded by each side's size profile -----------------------------


def _profiled(sizes_by_source, bad=None, keys=("x",)):
  """SideStats of sources holding records of these payload sizes (None: a corrupt record), with the size profile
  the prepare step tallies."""
  good, sizes, largest, corrupt = {}, {}, 0, {}
  for source, sizes_of in sizes_by_source.items():
    for index, size in enumerate(sizes_of):
      if size is None:
        corrupt.setdefault(source, []).append(index)
        continue
      good[source] = good.get(source, 0) + 1
      planning.tally_size(sizes, source, index, size)
      largest = max(largest, size)
  return SideStats(good=good, bad={s: tuple(i) for s, i in corrupt.items()}, keys=frozenset(keys),
                   payload_bytes=sum(z for sizes_of in sizes_by_source.values() for z in sizes_of if z), sizes=sizes,
                   largest=largest)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "c"]), st.lists(st.one_of(st.none(), st.integers(0, 1000)),
                                                                  max_size=60), max_size=3),
       st.integers(1, 70), st.sampled_from([1, 3, 8]))
def test_chunk_bytes_bounds_every_run_of_records(sizes_by_source, chunk, block):
  """``chunk_bytes`` is at least what any ``chunk`` consecutive good records hold (ordinals: sources by name,
  corrupt records left out), whatever the block of the profile."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(planning, "SIZE_BLOCK", block)
    stats = _profiled(sizes_by_source)
    bound = planning.chunk_bytes(planning.size_profile(stats), stats.largest, chunk)
  ordered = [z for source in sorted(sizes_by_source) for z in sizes_by_source[source] if z is not None]
  assert all(sum(ordered[start:start + chunk]) <= bound for start in range(len(ordered)))
  assert bound <= chunk * stats.largest


def test_large_records_that_sit_together_cut_smaller_chunks():
  """3,000 left records of 80 bytes with ten of 200 KB together among them, against 500 of 100 bytes, 0.5 MB
  shards: chunks sized by the average (24 records) would hold all ten, 2 MB, four times the budget. The profile
  cuts the left chunks to hold at most UNEVEN_SLACK times their share of the budget plus one large record, and
  leaves the right side's alone. One large record alone, and even sizes, keep the average's grid: cutting cannot
  make a chunk smaller than its largest record."""
  small, right = [80] * 3_000, [100] * 500
  options = dict(strategy="grid", self_join=None, collision="error", prefixes=("", ""),
                 max_pairs=planning.MAX_PAIRS, target_shard_bytes=500_000)

  def plans(left):
    return (make_plan(sized(len(left), sum(left) // len(left), "l"), sized(len(right), 100, "r"), **options),
            make_plan(_profiled({"a": left}, keys="l"), _profiled({"a": right}, keys="r"), **options))

  def worst(sizes, chunk):
    return max(sum(sizes[start:start + chunk]) for start in range(0, len(sizes), chunk))

  together = small[:1500] + [200_000] * 10 + small[1500:]
  average, p = plans(together)
  assert worst(together, average.row_chunk) > 4 * 500_000  # what the average alone allowed
  assert worst(together, p.row_chunk) <= planning.UNEVEN_SLACK * 500_000 + 200_000
  assert p.col_chunk == average.col_chunk and len(p.cells) <= 6 * len(average.cells)
  for left in (small[:1500] + [1_000_000] + small[1500:], [400] * 3_000):  # one large record; even sizes
    average, p = plans(left)
    assert (p.row_chunk, p.col_chunk) == (average.row_chunk, average.col_chunk)


def test_a_sample_routed_by_kept_pairs_keeps_its_chunks():
  """A cell routed by its kept pairs holds only their records (about 30 of its 11,000 here): the average's
  chunks stand, where cut for uneven sizes such cells were mostly empty shards."""
  sizes = [100] * 20_000 + [100_000] * 2_000
  options = dict(strategy="grid", self_join=None, collision="error", prefixes=("", ""),
                 max_pairs=planning.MAX_PAIRS, target_shard_bytes=CLI_TARGET_SHARD_BYTES, sample_rate=1e-6)
  p = make_plan(_profiled({"a": sizes}, keys="l"), _profiled({"a": sizes}, keys="r"), **options)
  average = make_plan(sized(22_000, sum(sizes) // 22_000, "l"), sized(22_000, sum(sizes) // 22_000, "r"), **options)
  assert p.sparse and p.grid == average.grid

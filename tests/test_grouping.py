"""beam_job.grouping: group keys read in the one parse, and the grouped plan against a nested-loop reference."""

import itertools
import pickle

import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from beam_job import examples, grouping, planning, sampling
from beam_job.errors import JobError
from beam_job.grouping import MissingKey, decode_key, display_key, encode_key, key_of, make_grouped_plan

MODES = [None, "combinations", "combinations_with_replacement", "product"]
SELF_JOINS = ("combinations", "combinations_with_replacement", "product")
INT64 = st.integers(-2 ** 63, 2 ** 63 - 1)
KEYS = st.one_of(INT64, st.binary(max_size=5))


def record(**features) -> bytes:
  example = tf.train.Example()
  for name, value in features.items():
    feature = example.features.feature[name]
    if value is None:
      continue  # an empty Feature: no value list
    if isinstance(value, tuple):  # (kind, values)
      getattr(feature, value[0]).value.extend(value[1])
    elif isinstance(value, float):
      feature.float_list.value.append(value)
    elif isinstance(value, int):
      feature.int64_list.value.append(value)
    else:
      feature.bytes_list.value.append(value)
  return example.SerializeToString()


def features_of(serialized: bytes):
  return examples.parse_example(serialized).features.feature


# --- keys --------------------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(KEYS, max_size=12))
def test_encoded_keys_sort_as_the_keys_and_round_trip(values):
  encoded = [encode_key(v) for v in values]
  assert [decode_key(e) for e in encoded] == values
  by_bytes = [decode_key(e) for e in sorted(encoded)]
  by_value = sorted(values, key=lambda v: (0, v, b"") if isinstance(v, int) else (1, 0, v))
  assert by_bytes == by_value  # int64 numerically, then bytes in byte order


def test_int64_and_bytes_keys_never_match():
  assert encode_key(1) != encode_key(b"1") and encode_key(0) != encode_key(b"")
  assert encode_key(b"\x80\x00\x00\x00\x00\x00\x00\x31") != encode_key(49)  # the same bytes, another kind
  assert encode_key(2 ** 63 - 1) < encode_key(b"")  # every int64 sorts before every bytes key
  assert display_key(encode_key(-3)) == -3 and display_key(encode_key(b"q\xff")) == "q\\xff"
  assert display_key(encode_key(b"\\x80")) == "\\\\x80" != display_key(encode_key(b"\x80"))  # never alike


@settings(max_examples=100, deadline=None)
@given(KEYS)
def test_key_of_reads_one_value(value):
  assert key_of(features_of(record(q=value, other=1.5)), "q") == encode_key(value)


@pytest.mark.parametrize("features, message", [
    ({"other": 1}, "has no feature 'q', its group key"),
    ({"q": 1.5}, "feature 'q' holds 1 float value; a group key is exactly one int64 or bytes value"),
    ({"q": ("int64_list", [1, 2])}, "feature 'q' holds 2 int64 values; a group key is exactly one int64 or bytes "
                                    "value"),
    ({"q": ("bytes_list", [])}, "feature 'q' holds 0 bytes values; a group key is exactly one int64 or bytes value"),
    ({"q": None}, "feature 'q' holds an empty Feature (no value list); a group key is exactly one int64 or bytes "
                  "value"),
])
def test_key_of_says_what_the_record_holds(features, message):
  parsed = features_of(record(**features))
  with pytest.raises(MissingKey) as raised:
    key_of(parsed, "q")
  assert str(raised.value) == message
  assert not isinstance(raised.value, ValueError)  # not taken for a corrupt payload
  assert ("q" in parsed) == ("q" in features)  # looking did not add the feature


def test_prepare_keyed_is_prepare_plus_the_key_before_selection_and_prefix():
  serialized = record(q=b"query-7", doc=3, score=0.5)
  shapes, shapes_keyed = {}, {}
  prepared, key = examples.prepare_keyed(serialized, "q", "left_", frozenset({"doc"}), shapes_keyed)
  assert prepared == examples.prepare(serialized, "left_", frozenset({"doc"}), shapes)
  assert key == encode_key(b"query-7") and shapes_keyed == shapes
  skipped = {}
  with pytest.raises(MissingKey, match="has no feature 'query'"):
    examples.prepare_keyed(serialized, "query", shapes=skipped)
  assert skipped == {}  # a record left out is not in the output's schema
  with pytest.raises(ValueError, match="not a tf.train.Example"):
    examples.prepare_keyed(b"\xff\xff", "q")


# --- the plan against a nested loop --------------------------------------------------------------------------


def reference(counts, self_join):
  """Every kept pair (key, left rank, right rank), in output order: itertools over each group, keys in order."""
  pairs = []
  for key in sorted(counts, key=decode_key_order):
    left, right = counts[key]
    if self_join == "combinations":
      ranks = itertools.combinations(range(left), 2)
    elif self_join == "combinations_with_replacement":
      ranks = itertools.combinations_with_replacement(range(left), 2)
    else:
      ranks = itertools.product(range(left), range(right))
    pairs.extend((key, l, r) for l, r in ranks)
  return pairs


def decode_key_order(encoded):
  value = decode_key(encoded)
  return (0, value, b"") if isinstance(value, int) else (1, 0, value)


def kept(l, r, self_join):
  step = planning.MIN_STEP.get(self_join)
  return step is None or r >= l + step


def planned_pairs(plan):
  """The pairs the plan's cells hold, shard by shard, and checks their order and counts: cells in key order
  (a cut group's row-major), in a cell by key, then left rank, then right rank (as the full product: by cell,
  then left, then right record)."""
  pairs, shards, last = [], [], None
  for cell in plan.cells():
    shards.append(cell.shard)
    in_cell = [(m.key, l, r) for m in cell.members for l in m.left for r in m.right if kept(l, r, plan.self_join)]
    assert cell.pairs == len(in_cell) > 0
    assert in_cell == sorted(in_cell)
    first = (cell.members[0].key, cell.members[0].left.start, cell.members[0].right.start)
    assert last is None or last < first  # the previous cell's group is before, or the same group's cell is
    last = (cell.members[-1].key, cell.members[-1].left.start, cell.members[-1].right.start)
    pairs.extend(in_cell)
  assert shards == list(range(plan.shard_count))
  return pairs


def check_routing(plan, counts):
  """A record goes to a cell exactly when the cell holds it: routed = members, for each side."""
  held = set()
  for cell in plan.cells():
    for m in cell.members:
      held.update((0, m.key, rank, cell.shard) for rank in m.left)
      held.update((1, m.key, rank, cell.shard) for rank in m.right)
  routed = set()
  for key, (left, right) in counts.items():
    for side, count in ((0, left), (1, right)):
      for rank in range(count):
        shards = list(plan.shards(side, key, rank))
        assert len(shards) == len(set(shards))
        routed.update((side, key, rank, shard) for shard in shards)
        if not plan.needs_rank(side, key):  # a record of an uncut group goes to the same cells whatever its rank
          assert shards == list(plan.shards(side, key, 0))
  assert routed == held


def check_budget(plan, averages, target):
  budget = min(target, planning.CELL_INPUT_MAX_BYTES)
  for cell in plan.cells():
    left, right = cell.records
    assert left <= planning.CELL_RECORDS and right <= planning.CELL_RECORDS
    assert left * averages[0] + right * averages[1] <= budget or (left <= 1 and right <= 1)


@st.composite
def group_counts(draw, self_join):
  """Many tiny groups (empty sides included), and maybe one heavy group."""
  keys = draw(st.lists(KEYS, unique=True, min_size=1, max_size=25))
  counts = {}
  for key in keys:
    left = draw(st.integers(0, 4))
    right = left if self_join in planning.MIN_STEP else draw(st.integers(0, 4))
    counts[encode_key(key)] = (left, right)
  if draw(st.booleans()):
    heavy = encode_key(draw(KEYS.filter(lambda k: encode_key(k) not in counts)))
    left = draw(st.integers(20, 90))
    counts[heavy] = (left, left if self_join in planning.MIN_STEP else draw(st.integers(20, 90)))
  return counts


@settings(max_examples=150, deadline=None)
@given(st.data(), st.sampled_from(MODES), st.integers(100, 6000), st.sampled_from([(10, 10), (30, 5), (1, 50)]))
def test_plan_matches_nested_loops_over_groups(data, self_join, target, averages):
  counts = data.draw(group_counts(self_join))
  plan = make_grouped_plan(counts, averages, self_join=self_join, target_shard_bytes=target)
  expected = reference(counts, self_join)
  planned = planned_pairs(plan)
  assert len(planned) == len(expected) and sorted(planned) == sorted(expected)  # every pair once
  assert plan.pairs == plan.all_pairs == len(expected)
  check_routing(plan, counts)
  check_budget(plan, averages, target)
  with_pairs = {k for k in counts if grouping.group_pairs(*counts[k], self_join, None)}
  assert set(plan.keys) == with_pairs and plan.groups == len(counts)
  assert plan.unpaired[0] == sum(counts[k][0] for k in counts if k not in with_pairs)
  sizes = sorted(((grouping.group_pairs(*counts[k], self_join, None), k) for k in with_pairs),
                 key=lambda e: (-e[0], e[1]))[:grouping.LARGEST_SHOWN]
  assert [(g.pairs, g.key) for g in plan.largest] == sizes


def test_a_heavy_group_is_cut_and_small_groups_are_packed():
  counts = {encode_key(i): (2, 3) for i in range(100)}
  counts[encode_key(b"heavy")] = (300, 200)
  plan = make_grouped_plan(counts, (10, 10), self_join=None, target_shard_bytes=40 * 1000)  # 1,000 pairs a cell
  assert plan.pairs == 100 * 6 + 300 * 200
  heavy = plan.index(encode_key(b"heavy"))
  assert plan.is_cut(heavy) and plan.needs_rank(0, encode_key(b"heavy"))
  assert not plan.needs_rank(0, encode_key(5)) and plan.shards(0, encode_key(5), 1) == range(0, 1)
  packed = [cell for cell in plan.cells() if len(cell.members) > 1]
  assert [len(cell.members) for cell in packed] == [100]  # 600 pairs: one cell
  heavy_cells = plan.shard_count - 1
  assert heavy_cells == plan.cell_count(heavy) > 50
  assert all(cell.pairs <= 1000 for cell in plan.cells())
  assert plan.largest[0] == grouping.Group(encode_key(b"heavy"), 300, 200, 60000, heavy_cells)
  assert plan.summary()["largest_groups"][0] == {"key": "heavy", "left": 300, "right": 200, "pairs": 60000,
                                                 "cells": heavy_cells}


def test_records_per_cell_stay_within_cell_records(monkeypatch):
  monkeypatch.setattr(planning, "CELL_RECORDS", 16)
  counts = {encode_key(i): (i % 7, 5) for i in range(40)}
  counts[encode_key(b"h")] = (50, 70)
  plan = make_grouped_plan(counts, (1, 1), self_join=None, target_shard_bytes=10 ** 6)  # pairs allow much more
  check_budget(plan, (1, 1), 10 ** 6)
  assert sorted(planned_pairs(plan)) == sorted(reference(counts, None))
  assert plan.is_cut(plan.index(encode_key(b"h")))


def test_plan_size_does_not_grow_with_a_heavy_groups_cells():
  counts = {encode_key(i): (3, 3) for i in range(50)}
  counts[encode_key(b"heavy")] = (100_000, 100_000)
  sizes = {}
  for target in (10 ** 6, 10 ** 8):
    plan = make_grouped_plan(counts, (10, 10), self_join="product", target_shard_bytes=target)
    sizes[plan.shard_count] = len(pickle.dumps(plan))
  (few, small), (many, large) = sorted(sizes.items())
  assert many > 50 * few and many > 10_000
  assert abs(large - small) < 64
  cell = make_grouped_plan(counts, (10, 10), self_join="product", target_shard_bytes=10 ** 6).cell(many - 1)
  assert cell.members[0].left.stop == 100_000 and cell.members[0].right.stop == 100_000  # found by arithmetic


def test_max_pairs_counts_the_grouped_pairs():
  counts = {encode_key(b"a"): (10, 10), encode_key(b"b"): (5, 0)}
  assert make_grouped_plan(counts, (1, 1), self_join=None, target_shard_bytes=10 ** 6, max_pairs=100).pairs == 100
  with pytest.raises(JobError) as raised:
    make_grouped_plan(counts, (1, 1), self_join=None, target_shard_bytes=10 ** 6, max_pairs=99)
  assert str(raised.value) == ("the job would write 100 pairs within 1 groups, more than --max_pairs 99; raise "
                               "--max_pairs to allow it")


def test_sampled_plan_counts_expected_pairs_and_sizes_cells_for_them():
  counts = {encode_key(b"a"): (400, 400)}
  whole = make_grouped_plan(counts, (10, 10), self_join=None, target_shard_bytes=40 * 1000)
  sampled = make_grouped_plan(counts, (10, 10), self_join=None, target_shard_bytes=40 * 1000, sample_rate=0.1)
  assert sampled.all_pairs == 160_000 and sampled.pairs == 16_000
  assert sampled.shard_count < whole.shard_count / 5


def test_pickled_plan_works_without_its_cache():
  counts = {encode_key(b"a"): (300, 300), encode_key(1): (2, 2)}
  plan = make_grouped_plan(counts, (10, 10), self_join="combinations", target_shard_bytes=4000)
  before = list(plan.cells())
  assert "_grids" in plan.__dict__
  copy = pickle.loads(pickle.dumps(plan))
  assert "_grids" not in copy.__dict__ and list(copy.cells()) == before


# --- exactly K per left record, within groups ------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(st.data(), st.sampled_from(MODES), st.integers(1, 12), st.integers(200, 20000), st.integers(0, 3))
def test_k_per_left_across_cells_is_the_whole_draw(data, self_join, k, target, seed):
  counts = data.draw(group_counts(self_join))
  averages = (10, data.draw(st.sampled_from([10, 400])))  # heavy right records: cut into columns
  plan = make_grouped_plan(counts, averages, self_join=self_join, target_shard_bytes=target, pairs_per_left=k)
  got = {}
  for cell in plan.cells():
    in_cell = 0
    for m in cell.members:
      for rank in m.left:
        ordinal = hash((m.key, rank)) & 0xFFFF  # any number fixed per record: the row's identity
        size = grouping.eligible(rank, counts[m.key][1], self_join)
        first = grouping.first_candidate(rank, self_join)
        positions = sampling.pick_in(seed, ordinal, k, size, m.right.start - first, m.right.stop - first)
        got.setdefault((m.key, rank), []).extend(first + p for p in positions)
        in_cell += len(positions)
    assert cell.pairs in (None, in_cell)
  total = 0
  for key, (left, right) in counts.items():
    for rank in range(left):
      size = grouping.eligible(rank, right, self_join)
      first = grouping.first_candidate(rank, self_join)
      whole = [first + p for p in sampling.pick(seed, hash((key, rank)) & 0xFFFF, k, size)]
      assert got.get((key, rank), []) == whole and len(whole) == min(k, size)
      total += len(whole)
  assert plan.pairs == total
  check_budget(plan, averages, target)


def test_k_per_left_keeps_whole_rows_when_they_fit():
  counts = {encode_key(b"q"): (1000, 5000)}
  plan = make_grouped_plan(counts, (10, 10), self_join=None, target_shard_bytes=40 * 2000, pairs_per_left=10)
  assert plan.pairs == 10_000 and plan.chunks(0) == (200, 5000)
  assert [cell.pairs for cell in plan.cells()] == [2000] * 5  # exact: each row's draw is in one cell


@pytest.mark.parametrize("self_join", [None, "combinations"])
def test_k_per_left_over_column_cuts_of_a_huge_right_group(self_join):
  counts = {encode_key(b"q"): (300, 300)}
  plan = make_grouped_plan(counts, (10, 100), self_join=self_join, target_shard_bytes=10_000, pairs_per_left=7)
  assert plan.chunks(0)[1] == 50  # 300 right records take 30 KB: columns of half the 10 KB budget
  got = {}
  for cell in plan.cells():
    (m,) = cell.members
    assert cell.pairs is None or m.right.stop == 300
    for rank in m.left:
      first = grouping.first_candidate(rank, self_join)
      size = grouping.eligible(rank, 300, self_join)
      got.setdefault(rank, []).extend(
          first + p for p in sampling.pick_in(11, rank, 7, size, m.right.start - first, m.right.stop - first))
  assert any(cell.pairs is None for cell in plan.cells())
  for rank in range(300):
    size = grouping.eligible(rank, 300, self_join)
    first = grouping.first_candidate(rank, self_join)
    assert got.get(rank, []) == [first + p for p in sampling.pick(11, rank, 7, size)]
  assert plan.pairs == sum(min(7, grouping.eligible(rank, 300, self_join)) for rank in range(300))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([encode_key(1), encode_key(b"a"), encode_key(b"b")]),
                          st.integers(0, 10 * grouping.RANK_BLOCK)), unique_by=lambda r: r[1], max_size=60))
def test_ranks_from_blocks_are_the_ranks_within_groups(records):
  """records: (key, side ordinal). Rank = the block's base + the position among the block's ordinals."""
  blocks = {}
  for key, ordinal in records:
    blocks.setdefault((key, ordinal // grouping.RANK_BLOCK), []).append(ordinal)
  bases = grouping.rank_bases({block: len(ordinals) for block, ordinals in blocks.items()})
  for key, ordinal in records:
    block = (key, ordinal // grouping.RANK_BLOCK)
    rank = bases[block] + sorted(blocks[block]).index(ordinal)
    assert rank == sorted(o for k, o in records if k == key).index(ordinal)


def test_empty_and_invalid_plans():
  empty = make_grouped_plan({}, (1, 1), self_join=None, target_shard_bytes=1000)
  assert empty.shard_count == 0 and list(empty.cells()) == [] and empty.shards(0, encode_key(1), 0) == ()
  with pytest.raises(ValueError, match="same records on both sides"):
    make_grouped_plan({encode_key(1): (2, 3)}, (1, 1), self_join="combinations", target_shard_bytes=1000)
  with pytest.raises(ValueError, match="excludes sample_rate"):
    make_grouped_plan({encode_key(1): (2, 3)}, (1, 1), self_join=None, target_shard_bytes=1000, pairs_per_left=2,
                      sample_rate=0.5)

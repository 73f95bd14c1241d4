"""beam_job.cells: the pairs of a cell, their order and merge, and the reference writer."""

import io
import itertools

import pytest
from hypothesis import given, settings, strategies as st

from beam_job import cells, examples, tfrecord
from beam_job.cells import pair_examples, write_reference
from tests.helpers import canonical, make_example, parse, proto_merge, read_tfrecords, renamed, to_dict

SELF_JOINS = {None: itertools.product, "product": itertools.product, "combinations": itertools.combinations,
              "combinations_with_replacement": itertools.combinations_with_replacement}


def _varint(data, pos):
  value = shift = 0
  while True:
    byte = data[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    shift += 7
    if byte < 0x80:
      return value, pos


def raw_keys(serialized: bytes):
  """The feature names of an Example in the order their map entries appear in the bytes (repeats kept)."""
  keys = []
  pos = 0
  while pos < len(serialized):
    assert serialized[pos] == 0x0A, "Example holds only field 1"
    length, pos = _varint(serialized, pos + 1)
    features, pos = serialized[pos:pos + length], pos + length
    fpos = 0
    while fpos < len(features):
      assert features[fpos] == 0x0A
      elen, fpos = _varint(features, fpos + 1)
      entry, fpos = features[fpos:fpos + elen], fpos + elen
      assert entry[0] == 0x0A
      klen, kpos = _varint(entry, 1)
      keys.append(entry[kpos:kpos + klen].decode("utf-8"))
  return keys


# A record: {name: list of ints}; values are unique per record so every pair's output tells where it came from.
@st.composite
def sides(draw, names=("a", "b", "c", "d"), max_records=5):
  count = draw(st.integers(0, max_records))
  records = []
  for i in range(count):
    chosen = draw(st.sets(st.sampled_from(names)))
    records.append(make_example({name: [i, draw(st.integers(-5, 5))] for name in sorted(chosen)}))
  return records


def prepared_side(records, prefix="", first_ordinal=0, step=1):
  return [(first_ordinal + step * i, examples.prepare(r, prefix)) for i, r in enumerate(records)]


def nested_loop(left_records, right_records, self_join, left_prefix, right_prefix, winner=None):
  """The definition: every kept pair in ordinal order, merged at the protobuf level."""
  if self_join in ("combinations", "combinations_with_replacement"):
    pairs = SELF_JOINS[self_join](left_records, 2)
  else:
    pairs = itertools.product(left_records, right_records)
  out = []
  for left, right in pairs:
    l, r = renamed(parse(left), left_prefix), renamed(parse(right), right_prefix)
    # protobuf merge: the later message wins on an equal name
    out.append(proto_merge(r, l) if winner == "left" else proto_merge(l, r))
  return out


def check_no_duplicates(serialized):
  keys = raw_keys(serialized)
  assert len(keys) == len(set(keys)), keys
  return keys


@settings(max_examples=150, deadline=None)
@given(sides(), sides(), st.sampled_from(list(SELF_JOINS)))
def test_pairs_equal_nested_loop_definition(left, right, self_join):
  if self_join in ("combinations", "combinations_with_replacement"):
    right = left
  got = list(pair_examples(prepared_side(left, "l_"), prepared_side(right, "r_"), self_join=self_join))
  expected = nested_loop(left, right, self_join, "l_", "r_")
  assert [canonical(g) for g in got] == [canonical(e) for e in expected]
  for g in got:
    keys = check_no_duplicates(g)
    # left's entries first, then right's, each side sorted by name
    left_keys = [k for k in keys if k.startswith("l_")]
    assert keys == left_keys + [k for k in keys if k.startswith("r_")]
    assert left_keys == sorted(left_keys)


@settings(max_examples=150, deadline=None)
@given(sides(), sides(), st.sampled_from(["left", "right"]), st.sampled_from(list(SELF_JOINS)))
def test_collision_policies(left, right, policy, self_join):
  if self_join in ("combinations", "combinations_with_replacement"):
    right = left
  lp, rp = prepared_side(left), prepared_side(right)
  collisions = sorted(set().union(*[p.keys for _, p in lp]) & set().union(*[p.keys for _, p in rp]))
  got = list(pair_examples(lp, rp, self_join=self_join, collision=policy, collisions=collisions))
  expected = nested_loop(left, right, self_join, "", "", winner=policy)
  assert [canonical(g) for g in got] == [canonical(e) for e in expected]
  for g in got:
    check_no_duplicates(g)


def test_left_policy_drops_right_value_only_where_left_has_it():
  left = [make_example({"a": [1], "x": [10]}), make_example({"x": [11]})]
  right = [make_example({"a": [2], "y": [20]})]
  got = list(pair_examples(prepared_side(left), prepared_side(right), collision="left", collisions=["a"]))
  assert [to_dict(g) for g in got] == [
      {"a": ("int64_list", (1,)), "x": ("int64_list", (10,)), "y": ("int64_list", (20,))},
      {"a": ("int64_list", (2,)), "x": ("int64_list", (11,)), "y": ("int64_list", (20,))},
  ]
  assert [raw_keys(g) for g in got] == [["a", "x", "y"], ["x", "a", "y"]]


def test_right_policy_drops_left_value_only_where_right_has_it():
  left = [make_example({"a": [1], "b": [b"L"]})]
  right = [make_example({"a": [2]}), make_example({"b": [b"R"]}), make_example({"c": [0.5]})]
  got = list(pair_examples(prepared_side(left), prepared_side(right), collision="right", collisions=["a", "b"]))
  assert [to_dict(g) for g in got] == [
      {"a": ("int64_list", (2,)), "b": ("bytes_list", (b"L",))},
      {"a": ("int64_list", (1,)), "b": ("bytes_list", (b"R",))},
      {"a": ("int64_list", (1,)), "b": ("bytes_list", (b"L",)), "c": ("float_list", (0x3F000000,))},
  ]
  assert [raw_keys(g) for g in got] == [["b", "a"], ["a", "b"], ["a", "b", "c"]]


def test_error_policy_without_collisions_is_concatenation():
  left = [make_example({"a": [1]})]
  right = [make_example({"b": [2]})]
  (got,) = pair_examples(prepared_side(left), prepared_side(right))
  l, r = examples.prepare(left[0]), examples.prepare(right[0])
  assert got == b"\x0a" + examples.varint(len(l.payload) + len(r.payload)) + l.payload + r.payload


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 12), st.integers(0, 12), st.integers(0, 12), st.integers(0, 12),
       st.sampled_from(["combinations", "combinations_with_replacement", "product", None]))
def test_cell_of_a_self_join_keeps_the_right_pairs(a, b, c, d, self_join):
  # A cell holds ordinals [a, b) on the left and [c, d) on the right of one side paired with itself.
  a, b = min(a, b), max(a, b)
  c, d = min(c, d), max(c, d)
  side = [make_example({"i": [i]}) for i in range(max(b, d))]
  left = [(i, examples.prepare(side[i], "l_")) for i in range(a, b)]
  right = [(j, examples.prepare(side[j], "r_")) for j in range(c, d)]
  got = [(parse(g).features.feature["l_i"].int64_list.value[0], parse(g).features.feature["r_i"].int64_list.value[0])
         for g in pair_examples(left, right, self_join=self_join)]
  k = {"combinations": 1, "combinations_with_replacement": 0}.get(self_join)
  expected = [(i, j) for i in range(a, b) for j in range(c, d) if k is None or j >= i + k]
  assert got == expected
  from beam_job.planning import cell_pairs
  assert len(got) == cell_pairs((a, b), (c, d), self_join)


def test_ordinals_not_contiguous():
  left = [(0, examples.prepare(make_example({"i": [0]}), "l_"))]
  right = [(j, examples.prepare(make_example({"j": [j]}), "r_")) for j in (0, 3, 7)]
  got = [parse(g).features.feature["r_j"].int64_list.value[0]
         for g in pair_examples(left, right, self_join="combinations")]
  assert got == [3, 7]


# --- write_reference ---------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(sides(), sides(), st.sampled_from(list(SELF_JOINS)))
def test_write_reference_read_by_tensorflow(tmp_path_factory, left, right, self_join):
  if self_join in ("combinations", "combinations_with_replacement"):
    right = left
  lp, rp = prepared_side(left, "l_"), prepared_side(right, "r_")
  path = tmp_path_factory.mktemp("cell") / "shard.tfrecord"
  with open(path, "wb") as out:
    pairs, size = write_reference(lp, rp, out, self_join=self_join)
  expected = list(pair_examples(lp, rp, self_join=self_join))
  assert pairs == len(expected)
  assert size == path.stat().st_size == sum(16 + len(e) for e in expected)
  assert path.read_bytes() == b"".join(tfrecord.frame(e) for e in expected)
  assert read_tfrecords(path) == expected
  assert [canonical(g) for g in read_tfrecords(path)] == \
      [canonical(e) for e in nested_loop(left, right, self_join, "l_", "r_")]


def test_write_reference_large_cell_flushes_in_pieces(tmp_path):
  # 4 x 4 pairs of about 600 KB: more than the 4 MB buffer, so the writer flushes more than once.
  left = [make_example({"blob": [bytes([i]) * 300_000]}) for i in range(4)]
  right = [make_example({"blob": [bytes([100 + j]) * 300_000]}) for j in range(4)]
  lp, rp = prepared_side(left, "l_"), prepared_side(right, "r_")

  class Counting(io.BytesIO):
    writes = 0

    def write(self, data):
      Counting.writes += 1
      return super().write(data)

  out = Counting()
  pairs, size = write_reference(lp, rp, out)
  assert pairs == 16
  assert size == len(out.getvalue())
  assert Counting.writes >= 3
  path = tmp_path / "big.tfrecord"
  path.write_bytes(out.getvalue())
  records = read_tfrecords(path)
  assert len(records) == 16
  for n, record in enumerate(records):
    feature = parse(record).features.feature
    assert feature["l_blob"].bytes_list.value[0] == bytes([n // 4]) * 300_000
    assert feature["r_blob"].bytes_list.value[0] == bytes([100 + n % 4]) * 300_000


def test_write_reference_empty_cell():
  out = io.BytesIO()
  assert write_reference([], [(0, examples.prepare(make_example({"a": [1]})))], out) == (0, 0)
  assert out.getvalue() == b""


# --- write_cell (the native fast path) equals write_reference byte for byte ----------------------------------


def _write(fn, left, right, **merge):
  out = io.BytesIO()
  result = fn(left, right, out, **merge)
  return result, out.getvalue()


@settings(max_examples=150, deadline=None)
@given(sides(max_records=7), sides(max_records=7), st.sampled_from(list(SELF_JOINS)),
       st.sampled_from(["error", "left", "right"]), st.sampled_from([8 << 20, 1, 200]))
def test_write_cell_equals_write_reference(left, right, self_join, collision, block_bytes):
  if self_join in ("combinations", "combinations_with_replacement"):
    right = left
  prefixes = ("l_", "r_") if collision == "error" else ("", "")
  lp, rp = prepared_side(left, prefixes[0]), prepared_side(right, prefixes[1])
  collisions = sorted(set().union(*[p.keys for _, p in lp]) & set().union(*[p.keys for _, p in rp]))
  merge = dict(self_join=self_join, collision=collision, collisions=collisions)
  original = cells.BLOCK_BYTES
  cells.BLOCK_BYTES = block_bytes  # small blocks: many native calls per cell
  try:
    fast = _write(cells.write_cell, lp, rp, **merge)
  finally:
    cells.BLOCK_BYTES = original
  reference = _write(write_reference, lp, rp, **merge)
  assert fast == reference
  assert reference[0][1] == len(reference[1])


@settings(max_examples=80, deadline=None)
@given(sides(max_records=6), sides(max_records=6), st.sampled_from(list(SELF_JOINS)), st.integers(0, 5),
       st.sampled_from([None, (0.5, 3)]), st.sampled_from([8 << 20, 200]))
def test_a_run_of_payloads_writes_what_its_records_write(left, right, self_join, first, sample, block_bytes):
  """The broadcast side hands a cell its columns as a ``cells.Run`` (payloads from a first ordinal, no wrapper per
  record): the fast path, a row cut into column ranges, a self-join's step and the sampled reference path all
  write the same bytes as for the records themselves."""
  if self_join in ("combinations", "combinations_with_replacement"):
    right = left
  lp = prepared_side(left, "l_", first_ordinal=first)
  rp = [(ordinal, examples.Prepared((), (), record.payload))
        for ordinal, record in prepared_side(right, "r_", first_ordinal=first)]
  run = cells.Run(first, [record.payload for _, record in rp])
  assert (len(run), list(run.ordinals), run.records()) == (len(rp), [ordinal for ordinal, _ in rp], rp)
  merge = dict(self_join=self_join, sample=sample)
  original = cells.BLOCK_BYTES
  cells.BLOCK_BYTES = block_bytes
  try:
    assert _write(cells.write_cell, lp, run, **merge) == _write(write_reference, lp, rp, **merge)
  finally:
    cells.BLOCK_BYTES = original


def test_a_run_cannot_pass_for_a_side():
  """A run keeps no names: a merge that needs them must get records, and a run given to one fails loudly."""
  with pytest.raises(TypeError):
    iter(cells.Run(0, [b""]))


@pytest.mark.skipif(cells._fastframes is None, reason="native module not built")
def test_native_module_is_used_and_its_crc_is_crc32c():
  import google_crc32c
  from beam_job import _fastframes
  for data in (b"", b"a", b"123456789", bytes(range(256)) * 5, b"\xff" * 1031):
    assert _fastframes.crc32c(data) == google_crc32c.value(data)
  assert _fastframes.crc32c(b"123456789") == 0xE3069283
  lefts = [examples.prepare(make_example({"a": [i]})).payload for i in range(3)]
  rights = [examples.prepare(make_example({"b": [j] * 200})).payload for j in range(4)]
  block = _fastframes.frame_block(lefts, rights, [0, 2, 9])
  expected = b"".join(tfrecord.frame(examples.example_bytes(lefts[i], rights[j]))
                      for i, start in enumerate([0, 2, 4]) for j in range(start, 4))
  assert block == expected
  assert _fastframes.frame_block(lefts, rights, None) == b"".join(
      tfrecord.frame(examples.example_bytes(l, r)) for l in lefts for r in rights)


def test_write_cell_without_native_module(monkeypatch):
  left = prepared_side([make_example({"a": [i]}) for i in range(3)], "l_")
  right = prepared_side([make_example({"a": [j]}) for j in range(3)], "r_")
  expected = _write(write_reference, left, right, self_join="combinations")
  monkeypatch.setattr(cells, "_fastframes", None)
  assert _write(cells.write_cell, left, right, self_join="combinations") == expected
  assert expected[0][0] == 3


def test_write_cell_read_by_tensorflow(tmp_path):
  left = [make_example({"a": [i], "x": [b"L"]}) for i in range(3)]
  right = [make_example({"a": [10 + j], "y": [0.5]}) for j in range(2)]
  path = tmp_path / "cell.tfrecord"
  with open(path, "wb") as out:
    pairs, size = cells.write_cell(prepared_side(left), prepared_side(right), out, collision="left",
                                   collisions=["a"])
  assert (pairs, size) == (6, path.stat().st_size)
  records = read_tfrecords(path)
  assert [to_dict(r)["a"] for r in records] == [("int64_list", (i,)) for i in range(3) for _ in range(2)]
  assert all(sorted(raw_keys(r)) == ["a", "x", "y"] for r in records)


# --- the writer's memory: blocks of frames and copies of the losing side are bounded --------------------------


def _recording_frame_block(monkeypatch):
  sizes = []
  native = cells._fastframes.frame_block

  def recording(lefts, rights, starts):
    data = native(lefts, rights, starts)
    sizes.append(len(data))
    return data

  monkeypatch.setattr(cells._fastframes, "frame_block", recording)
  return sizes


@pytest.mark.skipif(cells._fastframes is None, reason="native module not built")
@pytest.mark.parametrize("self_join", [None, "combinations"])
def test_write_cell_cuts_a_row_longer_than_a_block_into_column_ranges(monkeypatch, self_join):
  left = prepared_side([make_example({"a": [i]}) for i in range(3)], "l_")
  right = prepared_side([make_example({"b": [j] * 10}) for j in range(500)], "r_")
  if self_join:
    left = prepared_side([make_example({"a": [i]}) for i in range(500)], "l_")[:3]
  expected = _write(write_reference, left, right, self_join=self_join)
  frame = len(tfrecord.frame(examples.example_bytes(left[0][1].payload, right[0][1].payload)))
  monkeypatch.setattr(cells, "BLOCK_BYTES", 40 * frame)  # a row of 500 pairs is about 12 blocks
  sizes = _recording_frame_block(monkeypatch)
  assert _write(cells.write_cell, left, right, self_join=self_join) == expected
  assert len(sizes) >= 3 * 12 and max(sizes) <= cells.BLOCK_BYTES



@pytest.mark.skipif(cells._fastframes is None, reason="native module not built")
@pytest.mark.parametrize("self_join, collision", [(None, "error"), ("combinations", "error"), (None, "left")])
def test_no_native_call_builds_more_than_a_block_however_uneven_the_records(monkeypatch, self_join, collision):
  """Blocks are measured from each payload's own size, not an average: 990 records of a few bytes and 10 of
  about 20 KB, in runs, on both sides (measured by the average, a block of the large ones was 10 times too
  big). Only a call that builds a single pair may pass the block, when that pair alone is larger."""
  sizes_of = [20_000 if i % 100 >= 90 else 1 for i in range(1000)]
  records = [make_example({"a": [i], "b": [b"x" * size]}) for i, size in enumerate(sizes_of)]
  left = prepared_side(records[::-1][:60] + records[:40], "l_" if collision == "error" else "")
  right = prepared_side(records, "r_" if collision == "error" else "")
  if self_join:
    left = right[:100]
  merge = {"self_join": self_join, "collision": collision, "collisions": ["a", "b"] if collision == "left" else ()}
  expected = _write(write_reference, left, right, **merge)
  monkeypatch.setattr(cells, "BLOCK_BYTES", 100_000)
  calls = []
  native = cells._fastframes.frame_block
  monkeypatch.setattr(cells._fastframes, "frame_block", lambda lefts, rights, starts: calls.append(
      (len(lefts) * len(rights), native(lefts, rights, starts))) or calls[-1][1])
  assert _write(cells.write_cell, left, right, **merge) == expected
  assert max(len(data) for _, data in calls) <= cells.BLOCK_BYTES
  # A pair larger than the block is built alone.
  huge = prepared_side([make_example({"c": [b"y" * 150_000]})], "h_")
  calls.clear()
  expected = _write(write_reference, huge, right[:5])
  assert _write(cells.write_cell, huge, right[:5]) == expected
  assert [pairs for pairs, data in calls if len(data) > cells.BLOCK_BYTES] == [1, 1, 1, 1, 1]

def _peak_bytes(fn):
  import tracemalloc  # pylint: disable=import-outside-toplevel
  tracemalloc.start()
  try:
    fn()
    return tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()


class _Null:
  def write(self, data):
    return len(data)


@pytest.mark.parametrize("writer, buffered", [(cells.write_cell, 2 * (64 << 10)), (write_reference, 2 * (4 << 20))],
                         ids=["write_cell", "write_reference"])
def test_collision_left_holds_one_trimmed_copy_of_the_right_chunk(monkeypatch, writer, buffered):
  # 40 left rows, each winning a different set of the right side's 20 shared names: the right chunk (300
  # records of ~2.4 KB, 0.7 MB) is trimmed 40 ways. Holding every trimmed copy would take ~28 MB.
  names = [f"n{k:02d}" for k in range(20)]
  right = prepared_side([make_example({name: [b"x" * 100] for name in names} | {"r": [j]}) for j in range(300)])
  left = prepared_side([make_example({names[k % 20]: [k], names[(k * 7 + 1) % 20]: [k], "l": [k]})
                        for k in range(40)])
  right_bytes = sum(len(r.payload) for _, r in right)
  monkeypatch.setattr(cells, "BLOCK_BYTES", 64 << 10)
  peak = _peak_bytes(lambda: writer(left, right, _Null(), collision="left", collisions=names))
  assert peak < 3 * right_bytes + buffered + (1 << 20)  # the writer's own buffer of frames counts too

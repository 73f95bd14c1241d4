"""The output's TFMD schema (``PREFIX-schema.pbtxt``) against the records the job writes.

The schema must say what TFDV's schema inference would say of the output (types, presence, value counts,
shapes) where that is certain, list every name an output record holds, and give TF Transform a feature spec
(``schema_utils.schema_as_feature_spec``) with which ``tf.io.parse_example`` reads every output record back to
the input values. Checked three ways: the pair rule of ``output_schema`` against the pairs ``cells`` writes
(any data, policy, self-join and sample), then the README snippet end to end on real TFX data.
"""

import glob
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from hypothesis import example, given, settings, strategies as st
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_transform.tf_metadata import schema_utils

from beam_job import cells, cli, examples, output_schema
from tests.helpers import make_example, parse, read_tfrecords, write_tfrecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.join(os.path.dirname(ROOT), "shared", "realdata")
_DTYPES = {"INT": tf.int64, "FLOAT": tf.float32, "BYTES": tf.string}


# --- what TFDV would infer from the output itself, computed from the output records ------------------------


def _truth(records):
  """Name -> (kinds, records valued, lengths of its lists) over serialized output records, counted as TFDV and
  tf.io count: a Feature without a value list is missing."""
  found = {}
  for record in records:
    for name, feature in parse(record).features.feature.items():
      kinds, valued, lengths = found.setdefault(name, (set(), [0], set()))
      kind = feature.WhichOneof("kind")
      if kind:
        kinds.add(examples.KINDS[kind])
        valued[0] += 1
        lengths.add(len(getattr(feature, kind).value))
  return {name: (kinds, valued[0], lengths) for name, (kinds, valued, lengths) in found.items()}


def _spec(text: str) -> dict:
  """README's snippet: the TF Transform feature spec of a schema in text format."""
  return schema_utils.schema_as_feature_spec(text_format.Parse(text, schema_pb2.Schema())).feature_spec


def _rows(tensor) -> list:
  """Per-record value lists of a parsed FixedLen (dense) or VarLen (sparse) tensor."""
  if isinstance(tensor, tf.sparse.SparseTensor):
    tensor = tf.RaggedTensor.from_sparse(tensor)
  return [list(row) for row in tensor.numpy()] if isinstance(tensor, tf.Tensor) else tensor.to_list()


def _values(example, name) -> list:
  feature = example.features.feature.get(name)
  kind = feature.WhichOneof("kind") if feature is not None else None
  return list(getattr(feature, kind).value) if kind else []


def _same(got, expected) -> bool:
  if isinstance(expected, float):
    return np.float32(got) == np.float32(expected) or (math.isnan(expected) and math.isnan(got))
  return got == expected


def _assert_parses_back(records, spec, expected):
  """``tf.io.parse_example`` with ``spec`` reads each record's lists as ``expected`` (Examples) holds them."""
  parsed = tf.io.parse_example(records, spec)
  for name in spec:
    rows = _rows(parsed[name])
    assert len(rows) == len(records)
    for row, record in zip(rows, expected):
      want = _values(record, name)
      assert len(row) == len(want) and all(_same(g, w) for g, w in zip(row, want)), (name, row, want)


# --- the pair rule against the pairs written, for any data -------------------------------------------------


@st.composite
def _features(draw):
  kind = draw(st.sampled_from(["absent", "none", "int64_list", "float_list", "bytes_list"]))
  if kind == "absent":
    return None
  feature = tf.train.Feature()
  if kind == "none":  # an entry without a value list, as TFX's CSV ExampleGen writes an empty cell
    feature.SetInParent()
    return feature
  length = draw(st.integers(0, 3))
  values = {"int64_list": list(range(length)), "float_list": [0.5] * length, "bytes_list": [b"v"] * length}[kind]
  getattr(feature, kind).SetInParent()
  getattr(feature, kind).value.extend(values)
  return feature


@st.composite
def _side(draw, names=("a", "b", "c"), max_records=4):
  records = []
  for _ in range(draw(st.integers(0, max_records))):
    example = tf.train.Example()
    example.features.SetInParent()
    for name in names:
      feature = draw(_features())
      if feature is not None:
        example.features.feature[name].CopyFrom(feature)
    records.append(example.SerializeToString(deterministic=True))
  return records


def _prepared(records, prefix, index_name):
  shapes, side = {}, []
  for ordinal, record in enumerate(records):
    prepared = examples.prepare(record, prefix, None, shapes)
    side.append((ordinal, examples.with_int64(prepared, index_name, ordinal) if index_name else prepared))
  return side, output_schema.side_features(shapes)


@settings(max_examples=150, deadline=None)
@example(left=[make_example({"b": [1]}), make_example({"a": [1]})], right=[], self_join="combinations",
         collision="prefix", index=False, sample=None)  # 'a' only in the last record: in no pair
@given(left=_side(), right=_side(), self_join=st.sampled_from([None, "product", "combinations",
                                                                "combinations_with_replacement"]),
       collision=st.sampled_from(["left", "right", "prefix"]), index=st.booleans(),
       sample=st.sampled_from([None, (0.5, 3)]))
def test_the_schema_states_what_the_written_pairs_hold(left, right, self_join, collision, index, sample):
  prefixes = ("l_", "r_") if collision == "prefix" else ("", "")
  index_names = ("left_index", "right_index") if index else (None, None)
  if self_join:
    right = left
  left_side, left_features = _prepared(left, prefixes[0], index_names[0])
  right_side, right_features = _prepared(right, prefixes[1], index_names[1])
  collisions = sorted(set(left_features) & set(right_features)) if collision != "prefix" else ()
  records = list(cells.pair_examples(left_side, right_side, self_join=self_join, collision=collision,
                                     collisions=collisions, sample=sample))
  found = output_schema.output_features((left_features, right_features), (len(left), len(right)),
                                        collision=collision, pairs=len(records), self_join=self_join,
                                        sampled=sample is not None, index_names=index_names)
  truth = _truth(records)
  exact = self_join in (None, "product") and sample is None
  assert set(found) >= set(truth) and (set(found) == set(truth) or not exact or not records)
  for name in set(found) - set(truth):  # a name that no pair written holds (e.g. only in a left-out record)
    assert not found[name].somewhere and not found[name].everywhere
  for name, (kinds, valued, lengths) in truth.items():
    feature = found[name]
    assert feature.kinds >= kinds and (feature.kinds == kinds or not exact)
    assert not feature.everywhere or valued == len(records)
    assert not feature.somewhere or valued > 0
    if exact:
      assert feature.everywhere == (valued == len(records)) and feature.somewhere == (valued > 0)
    if lengths:
      assert feature.fewest <= min(lengths) and max(lengths) <= feature.most
      assert (feature.fewest, feature.most) == (min(lengths), max(lengths)) or not exact
  # Whatever the case, TF Transform's feature spec of the schema parses every record written.
  spec = _spec(output_schema.to_pbtxt(found))
  assert set(spec) == {name for name, feature in found.items() if len(feature.kinds) < 2}
  if records and spec:
    _assert_parses_back(records, spec, [parse(r) for r in records])


def test_the_schema_is_written_as_tfdv_infers_it():
  def values(entries, valued, kinds, fewest, most):
    return output_schema.Values(entries, valued, frozenset(kinds), fewest, most)
  left = {"fixed": values(4, 4, {"FLOAT"}, 3, 3), "some": values(4, 2, {"INT"}, 1, 1),
          "varying": values(4, 4, {"INT"}, 2, 9), "with_empty": values(4, 4, {"BYTES"}, 0, 2),
          "unset": values(4, 0, (), 0, 0), "mixed": values(4, 4, {"INT", "BYTES"}, 1, 1)}
  found = output_schema.output_features((left, {"r": values(2, 2, {"INT"}, 1, 1)}), (4, 2), collision="error",
                                        pairs=8)
  schema = output_schema.schema(found)
  assert schema == text_format.Parse("""
    feature { name: "fixed" type: FLOAT presence { min_fraction: 1.0 min_count: 1 } shape { dim { size: 3 } } }
    feature { name: "mixed" lifecycle_stage: DEPRECATED presence { min_fraction: 1.0 min_count: 1 }
              shape { dim { size: 1 } } annotation { comment: "holds BYTES and INT values: no single type parses it" } }
    feature { name: "r" type: INT presence { min_fraction: 1.0 min_count: 1 } shape { dim { size: 1 } } }
    feature { name: "some" type: INT presence { min_count: 1 } value_count { min: 1 max: 1 } }
    feature { name: "unset" type: BYTES }
    feature { name: "varying" type: INT presence { min_fraction: 1.0 min_count: 1 } value_count { min: 1 } }
    feature { name: "with_empty" type: BYTES presence { min_fraction: 1.0 min_count: 1 } }
    """, schema_pb2.Schema())
  spec = schema_utils.schema_as_feature_spec(schema).feature_spec
  assert spec == {"fixed": tf.io.FixedLenFeature([3], tf.float32), "r": tf.io.FixedLenFeature([1], tf.int64),
                  "some": tf.io.VarLenFeature(tf.int64), "unset": tf.io.VarLenFeature(tf.string),
                  "varying": tf.io.VarLenFeature(tf.int64), "with_empty": tf.io.VarLenFeature(tf.string)}
  # Without pairs, or sampled, only what is certain: no presence where a sample may miss every list.
  assert [f.HasField("presence") for f in output_schema.schema(output_schema.output_features(
      (left, {}), (4, 0), collision="error", pairs=0)).feature] == [False] * 6
  sampled = output_schema.output_features((left, {}), (4, 5), collision="error", pairs=3, sampled=True)
  assert {name: (f.everywhere, f.somewhere) for name, f in sampled.items() if f.somewhere or f.everywhere} == {
      "fixed": (True, True), "mixed": (True, True), "varying": (True, True), "with_empty": (True, True)}


# --- end to end on real TFX data: README's snippet parses every output record ------------------------------


def _real(folder, count=None):
  paths = sorted(glob.glob(os.path.join(REAL, folder, "*")))
  records = read_tfrecords(paths[:1], compression="gzip" if paths[0].endswith(".gz") else None)
  return records[:count]


def _schema_and_spec(summary):
  text = open(summary["schema"], encoding="utf-8").read()
  return {f.name: f for f in text_format.Parse(text, schema_pb2.Schema()).feature}, _spec(text)


def _merged(left, right, policy):
  """The pair as the job merges it: left's features and right's; under left|right the winner's entry."""
  example = tf.train.Example()
  for name, feature in left.features.feature.items():
    if not (policy == "right" and name in right.features.feature):
      example.features.feature[name].CopyFrom(feature)
  for name, feature in right.features.feature.items():
    if not (policy == "left" and name in left.features.feature):
      example.features.feature[name].CopyFrom(feature)
  return example


def _check_output(summary, lefts, rights, policy, schema):
  records = read_tfrecords(summary["shards"])
  assert len(records) == len(lefts) * len(rights) == summary["pairs"]
  assert set(schema) == set(_truth(records))  # every name an output record holds, valued or not
  expected = []
  for record in records:
    pair = parse(record)
    i, j = _values(pair, "left_index")[0], _values(pair, "right_index")[0]
    merged = _merged(parse(lefts[i]), parse(rights[j]), policy)
    merged.features.feature["left_index"].int64_list.value.append(i)
    merged.features.feature["right_index"].int64_list.value.append(j)
    expected.append(merged)
  return records, expected


@pytest.fixture(scope="module")
def taxi_and_wmt(tmp_path_factory):
  folder = tmp_path_factory.mktemp("real")
  lefts, rights = _real("taxi_unlabelled"), _real("wmt14")
  left = write_tfrecord(str(folder / "taxi.tfrecord"), lefts)
  right = write_tfrecord(str(folder / "wmt14.tfrecord"), rights)
  summary = cli.run(["--left", left, "--right", right, "--output", str(folder / "pairs"), "--index_features"])
  return summary, lefts, rights


def test_readme_snippet_parses_real_tfx_output(taxi_and_wmt):
  summary, lefts, rights = taxi_and_wmt
  schema, spec = _schema_and_spec(summary)
  records, expected = _check_output(summary, lefts, rights, "error", schema)
  # Names with no value in any record (pickup_census_tract) or in some (company) are there, typed as TFDV
  # types them; a list of one value in every record is a FixedLenFeature, lists of 2 to 53 values a VarLen.
  assert spec["pickup_census_tract"] == tf.io.VarLenFeature(tf.string)
  assert spec["company"] == tf.io.VarLenFeature(tf.string)
  assert spec["fare"] == tf.io.FixedLenFeature([1], tf.float32)
  assert spec["source_id"] == tf.io.VarLenFeature(tf.int64)
  assert spec["source_word"] == tf.io.VarLenFeature(tf.string)
  assert spec["left_index"] == spec["right_index"] == tf.io.FixedLenFeature([1], tf.int64)
  assert len(spec) == len(schema) == 17 + 10 + 2
  _assert_parses_back(records, spec, expected)


def test_schema_content_of_real_tfx_output(taxi_and_wmt):
  schema, _ = _schema_and_spec(taxi_and_wmt[0])
  unset, company, fare, source_id = (schema[n] for n in ("pickup_census_tract", "company", "fare", "source_id"))
  assert unset.type == schema_pb2.BYTES and not unset.HasField("presence") and not unset.HasField("value_count")
  assert company.type == schema_pb2.BYTES and company.presence == schema_pb2.FeaturePresence(min_count=1)
  assert company.value_count == schema_pb2.ValueCount(min=1, max=1)
  assert fare.type == schema_pb2.FLOAT and fare.presence == schema_pb2.FeaturePresence(min_fraction=1.0, min_count=1)
  assert fare.shape == schema_pb2.FixedShape(dim=[schema_pb2.FixedShape.Dim(size=1)])
  assert source_id.type == schema_pb2.INT and source_id.value_count == schema_pb2.ValueCount(min=1)
  assert source_id.presence.min_fraction == 1.0


@pytest.mark.parametrize("policy", ["left", "right"])
def test_readme_snippet_parses_a_real_collision(tmp_path, policy):
  # Left: Chicago taxi rows from CSV ExampleGen (int64 dropoff_census_tract, no 'tips') and penguins (none of
  # the taxi names); right: the "external" taxi rows (float dropoff_census_tract, 'tips'). Under left, a pair
  # takes the right record's entry where the left record has none, so dropoff_census_tract holds ints and
  # floats; under right every pair takes the right record's.
  taxi, penguins, external = _real("taxi_unlabelled", 30), _real("penguin_eval", 10), _real("taxi_external", 12)
  lefts = taxi + penguins
  left = [write_tfrecord(str(tmp_path / "left-0.tfrecord"), taxi),
          write_tfrecord(str(tmp_path / "left-1.tfrecord"), penguins)]
  right = write_tfrecord(str(tmp_path / "right.tfrecord"), external)
  summary = cli.run(["--left", str(tmp_path / "left-*.tfrecord"), "--right", right, "--output",
                     str(tmp_path / "pairs"), "--collision", policy, "--index_features"])
  assert len(left) == 2
  schema, spec = _schema_and_spec(summary)
  records, expected = _check_output(summary, lefts, external, policy, schema)
  tract = schema["dropoff_census_tract"]
  if policy == "left":
    assert not tract.HasField("type") and tract.lifecycle_stage == schema_pb2.DEPRECATED
    assert "dropoff_census_tract" not in spec  # no single dtype parses it: TF Transform leaves it out
    kinds = {parse(r).features.feature["dropoff_census_tract"].WhichOneof("kind") for r in records}
    assert kinds == {"int64_list", "float_list", None}
  else:
    assert tract.type == schema_pb2.FLOAT and spec["dropoff_census_tract"] == tf.io.VarLenFeature(tf.float32)
  # 'tips' comes from the right records only, in every pair; the penguins' names from a third of the left ones.
  assert schema["tips"].presence == schema_pb2.FeaturePresence(min_fraction=1.0, min_count=1)
  assert spec["tips"] == tf.io.FixedLenFeature([1], tf.float32)
  assert schema["species"].presence == schema_pb2.FeaturePresence(min_count=1)
  assert spec["species"] == tf.io.VarLenFeature(tf.int64)
  _assert_parses_back(records, spec, expected)


def test_sampled_and_empty_outputs_state_only_what_is_certain(tmp_path):
  left = write_tfrecord(str(tmp_path / "left.tfrecord"),
                        [make_example({"all": [i], "some": [1.5] * (i % 2)}) for i in range(8)])
  right = write_tfrecord(str(tmp_path / "right.tfrecord"), [make_example({"r": [b"x", b"y"]}) for _ in range(8)])
  empty = write_tfrecord(str(tmp_path / "empty.tfrecord"), [])
  summary = cli.run(["--left", left, "--right", right, "--output", str(tmp_path / "sampled"), "--sample_rate",
                     "0.2", "--seed", "5"])
  assert 0 < summary["pairs"] < 64
  schema, spec = _schema_and_spec(summary)
  # 'all' and 'r' are in every record of their side, so in every pair written; 'some' may be in none.
  assert schema["all"].presence == schema["r"].presence == schema_pb2.FeaturePresence(min_fraction=1.0,
                                                                                        min_count=1)
  assert not schema["some"].HasField("presence") and schema["some"].value_count == schema_pb2.ValueCount(min=1,
                                                                                                         max=1)
  assert spec["r"] == tf.io.FixedLenFeature([2], tf.string)
  records = read_tfrecords(summary["shards"])
  _assert_parses_back(records, spec, [parse(r) for r in records])
  summary = cli.run(["--left", left, "--right", empty, "--output", str(tmp_path / "empty")])
  schema, spec = _schema_and_spec(summary)
  assert summary["pairs"] == 0 and sorted(schema) == ["all", "some"]
  assert not any(f.HasField("presence") for f in schema.values())
  assert spec == {"all": tf.io.VarLenFeature(tf.int64), "some": tf.io.VarLenFeature(tf.float32)}

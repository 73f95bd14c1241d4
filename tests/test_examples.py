"""beam_job.example_proto and beam_job.examples against TensorFlow's tf.train.Example."""

import math
import struct

import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st

from beam_job import example_proto, examples
from beam_job.examples import Prepared, example_bytes, parse_example, prepare, varint, without
from tests.helpers import canonical, make_example, parse, proto_merge, renamed, to_dict

INT64 = st.integers(-2 ** 63, 2 ** 63 - 1)
FLOAT32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
NAMES = st.text(max_size=12)


@st.composite
def features(draw):
  kind = draw(st.sampled_from(["int64", "float", "bytes", "empty_int64", "empty_float", "empty_bytes", "none"]))
  if kind == "int64":
    return tf.train.Feature(int64_list=tf.train.Int64List(value=draw(st.lists(INT64, min_size=1, max_size=6))))
  if kind == "float":
    return tf.train.Feature(float_list=tf.train.FloatList(value=draw(st.lists(FLOAT32, min_size=1, max_size=6))))
  if kind == "bytes":
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=draw(st.lists(st.binary(max_size=20),
                                                                               min_size=1, max_size=4))))
  if kind == "empty_int64":
    return tf.train.Feature(int64_list=tf.train.Int64List())
  if kind == "empty_float":
    return tf.train.Feature(float_list=tf.train.FloatList())
  if kind == "empty_bytes":
    return tf.train.Feature(bytes_list=tf.train.BytesList())
  return tf.train.Feature()


@st.composite
def tf_examples(draw, names=NAMES, max_size=5):
  mapping = draw(st.dictionaries(names, features(), max_size=max_size))
  example = tf.train.Example()
  if mapping or draw(st.booleans()):
    example.features.SetInParent()
  for name, feat in mapping.items():
    example.features.feature[name].CopyFrom(feat)
  return example


def serialize(example) -> bytes:
  return example.SerializeToString(deterministic=True)


def float_bits(values):
  return [struct.unpack("<I", struct.pack("<f", v))[0] for v in values]


# --- the message classes -----------------------------------------------------------------------------------


def test_descriptor_matches_tensorflow():
  ours, theirs = example_proto.Example.DESCRIPTOR, tf.train.Example.DESCRIPTOR
  assert ours.full_name == theirs.full_name == "tensorflow.Example"
  for name in ("Example", "Features", "Feature", "BytesList", "FloatList", "Int64List"):
    a = ours.file.pool.FindMessageTypeByName(f"tensorflow.{name}")
    b = getattr(tf.train, name).DESCRIPTOR
    assert [(f.name, f.number, f.type, f.is_repeated) for f in a.fields] == \
        [(f.name, f.number, f.type, f.is_repeated) for f in b.fields]


def test_known_bytes_parse_with_both_classes():
  serialized = make_example({"i": [1, -1, 2 ** 63 - 1, -2 ** 63], "f": [0.5, float("inf")], "b": [b"x", b""],
                             "e": []})
  ours = example_proto.Example.FromString(serialized)
  assert list(ours.features.feature["i"].int64_list.value) == [1, -1, 2 ** 63 - 1, -2 ** 63]
  assert list(ours.features.feature["f"].float_list.value) == [0.5, math.inf]
  assert list(ours.features.feature["b"].bytes_list.value) == [b"x", b""]
  assert ours.features.feature["e"].WhichOneof("kind") is None
  assert serialize(ours) == serialized


@settings(max_examples=150, deadline=None)
@given(tf_examples())
def test_classes_are_byte_compatible(example):
  serialized = serialize(example)
  ours = example_proto.Example.FromString(serialized)
  assert serialize(ours) == serialized
  assert serialize(parse(serialize(ours))) == serialized
  # Built field by field in our classes, the bytes are TensorFlow's too.
  rebuilt = example_proto.Example()
  if example.HasField("features"):
    rebuilt.features.SetInParent()
  for name, feat in example.features.feature.items():
    rebuilt.features.feature[name].ParseFromString(feat.SerializeToString())
  assert serialize(rebuilt) == serialized


def test_packed_encoding_is_read_unpacked_too():
  # An Int64List written unpacked (field 1, varint, repeated) must parse identically in both classes.
  int64_list = b"\x08\x01\x08\x02"
  feature = b"\x1a" + bytes([len(int64_list)]) + int64_list
  entry = b"\x0a\x01k" + b"\x12" + bytes([len(feature)]) + feature
  serialized = b"\x0a" + bytes([len(entry) + 2]) + b"\x0a" + bytes([len(entry)]) + entry
  assert list(parse(serialized).features.feature["k"].int64_list.value) == [1, 2]
  assert list(example_proto.Example.FromString(serialized).features.feature["k"].int64_list.value) == [1, 2]


# --- varint and entries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, encoded", [(0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"),
                                            (300, b"\xac\x02"), (2 ** 32, b"\x80\x80\x80\x80\x10")])
def test_varint(value, encoded):
  assert varint(value) == encoded


def test_encode_entry_is_a_features_map_entry():
  feat = tf.train.Feature(int64_list=tf.train.Int64List(value=[7]))
  entry = examples.encode_entry("name", feat.SerializeToString())
  features = tf.train.Features.FromString(entry)
  assert dict(features.feature) == {"name": feat}


# --- prepare + example_bytes = the protobuf merge ------------------------------------------------------------


def expected_merge(left: bytes, right: bytes, left_prefix: str, right_prefix: str) -> tf.train.Example:
  return proto_merge(renamed(parse(left), left_prefix), renamed(parse(right), right_prefix))


def test_prepare_and_merge_simple():
  left = make_example({"b": [1, 2], "a": [b"x"]})
  right = make_example({"c": [0.25], "a": [b"y"]})
  l, r = prepare(left, "L_"), prepare(right, "R_")
  assert l.keys == ("L_a", "L_b")
  assert r.keys == ("R_a", "R_c")
  assert l.ends[-1] == len(l.payload) and r.ends[-1] == len(r.payload)
  got = parse(example_bytes(l.payload, r.payload))
  assert to_dict(got) == {"L_a": ("bytes_list", (b"x",)), "L_b": ("int64_list", (1, 2)),
                          "R_a": ("bytes_list", (b"y",)), "R_c": ("float_list", (0x3E800000,))}
  assert canonical(got) == canonical(expected_merge(left, right, "L_", "R_"))


def test_prepare_is_deterministic_and_sorted():
  a = make_example({"z": [1], "a": [2], "m": [3]})
  reordered = tf.train.Example()
  for name in ("m", "z", "a"):
    reordered.features.feature[name].int64_list.value.append({"z": 1, "a": 2, "m": 3}[name])
  assert prepare(a) == prepare(reordered.SerializeToString())
  assert prepare(a).keys == ("a", "m", "z")


def test_prepare_empty_example():
  assert prepare(b"") == Prepared((), (), b"")
  assert prepare(make_example({})) == Prepared((), (), b"")
  assert example_bytes(b"", b"") == b"\x0a\x00"
  assert len(parse(example_bytes(b"", b"")).features.feature) == 0


@settings(max_examples=150, deadline=None)
@given(tf_examples(), tf_examples(), st.sampled_from([("", ""), ("left_", "right_"), ("", "r/"), ("é", "")]))
def test_merge_equals_protobuf_merge(left_example, right_example, prefixes):
  left, right = serialize(left_example), serialize(right_example)
  l, r = prepare(left, prefixes[0]), prepare(right, prefixes[1])
  merged_bytes = example_bytes(l.payload, r.payload)
  got = parse(merged_bytes)
  expected = expected_merge(left, right, *prefixes)
  # Deterministic bytes of the feature maps: equal bit for bit, so nan and -0.0 are compared exactly.
  assert canonical(got) == canonical(expected)
  assert to_dict(got) == to_dict(expected)
  # Our own classes read the same thing.
  assert canonical(example_proto.Example.FromString(merged_bytes)) == canonical(expected)
  # Entries are written sorted per side and each name once per side.
  assert list(l.keys) == sorted(prefixes[0] + k for k in left_example.features.feature)
  assert len(l.ends) == len(l.keys)
  assert list(l.ends) == sorted(l.ends)


@settings(max_examples=60, deadline=None)
@given(tf_examples(names=st.sampled_from(["a", "b", "c", "d"])), tf_examples(names=st.sampled_from(["a", "b", "c", "d"])))
def test_merge_with_shared_names_equals_protobuf_merge(left_example, right_example):
  # Without prefixes, equal names: the protobuf rule is that the later (right) entry wins.
  left, right = serialize(left_example), serialize(right_example)
  got = parse(example_bytes(prepare(left).payload, prepare(right).payload))
  assert canonical(got) == canonical(proto_merge(left_example, right_example))


def test_merge_keeps_float_bit_patterns():
  values = [float("nan"), -0.0, float("-inf"), 1e-45, 3.4028234663852886e38]
  left = make_example({"f": values})
  nan_payload = struct.unpack("<f", struct.pack("<I", 0x7FC01234))[0]
  raw = tf.train.Example()
  raw.features.feature["g"].float_list.value.append(nan_payload)
  got = parse(example_bytes(prepare(left).payload, prepare(raw.SerializeToString()).payload))
  assert float_bits(got.features.feature["f"].float_list.value) == float_bits(values)
  assert float_bits(got.features.feature["g"].float_list.value) == \
      float_bits(raw.features.feature["g"].float_list.value)


def test_large_payload_length_varint():
  big = make_example({"blob": [b"x" * 70000]})
  l = prepare(big, "l_")
  r = prepare(make_example({"i": list(range(100))}), "r_")
  got = parse(example_bytes(l.payload, r.payload))
  assert got.features.feature["l_blob"].bytes_list.value[0] == b"x" * 70000
  assert list(got.features.feature["r_i"].int64_list.value) == list(range(100))


# --- select and without ------------------------------------------------------------------------------------


def test_prepare_with_select():
  serialized = make_example({"a": [1], "b": [2.0], "c": [b"3"]})
  p = prepare(serialized, "p_", select={"a", "c", "zzz"})
  assert p.keys == ("p_a", "p_c")
  assert to_dict(example_bytes(p.payload, b"")) == {"p_a": ("int64_list", (1,)), "p_c": ("bytes_list", (b"3",))}
  assert prepare(serialized, select=set()) == Prepared((), (), b"")
  # select names the original feature names, not the renamed ones
  assert prepare(serialized, "p_", select={"p_a"}).keys == ()


@settings(max_examples=100, deadline=None)
@given(tf_examples(names=st.sampled_from(["a", "b", "c", "d", "e"])), st.sets(st.sampled_from(["a", "b", "c", "d", "e", "x"])),
       st.sampled_from(["", "p_"]))
def test_select_property(example, select, prefix):
  p = prepare(serialize(example), prefix, select=select)
  expected = tf.train.Example()
  for name, feat in example.features.feature.items():
    if name in select:
      expected.features.feature[prefix + name].CopyFrom(feat)
  assert canonical(example_bytes(p.payload, b"")) == canonical(expected)
  assert p.keys == tuple(sorted(prefix + n for n in example.features.feature if n in select))


def test_without_drops_exactly_the_named_entries():
  p = prepare(make_example({"a": [1], "b": [2], "c": [3]}))
  assert without(p, set()) == p.payload
  assert without(p, {"zzz"}) is p.payload
  assert to_dict(example_bytes(without(p, {"b"}), b"")) == {"a": ("int64_list", (1,)), "c": ("int64_list", (3,))}
  assert to_dict(example_bytes(without(p, {"a", "c", "zzz"}), b"")) == {"b": ("int64_list", (2,))}
  assert without(p, {"a", "b", "c"}) == b""
  assert without(p, frozenset({"a"})) == prepare(make_example({"b": [2], "c": [3]})).payload


@settings(max_examples=100, deadline=None)
@given(tf_examples(names=st.sampled_from(["a", "b", "c", "d", "e"])), st.sets(st.sampled_from(["a", "b", "c", "d", "e", "x"])))
def test_without_property(example, names):
  p = prepare(serialize(example))
  kept = tf.train.Example()
  for name, feat in example.features.feature.items():
    if name not in names:
      kept.features.feature[name].CopyFrom(feat)
  trimmed = without(p, names)
  assert canonical(example_bytes(trimmed, b"")) == canonical(kept)
  assert trimmed == prepare(serialize(example), select=set(example.features.feature) - names).payload


# --- parse failures ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"\xff", b"\x0a\x05ab", b"not an example at all", b"\x0a\x03\x0a\x01\xff",
                                     b"\x0b"])
def test_parse_failure_raises_value_error(garbage):
  with pytest.raises(ValueError, match="not a tf.train.Example"):
    parse_example(garbage)
  with pytest.raises(ValueError, match="not a tf.train.Example"):
    prepare(garbage)


def test_parse_failure_on_invalid_utf8_name():
  # A feature name must be UTF-8 (proto3 string); TensorFlow refuses the bytes too.
  entry = b"\x0a\x01\xff\x12\x00"
  serialized = b"\x0a" + bytes([len(entry) + 2]) + b"\x0a" + bytes([len(entry)]) + entry
  with pytest.raises(Exception):
    parse(serialized)
  with pytest.raises(ValueError, match="not a tf.train.Example"):
    prepare(serialized)


def test_parse_error_is_a_value_error_not_decode_error():
  with pytest.raises(ValueError) as info:
    parse_example(b"\xff\xff")
  assert str(info.value).startswith("payload is not a tf.train.Example (")
  assert info.value.__cause__ is None


# --- payloads that parse but are not tf.train.Example ------------------------------------------------------

_EXAMPLE_FIELDS = "not a tf.train.Example (whose only field is 1, Features)"
_SEQUENCE_HINT = "; it looks like a tf.train.SequenceExample, whose feature_lists would be lost"


def _ld(tag: int, data: bytes) -> bytes:
  return bytes((tag,)) + varint(len(data)) + data


def _sequence_example(with_lists: bool = True) -> bytes:
  example = tf.train.SequenceExample()
  example.context.feature["user"].int64_list.value.append(7)
  if with_lists:
    example.feature_lists.feature_list["clicks"].feature.add().int64_list.value.extend([1, 2])
  return example.SerializeToString()


def test_sequence_example_is_corrupt_with_a_hint():
  # TensorFlow's own parser would keep the context and drop feature_lists without a word.
  serialized = _sequence_example()
  assert to_dict(serialized) == {"user": ("int64_list", (7,))}
  with pytest.raises(ValueError) as info:
    prepare(serialized)
  assert str(info.value) == f"payload has field 2 (length-delimited), {_EXAMPLE_FIELDS}{_SEQUENCE_HINT}"


def test_only_feature_lists_is_corrupt_with_a_hint():
  with pytest.raises(ValueError) as info:
    prepare(_ld(0x12, b""))
  assert str(info.value) == f"payload has field 2 (length-delimited), {_EXAMPLE_FIELDS}{_SEQUENCE_HINT}"


def test_sequence_example_without_feature_lists_is_an_example():
  # Only its context: the very bytes of an Example, nothing to lose.
  assert prepare(_sequence_example(with_lists=False)) == prepare(make_example({"user": [7]}))


@pytest.mark.parametrize("payload, found", [
    (b"\x08\x01", "field 1 (varint)"),
    (b"\x0d\x00\x00\x00\x00", "field 1 (32-bit)"),
    (b"\x09" + bytes(8), "field 1 (64-bit)"),
    (b"\x0b\x08\x01\x0c", "field 1 (group)"),
    (b"\x18\x05", "field 3 (varint)"),
    (b"\x0a\x00\x18\x05\x25\x00\x00\x00\x00", "fields 3 (varint), 4 (32-bit)"),
    (b"\x10\x01\x18\x01\x20\x01\x28\x01\x30\x01", "fields 2 (varint), 3 (varint), 4 (varint) and 2 more"),
], ids=["f1-varint", "f1-32bit", "f1-64bit", "f1-group", "f3", "two", "five"])
def test_fields_tf_train_example_lacks_are_corrupt(payload, found):
  with pytest.raises(ValueError) as info:
    prepare(payload)
  assert str(info.value) == f"payload has {found}, {_EXAMPLE_FIELDS}"


def test_field_2_of_another_wire_type_has_no_sequence_hint():
  with pytest.raises(ValueError) as info:
    prepare(make_example({"a": [1]}) + b"\x10\x01")
  assert str(info.value) == f"payload has field 2 (varint), {_EXAMPLE_FIELDS}"


@pytest.mark.parametrize("extra, found", [(b"\x10\x01", "field 2 (varint)"),
                                          (b"\x1a\x00", "field 3 (length-delimited)")])
def test_unknown_field_in_features_is_corrupt(extra, found):
  features = make_example({"a": [1]})[2:] + extra  # the Features bytes of a one-byte-length Example, then more
  with pytest.raises(ValueError) as info:
    prepare(_ld(0x0A, features))
  assert str(info.value) == \
      f"payload's Features has {found}, not a tf.train.Example (Features has only field 1, the map)"


@pytest.mark.parametrize("entry", [
    _ld(0x0A, b"a") + _ld(0x12, b"") + b"\x18\x01",  # a third field in the entry
    b"\x08\x01" + _ld(0x12, b""),  # the name as a varint
], ids=["extra-field", "name-varint"])
def test_bad_map_entry_is_corrupt(entry):
  # The parser keeps such an entry whole as an unknown field of Features: its feature would vanish.
  serialized = _ld(0x0A, _ld(0x0A, _ld(0x0A, b"b") + _ld(0x12, b"")) + _ld(0x0A, entry))
  assert to_dict(serialized) == {"b": (None, ())}
  with pytest.raises(ValueError) as info:
    prepare(serialized)
  assert str(info.value) == ("payload is not a tf.train.Example: a feature map entry holds a field other than 1 "
                             "(name) and 2 (Feature), or one of the wrong type")


def test_repeated_field_1_merges_as_protobuf_does():
  first, second = make_example({"a": [1], "b": [2]}), make_example({"b": [3], "c": [b"x"]})
  merged = example_bytes(prepare(first + second).payload, b"")
  assert to_dict(merged) == to_dict(first + second) == {"a": ("int64_list", (1,)), "b": ("int64_list", (3,)),
                                                        "c": ("bytes_list", (b"x",))}
  assert prepare(b"\x0a\x00\x0a\x00") == Prepared((), (), b"")


def test_unknown_field_inside_a_feature_is_kept():
  # Nothing is lost there: a Feature's bytes are copied as they are, and TensorFlow ignores the field.
  feature = tf.train.Feature(int64_list=tf.train.Int64List(value=[5])).SerializeToString() + b"\x28\x01"
  serialized = _ld(0x0A, _ld(0x0A, _ld(0x0A, b"a") + _ld(0x12, feature)))
  assert prepare(serialized).payload == _ld(0x0A, _ld(0x0A, b"a") + _ld(0x12, feature))
  assert to_dict(example_bytes(prepare(serialized).payload, b"")) == {"a": ("int64_list", (5,))}


# --- what the one parse learns: names and kinds for the schema, and names read back from a payload -----------


def _tfx_bsl_shapes(serialized: bytes) -> dict:
  """Feature name -> (kind, number of values), or (None, 0) for a missing (null) value, as tfx-bsl's Example
  decoder (TFX's own reader, the input of TFDV's statistics) reads the record's columns."""
  from tfx_bsl.coders import example_coder  # pylint: disable=import-outside-toplevel
  arrow = {"int64": "INT", "float": "FLOAT", "large_binary": "BYTES", "binary": "BYTES"}
  batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch([serialized])
  shapes = {}
  for field, column in zip(batch.schema, batch.columns):
    value = column.to_pylist()[0]
    shapes[field.name] = (None, 0) if value is None else (arrow[str(field.type.value_type)], len(value))
  return shapes


@settings(max_examples=200, deadline=None)
@given(tf_examples(names=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                 max_size=12)),
       st.sampled_from(["", "left_"]))
def test_prepare_shapes_are_what_tfx_bsl_decodes(example, prefix):
  # (tfx-bsl cuts a name at its first NUL character; the job keeps the whole name.)
  shapes = {}
  prepared = examples.prepare(serialize(example), prefix, None, shapes)
  assert sorted(name for name, _, _ in shapes) == sorted(prepared.keys) and set(shapes.values()) <= {1}
  assert {name: (examples.KINDS.get(kind), length) for name, kind, length in shapes} == _tfx_bsl_shapes(
      examples.example_bytes(prepared.payload, b""))


@settings(max_examples=200, deadline=None)
@given(tf_examples(), st.sampled_from(["", "r/", "é"]))
def test_from_payload_reads_back_names_and_entry_ends(example, prefix):
  prepared = examples.prepare(serialize(example), prefix)
  back = examples.from_payload(prepared.payload)
  assert (back.keys, tuple(back.ends), back.payload) == prepared
  # Each name is one string shared by every record read back (a cell holds references, not copies).
  assert all(a is b for a, b in zip(back.keys, examples.from_payload(bytes(bytearray(prepared.payload))).keys))

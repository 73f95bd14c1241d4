"""Per-record preparation and the byte-level merge of two Examples.

``tf.train.Example`` is ``{1: Features}`` and ``Features`` is a map, i.e. a repeated field of entries. A
protobuf message merges by concatenation, so the merged Example of a pair is the Example header followed by
the left record's map entries and then the right record's. Each record is therefore parsed, filtered and
renamed once (``prepare``) into a ``Prepared`` payload of encoded map entries, and a pair costs only a byte
concatenation (``example_bytes``). Entries are sorted by name, so bytes are deterministic.
"""

import array
import bisect
import functools
import itertools
from typing import AbstractSet, Dict, List, NamedTuple, Optional, Sequence, Tuple

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from beam_job import grouping
from beam_job.example_proto import Example, Feature


class Prepared(NamedTuple):
  """A record ready to be paired: its feature names (sorted), where each entry ends, and the entries."""
  keys: Tuple[str, ...]
  ends: Sequence[int]  # a tuple, or an int64 array when read back from a payload (``from_payload``)
  payload: bytes


_ONE_BYTE = [bytes((value,)) for value in range(0x80)]


def varint(value: int) -> bytes:
  if value < 0x80:
    return _ONE_BYTE[value]
  out = bytearray()
  while value > 0x7F:
    out.append((value & 0x7F) | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


@functools.lru_cache(maxsize=1 << 16)
def _entry_head(name: str) -> bytes:
  """What a map entry for ``name`` holds before its Feature: the name field, then the Feature's tag."""
  encoded = name.encode("utf-8")
  return b"\x0a" + varint(len(encoded)) + encoded + b"\x12"


def encode_entry(name: str, feature_bytes: bytes) -> bytes:
  """One ``Features.feature`` map entry: ``{1: name, 2: Feature}`` as field 1 of ``Features``."""
  head, length = _entry_head(name), varint(len(feature_bytes))
  return b"".join((b"\x0a", varint(len(head) + len(length) + len(feature_bytes)), head, length, feature_bytes))


_WIRE_TYPES = {0: "varint", 1: "64-bit", 2: "length-delimited", 3: "group", 5: "32-bit"}
_SHOWN_FIELDS = 3


def _fields(unknown) -> str:
  """``field 2 (length-delimited)``, ``fields 1 (varint), 3 (32-bit)``: what a message held that it should not."""
  found = sorted({(field.field_number, field.wire_type) for field in unknown})
  shown = ", ".join(f"{number} ({_WIRE_TYPES.get(wire, wire)})" for number, wire in found[:_SHOWN_FIELDS])
  more = f" and {len(found) - _SHOWN_FIELDS} more" if len(found) > _SHOWN_FIELDS else ""
  return f"field{'s' if len(found) > 1 else ''} {shown}{more}"


def _not_an_example(example, features) -> str:
  """Why a message that parsed is still not a ``tf.train.Example``, or "" when it is one.

  The parser keeps what it does not know as unknown fields, which ``prepare`` would drop: a SequenceExample's
  ``feature_lists`` (field 2), a field 1 of the wrong wire type, and in ``Features`` any other field or a map
  entry with a field of its own (which the parser keeps whole as an unknown field 1). Unknown fields inside a
  ``Feature`` are kept: ``prepare`` copies a Feature's bytes as they are.
  """
  unknown = UnknownFieldSet(example)
  if len(unknown):
    hint = ""
    if any(field.field_number == 2 and field.wire_type == 2 for field in unknown):
      hint = "; it looks like a tf.train.SequenceExample, whose feature_lists would be lost"
    return f"payload has {_fields(unknown)}, not a tf.train.Example (whose only field is 1, Features){hint}"
  unknown = UnknownFieldSet(features)
  if len(unknown):
    if all(field.field_number == 1 and field.wire_type == 2 for field in unknown):
      return ("payload is not a tf.train.Example: a feature map entry holds a field other than 1 (name) and "
              "2 (Feature), or one of the wrong type")
    return f"payload's Features has {_fields(unknown)}, not a tf.train.Example (Features has only field 1, the map)"
  return ""


def parse_example(serialized: bytes):
  """Parses a ``tf.train.Example``; raises ``ValueError`` saying why when the bytes are not one.

  Protobuf parsers accept any field; one that ``tf.train.Example`` does not define (or of the wrong wire type)
  would be dropped without a trace when the record is paired, so it makes the payload corrupt. Field 1 may
  occur several times: protobuf merges the messages, as TensorFlow's parser does.
  """
  example = Example()
  try:
    example.ParseFromString(serialized)
  except DecodeError as e:
    raise ValueError(f"payload is not a tf.train.Example ({e})") from None
  problem = _not_an_example(example, example.features)
  if problem:
    raise ValueError(problem)
  return example


KINDS = {"int64_list": "INT", "float_list": "FLOAT", "bytes_list": "BYTES"}
Shape = Tuple[str, Optional[str], int]  # (output name, value list kind or None, number of values)


# How a side sees a record: its prefix, the names it keeps (None: all), and where its shapes are counted.
View = Tuple[str, Optional[AbstractSet[str]], Optional[Dict[Shape, int]]]


def prepare(serialized: bytes, prefix: str = "", select: Optional[AbstractSet[str]] = None,
            shapes: Optional[Dict[Shape, int]] = None) -> Prepared:
  """Encodes one record's features as map entries, keeping ``select`` (if given) and renaming with ``prefix``.

  ``shapes``, when given, counts each kept feature under ``(name, kind, number of values)``: the oneof kind of
  its value list (a key of ``KINDS``) and its length, or ``None`` and 0 for a ``Feature`` with no list (TFX's
  CSV ExampleGen writes one for an empty cell; tf.io and TFDV count it as missing). Learned in this one parse
  for the output's schema (``output_schema``); one dict update per feature.
  """
  return _entries(parse_example(serialized).features.feature, ((prefix, select, shapes),))[0]


def prepare_keyed(serialized: bytes, group_by: str, prefix: str = "", select: Optional[AbstractSet[str]] = None,
                  shapes: Optional[Dict[Shape, int]] = None) -> Tuple[Prepared, bytes]:
  """``prepare`` and the record's encoded group key (``grouping.key_of``) from the same parse.

  Raises ``ValueError`` for a payload that is not an Example (a corrupt record) and ``grouping.MissingKey``
  for an Example without exactly one key value; the key is checked first, so a record left out under
  ``--missing_group skip`` is not counted in ``shapes`` (it is in no output record).
  """
  (prepared,), key = prepare_views(serialized, ((prefix, select, shapes),), group_by)
  return prepared, key


def prepare_views(serialized: bytes, views: Sequence[View],
                  group_by: Optional[str] = None) -> Tuple[List[Prepared], Optional[bytes]]:
  """The record as ``prepare`` makes it for each of ``views``, from one parse and one serialization of each
  Feature (a self-join whose two sides are renamed or selected apart), and its group key with ``group_by``
  (as ``prepare_keyed``: checked first, raising ``grouping.MissingKey``), else None."""
  feature_map = parse_example(serialized).features.feature
  key = None if group_by is None else grouping.key_of(feature_map, group_by)
  return _entries(feature_map, views), key


def _entries(feature_map, views: Sequence[View]) -> List[Prepared]:
  outputs = [(prefix, select, shapes, [], []) for prefix, select, shapes in views]
  for name, feature in sorted(feature_map.items()):
    body = None
    for prefix, select, shapes, keys, entries in outputs:
      if select is not None and name not in select:
        continue
      if body is None:  # once per feature, whatever the number of views
        body = feature.SerializeToString(deterministic=True)
        kind = feature.WhichOneof("kind")
        values = len(getattr(feature, kind).value) if kind else 0
      renamed = prefix + name
      if shapes is not None:
        shape = (renamed, kind, values)
        shapes[shape] = shapes.get(shape, 0) + 1
      entries.append(encode_entry(renamed, body))
      keys.append(renamed)
  return [Prepared(tuple(keys), tuple(itertools.accumulate(map(len, entries))), b"".join(entries))
          for _, _, _, keys, entries in outputs]


def _varint_at(data: bytes, position: int) -> Tuple[int, int]:
  value = shift = 0
  while True:
    byte = data[position]
    value |= (byte & 0x7F) << shift
    position += 1
    if byte < 0x80:
      return value, position
    shift += 7


# Names read back from payloads, each decoded once per process and shared by every record that holds it: a
# cell's records then hold references (8 bytes a name) instead of a string each (about 60 bytes). Bounded, for
# data whose names never repeat.
_NAMES: Dict[bytes, str] = {}
_MAX_NAMES = 1 << 16


def _name(raw: bytes) -> str:
  name = _NAMES.get(raw)
  if name is None:
    name = raw.decode("utf-8")
    if len(_NAMES) < _MAX_NAMES:
      _NAMES[raw] = name
  return name


def from_payload(payload: bytes) -> Prepared:
  """The ``Prepared`` record of a payload that ``prepare`` encoded: its names and entry ends read back from
  the entries' headers (each entry is ``0x0a len {0x0a len name, 0x12 len Feature}``), without parsing any
  Feature. Records travel between stages as payload bytes only; names are needed only to merge collisions, and
  a cell may hold many such records: the names are shared strings and the ends one array (about 17 bytes a
  name in all; ``planning.NAME_MEMORY_BYTES`` counts 24)."""
  keys, ends = [], array.array("q")
  position = 0
  while position < len(payload):
    length, start = _varint_at(payload, position + 1)
    name_length, name_start = _varint_at(payload, start + 1)
    keys.append(_name(payload[name_start:name_start + name_length]))
    position = start + length
    ends.append(position)
  return Prepared(tuple(keys), ends, payload)


def without(record: Prepared, names: AbstractSet[str]) -> bytes:
  """The record's payload minus the entries named in ``names`` (the losing side of a collision)."""
  if not names.intersection(record.keys):
    return record.payload
  pieces = []
  start = 0
  for key, end in zip(record.keys, record.ends):
    if key not in names:
      pieces.append(record.payload[start:end])
    start = end
  return b"".join(pieces)


def example_bytes(left_payload: bytes, right_payload: bytes) -> bytes:
  """The serialized Example whose features are both payloads' entries."""
  return b"\x0a" + varint(len(left_payload) + len(right_payload)) + left_payload + right_payload


def with_int64(record: Prepared, name: str, value: int) -> Prepared:
  """The record with one more int64 feature, entries still sorted by name (``--index_features``)."""
  feature = Feature()
  feature.int64_list.value.append(value)
  entry = encode_entry(name, feature.SerializeToString())
  position = bisect.bisect_left(record.keys, name)
  start = record.ends[position - 1] if position else 0
  ends = (tuple(record.ends[:position]) + (start + len(entry),)
          + tuple(end + len(entry) for end in record.ends[position:]))
  return Prepared(record.keys[:position] + (name,) + record.keys[position:], ends,
                  record.payload[:start] + entry + record.payload[start:])

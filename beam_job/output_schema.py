"""The TFMD schema of the output (``PREFIX-schema.pbtxt``): every output feature with its type.

Types are the kinds of value list each side's records hold, learned in the one parse of each record (names
already filtered and renamed; the same types tfx-bsl's Example decoder gives), so TFX and TF Transform users
can read the output with the schema as it is.
"""

from typing import Dict, Iterable, Optional, Set, Tuple

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

_TYPES = {"INT": schema_pb2.INT, "FLOAT": schema_pb2.FLOAT, "BYTES": schema_pb2.BYTES}


def merged_types(side_types: Iterable[Tuple[int, Dict[str, Set[str]]]],
                 index_names: Tuple[Optional[str], Optional[str]]) -> Dict[str, Set[str]]:
  """Output feature name -> types. A name on both sides (``--collision left|right``) takes both sides' kinds:
  the loser's value stays in every pair whose winning record lacks the feature."""
  by_side = [{}, {}]
  for side, types in side_types:
    for name, kinds in types.items():
      by_side[side].setdefault(name, set()).update(kinds)
  for side, name in enumerate(index_names):
    if name:
      by_side[side][name] = {"INT"}
  merged = {name: set(kinds) for name, kinds in by_side[0].items()}
  for name, kinds in by_side[1].items():
    merged.setdefault(name, set()).update(kinds)
  return merged


def to_pbtxt(types: Dict[str, Set[str]]) -> str:
  """The schema in text format; a feature seen with several types (or none) gets no type."""
  schema = schema_pb2.Schema()
  for name in sorted(types):
    feature = schema.feature.add(name=name)
    if len(types[name]) == 1:
      feature.type = _TYPES[next(iter(types[name]))]
  return text_format.MessageToString(schema)

"""The TFMD schema of the output (``PREFIX-schema.pbtxt``): what TFDV's ``infer_schema`` (with
``infer_feature_shape``) would make of the output's own statistics, computed from what the one parse of each
input record learned (``examples.prepare``'s shapes), without reading the output.

- Every name an output record can hold is a feature, valued or not. Its type is the kind of its value lists;
  a name that never holds one (TFX's CSV ExampleGen writes an empty ``Feature`` for an empty cell) is BYTES,
  as TFDV types a column without values. A name holding several kinds cannot be parsed with one dtype (TFDV
  refuses such data): it gets no type and ``lifecycle_stage: DEPRECATED``, which TFDV and tfx-bsl skip.
- Presence counts a value list, as ``tf.io`` and TFDV do (an entry without one is missing):
  ``min_fraction: 1.0 min_count: 1`` for a name in every output record, ``min_count: 1`` for one in some.
- Value counts as TFDV infers them: a fixed length M in every record is ``shape { dim { size: M } }`` (a
  ``FixedLenFeature`` in TF Transform), a fixed length elsewhere ``value_count { min: M max: M }``, varying
  lengths never 0 ``value_count { min: 1 }``, otherwise nothing (a ``VarLenFeature``). Unlike TFDV, no
  ``shape`` of size 0 (TFDV's for a feature in every record with some empty lists fails on the other lists).

A pair holds the left record's entries and the right record's; under ``--collision left|right`` the winner's
entry, or the loser's where the winning record has no entry of that name. Each statement holds for the
records written: presence is exact for a full product, and only what is certain otherwise (``--sample_rate``,
``--self_join combinations``, no pairs); value counts and types may describe lists that a sample left out.
"""

from typing import Dict, FrozenSet, Mapping, NamedTuple, Optional, Tuple

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from beam_job.examples import KINDS, Shape

_TYPES = {"INT": schema_pb2.INT, "FLOAT": schema_pb2.FLOAT, "BYTES": schema_pb2.BYTES}


class Values(NamedTuple):
  """What one side's records hold under one name (or the output's, for ``output_features``)."""
  entries: int  # records with an entry of that name (with a value list or not)
  valued: int  # records whose entry holds a value list
  kinds: FrozenSet[str]  # INT, FLOAT, BYTES
  fewest: int  # values in the shortest list (0 when no list)
  most: int  # values in the longest list


class OutputFeature(NamedTuple):
  kinds: FrozenSet[str]  # the kinds an output record can hold
  everywhere: bool  # certainly valued in every output record (and there is one)
  somewhere: bool  # certainly valued in at least one output record
  fewest: int  # bounds of the lengths of the lists an output record can hold (0, 0 when none can)
  most: int


_NONE = Values(0, 0, frozenset(), 0, 0)


def side_features(shapes: Mapping[Shape, int]) -> Dict[str, Values]:
  """Folds ``examples.prepare``'s tally, ``(name, kind, number of values) -> records``, into ``Values``."""
  found = {}
  for (name, kind, length), records in shapes.items():
    entries, valued, kinds, fewest, most = found.get(name, _NONE)
    if kind is None:
      found[name] = Values(entries + records, valued, kinds, fewest, most)
    else:
      found[name] = Values(entries + records, valued + records, kinds | {KINDS[kind]},
                           min(fewest, length) if valued else length, max(most, length))
  return found


def output_features(sides: Tuple[Mapping[str, Values], Mapping[str, Values]], counts: Tuple[int, int], *,
                    collision: str, pairs: int, self_join: Optional[str] = None, sampled: bool = False,
                    index_names: Tuple[Optional[str], Optional[str]] = (None, None)) -> Dict[str, OutputFeature]:
  """Every output name with what the written records hold under it.

  ``sides`` are the two sides' ``side_features`` (renamed and selected already), ``counts`` their good records,
  ``pairs`` the pairs written; ``self_join`` and ``sampled`` say which pairs were formed: every left record
  with every right one, unless ``combinations`` leaves out the last left and first right record, or a sample
  leaves out any.
  """
  sides = [dict(side) for side in sides]
  for side, name in enumerate(index_names):  # --index_features: one int64 ordinal in every record of its side
    if name:
      sides[side][name] = Values(counts[side], counts[side], frozenset({"INT"}), 1, 1)
  left_out = 1 if self_join == "combinations" else 0  # records per side that are in no pair
  every_pair = self_join in (None, "product")  # each left record meets each right one
  found = {}
  for name in sorted(set(sides[0]) | set(sides[1])):
    won = 1 if (name in sides[1] and (collision == "right" or name not in sides[0])) else 0
    winner, loser = sides[won][name], sides[1 - won].get(name, _NONE)
    # The loser's list shows in a pair whose winning record has no entry of that name.
    loser_shows = winner.entries < counts[won] and loser.valued > 0
    parts = [values for values, shows in ((winner, winner.valued > 0), (loser, loser_shows)) if shows]
    everywhere = pairs > 0 and winner.valued == winner.entries and (
        winner.entries == counts[won] or loser.valued == counts[1 - won])
    somewhere = pairs > 0 and (everywhere or not sampled and (
        winner.valued > left_out or loser_shows and every_pair))
    found[name] = OutputFeature(
        frozenset().union(*(values.kinds for values in parts)), everywhere, somewhere,
        min((values.fewest for values in parts), default=0), max((values.most for values in parts), default=0))
  return found


def schema(features: Mapping[str, OutputFeature]) -> schema_pb2.Schema:
  result = schema_pb2.Schema()
  for name in sorted(features):
    found = features[name]
    feature = result.feature.add(name=name)
    if len(found.kinds) > 1:
      feature.lifecycle_stage = schema_pb2.DEPRECATED
      feature.annotation.comment.append(f"holds {' and '.join(sorted(found.kinds))} values: no single type "
                                        "parses it")
    else:
      feature.type = _TYPES[next(iter(found.kinds), "BYTES")]
    if found.everywhere:
      feature.presence.min_fraction = 1.0
    if found.somewhere:
      feature.presence.min_count = 1
    if found.fewest == found.most > 0:
      if found.everywhere:
        feature.shape.dim.add(size=found.most)
      else:
        feature.value_count.min = feature.value_count.max = found.most
    elif found.fewest > 0:
      feature.value_count.min = 1
  return result


def to_pbtxt(features: Mapping[str, OutputFeature]) -> str:
  return text_format.MessageToString(schema(features))


"""Small helpers shared by the unit and end-to-end tests, built on TensorFlow's own classes and I/O.

Everything here uses TensorFlow as the independent reference: ``tf.train.Example`` to build and parse
records, ``tf.io.TFRecordWriter`` to write files and ``tf.data.TFRecordDataset`` to read them.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union  # noqa: E402

import tensorflow as tf  # noqa: E402

Values = Union[Sequence[int], Sequence[float], Sequence[bytes]]

_COMPRESSION = {None: "", "": "", "none": "", "uncompressed": "", "gzip": "GZIP", "zlib": "ZLIB"}


def feature(values: Values) -> tf.train.Feature:
  """A tf.train.Feature from a list of ints, floats or bytes (str is encoded as UTF-8).

  An empty list gives an empty Feature (no kind set). Use ``tf.train.Feature(int64_list=...)`` directly to get
  an empty list of a given kind.
  """
  values = list(values)
  if not values:
    return tf.train.Feature()
  if all(isinstance(v, (bytes, bytearray, str)) for v in values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]))
  if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=values))
  if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))
  raise TypeError(f"cannot build a feature from {values!r}")


def example_proto(features: Mapping[str, Union[Values, tf.train.Feature]]) -> tf.train.Example:
  """A tf.train.Example from ``{name: list of int | list of float | list of bytes | tf.train.Feature}``."""
  example = tf.train.Example()
  for name, values in features.items():
    if isinstance(values, tf.train.Feature):
      example.features.feature[name].CopyFrom(values)
    else:
      example.features.feature[name].CopyFrom(feature(values))
  return example


def make_example(features: Mapping[str, Union[Values, tf.train.Feature]]) -> bytes:
  """The serialized tf.train.Example of ``{name: list of int | list of float | list of bytes}``."""
  return example_proto(features).SerializeToString(deterministic=True)


def parse(serialized: bytes) -> tf.train.Example:
  """Parses bytes with TensorFlow's own tf.train.Example class."""
  return tf.train.Example.FromString(serialized)


def to_dict(serialized_or_example) -> Dict[str, tuple]:
  """``{name: (kind, tuple of values)}`` of an Example; floats as float32 bit patterns so nan compares equal."""
  import struct
  example = serialized_or_example
  if isinstance(example, (bytes, bytearray)):
    example = parse(bytes(example))
  out = {}
  for name, feat in example.features.feature.items():
    kind = feat.WhichOneof("kind")
    if kind is None:
      out[name] = (None, ())
    elif kind == "float_list":
      out[name] = (kind, tuple(struct.unpack("<I", struct.pack("<f", v))[0] for v in feat.float_list.value))
    else:
      out[name] = (kind, tuple(getattr(feat, kind).value))
  return out


def _options(compression: Optional[str]):
  return tf.io.TFRecordOptions(compression_type=_COMPRESSION[compression.lower() if compression else None])


def write_tfrecord(path, payloads: Iterable[bytes], compression: Optional[str] = None) -> str:
  """Writes ``payloads`` with tf.io.TFRecordWriter; ``compression`` is None, "gzip" or "zlib" (any case)."""
  path = os.fspath(path)
  with tf.io.TFRecordWriter(path, _options(compression)) as writer:
    for payload in payloads:
      writer.write(payload)
  return path


def read_tfrecords(paths, compression: Optional[str] = None) -> List[bytes]:
  """Every record of ``paths`` (one path or a list), in order, read by tf.data.TFRecordDataset."""
  if isinstance(paths, (str, bytes, os.PathLike)):
    paths = [paths]
  paths = [os.fspath(p) for p in paths]
  if not paths:
    return []
  dataset = tf.data.TFRecordDataset(paths, compression_type=_options(compression).compression_type)
  return [record.numpy() for record in dataset]


def renamed(example: tf.train.Example, prefix: str) -> tf.train.Example:
  """A copy of ``example`` with ``prefix`` before every feature name."""
  out = tf.train.Example()
  for name, feat in example.features.feature.items():
    out.features.feature[prefix + name].CopyFrom(feat)
  return out


def proto_merge(*examples: tf.train.Example) -> tf.train.Example:
  """The protobuf-level merge (later examples win on equal names) of ``examples``, in order."""
  merged = tf.train.Example()
  for example in examples:
    merged.MergeFrom(example)
  return merged


def canonical(example) -> bytes:
  """Deterministic bytes of an Example's feature map (an absent and an empty Features compare equal)."""
  if isinstance(example, (bytes, bytearray)):
    example = parse(bytes(example))
  return example.features.SerializeToString(deterministic=True)

"""Small helpers shared by the unit and end-to-end tests, built on TensorFlow's own classes and I/O.

Everything here uses TensorFlow as the independent reference: ``tf.train.Example`` to build and parse
records, ``tf.io.TFRecordWriter`` to write files and ``tf.data.TFRecordDataset`` to read them.
"""

import contextlib
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


def temp_run(prefix: str, token: str, shards: Sequence[bytes]) -> list:
  """A run's folder as its cells leave it: the lease taken, one reported temporary object per shard; returns
  the (temporary, final, size) moves a manifest names."""
  from beam_job import lease, outputs, sinks  # pylint: disable=import-outside-toplevel
  lease.acquire(prefix, token)
  folder = outputs.temp_dir(prefix, token)
  moves = []
  for shard, data in enumerate(shards):
    path = sinks.attempt_path(folder, shard, len(shards))
    with sinks.open_shard(path, "uncompressed") as out:
      out.write(data)
    moves.append((path, outputs.shard_name(prefix, shard, len(shards), "uncompressed"), out.count))
  return moves


def manifest_builder(prefix: str, token: str, moves: list, overwrite: bool = False):
  """What Finalize passes to ``publish.publish``: builds the manifest of ``moves`` with a schema and a summary."""
  import json  # pylint: disable=import-outside-toplevel
  from beam_job import outputs, publish  # pylint: disable=import-outside-toplevel
  summary = json.dumps({"run": token, "shards": [m[1] for m in moves], "bytes": sum(m[2] for m in moves)})
  return lambda: publish.make_manifest(prefix, token, moves, {outputs.schema_path(prefix): "schema"}, summary,
                                       overwrite)


def shards_of(prefix) -> list:
  """The shards under ``prefix`` (any run's), in shard order, from the job's own listing."""
  from beam_job import outputs  # pylint: disable=import-outside-toplevel
  return [o for o in outputs.list_owned(str(prefix)) if o.kind == "shard"]


def assert_honest(prefix):
  """Whenever a summary stands, the shards present are exactly the ones it lists, with its byte total.
  Returns the summary, or None when there is none (an incomplete output, which a reader knows not to use)."""
  import json  # pylint: disable=import-outside-toplevel
  from beam_job import outputs, publish  # pylint: disable=import-outside-toplevel
  text = publish.read_text(outputs.summary_path(str(prefix)))
  if text is None:
    return None
  summary = json.loads(text)
  present = shards_of(prefix)
  assert sorted(o.path for o in present) == sorted(summary["shards"])
  assert sum(o.size for o in present) == summary["bytes"]
  return summary


def user_error(capsys, argv, *parts) -> str:
  """Runs the CLI, which must fail with exit 2 and exactly one ``error:`` line holding every one of ``parts``."""
  from beam_job import cli  # pylint: disable=import-outside-toplevel
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  lines = [line for line in err.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and "Traceback" not in err, err
  for part in parts:
    assert part in lines[0], lines[0]
  return lines[0]


def split_frames(data: bytes) -> list:
  """The raw TFRecord frames (length, its CRC, payload, its CRC) of a shard's bytes, unchecked."""
  frames, at = [], 0
  while at < len(data):
    length = int.from_bytes(data[at:at + 8], "little")
    frames.append(data[at:at + 16 + length])
    at += 16 + length
  return frames


@contextlib.contextmanager
def failing_cell(monkeypatch, cell):
  """Within the block, the job's cell ``(row, col)`` writes a few bytes of its temporary object and raises, as a
  worker that fails half-way through a cell would (a wrapped ``_WriteCellFn``, in-process runners only)."""
  from beam_job import outputs, sinks  # pylint: disable=import-outside-toplevel
  from beam_job.stages import write  # pylint: disable=import-outside-toplevel
  process = write._WriteCellFn.process  # pylint: disable=protected-access

  def failing(self, element, plan, broadcast):
    shard = element[0]
    if tuple(plan.cells[shard][:2]) != cell:
      return process(self, element, plan, broadcast)
    options = self._options  # pylint: disable=protected-access
    path = sinks.attempt_path(outputs.temp_dir(options.output, plan.run), shard, plan.shard_count)
    with sinks.open_shard(path, options.output_compression) as out:
      out.write(b"partial")
      raise RuntimeError(f"injected failure in cell {cell}")

  with monkeypatch.context() as patch:
    patch.setattr(write._WriteCellFn, "process", failing)  # pylint: disable=protected-access
    yield

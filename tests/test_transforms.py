"""beam_job.transforms through Beam's TestPipeline: CrossProduct on PCollections of your own, and ReadExamples.

Pipelines run on ``cli.local_runner`` (Beam's FnApiRunner, as the CLI uses it), never on the default
DirectRunner, which in Beam 2.77 first tries to download Prism.
"""

import collections
import itertools
import json
import os
import struct

import apache_beam as beam
import pytest
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from apache_beam.typehints.decorators import TypeCheckError

from beam_job import blocks, cli, examples, stages
from beam_job.errors import JobError, find_job_error
from beam_job.stages import write
from beam_job.transforms import Corrupt, CrossProduct, ReadExamples
from tests.helpers import make_example, parse, read_tfrecords, write_tfrecord

TINY = 0.0001  # target_shard_mb: a pair or two per cell



def _published(folder):
  """What a reader could take for output: a failed pipeline leaves at most its temporary folder and its lease
  (which a CrossProduct used from Python cannot give up when the pipeline fails; it expires)."""
  return sorted(n for n in os.listdir(folder) if "-temp-" not in n and not n.endswith("-lease.json"))

def _pipeline() -> test_pipeline.TestPipeline:
  return test_pipeline.TestPipeline(runner=cli.local_runner(PipelineOptions([])), options=PipelineOptions([]))


def _renamed(payload: bytes, prefix: str) -> tf.train.Example:
  out = tf.train.Example()
  for name, feat in parse(payload).features.feature.items():
    out.features.feature[prefix + name].CopyFrom(feat)
  return out


def _merge(left: bytes, right: bytes, left_prefix="", right_prefix="") -> bytes:
  lhs, rhs = _renamed(left, left_prefix), _renamed(right, right_prefix)
  assert not set(lhs.features.feature) & set(rhs.features.feature)
  merged = tf.train.Example()
  merged.MergeFrom(lhs)
  merged.MergeFrom(rhs)
  return merged.features.SerializeToString(deterministic=True)


def _in_order(elements) -> list:
  """Payloads ordered as the job orders records: by source, then index; corrupt ones left out."""
  return [payload for _, _, payload in sorted(elements, key=lambda e: (e[0], e[1]))
          if isinstance(payload, bytes) and payload != b"\xff\xff\xff\xff"]


def _nested_loop(left, right=None, self_join="product", **prefixes) -> collections.Counter:
  lrec = _in_order(left)
  rrec = lrec if right is None else _in_order(right)
  out = collections.Counter()
  for i, lpay in enumerate(lrec):
    for j, rpay in enumerate(rrec):
      if (self_join == "combinations" and j <= i) or (self_join == "combinations_with_replacement" and j < i):
        continue
      out[_merge(lpay, rpay, **prefixes)] += 1
  return out


def _read(summary, compression=None) -> collections.Counter:
  return collections.Counter(parse(r).features.SerializeToString(deterministic=True)
                             for r in read_tfrecords(summary["shards"], compression))


def _summary_matcher(expected: dict):
  """An assert_that matcher: exactly one summary, whose listed fields equal ``expected``."""

  def check(actual):
    if len(actual) != 1:
      raise BeamAssertException(f"expected one summary, got {len(actual)}")
    got = {key: actual[0].get(key) for key in expected}
    if got != expected:
      raise BeamAssertException(f"summary {got} != {expected}")

  return check


def _summary_file(output: str, expected: dict) -> dict:
  """The summary the job wrote (the matcher runs on a pickled copy, so the test reads the file)."""
  with open(output + "-summary.json") as f:
    summary = json.load(f)
  assert {key: summary[key] for key in expected} == expected
  return summary


def _counters(result) -> dict:
  metrics = result.metrics().query(MetricsFilter().with_namespace(stages.NAMESPACE))
  return {c.key.metric.name: c.committed for c in metrics["counters"]}


LEFT = [("b", 0, make_example({"l": [10], "bin": [b"\x00\x01"]})), ("b", 1, make_example({})),
        ("a", 2, make_example({"l": [2 ** 63 - 1]})), ("a", 0, make_example({"l": [-2 ** 63], "f": [0.25]})),
        ("a", 1, make_example({"bin": [bytes(range(200))]}))]
RIGHT = [("r", 1, make_example({"r": [1]})), ("r", 0, make_example({"r": [0], "s": [b"\xff"]})),
         ("r", 2, make_example({}))]


def test_cross_product_of_two_collections_grid(tmp_path):
  output = str(tmp_path / "pairs")
  p = _pipeline()
  summary = ((p | "Left" >> beam.Create(LEFT), p | "Right" >> beam.Create(RIGHT))
             | CrossProduct(output, strategy="grid", target_shard_mb=TINY))
  expected = {"pairs": 15, "strategy": "grid", "left_records": 5, "right_records": 3, "corrupt_records": 0,
              "output": output}
  assert_that(summary, _summary_matcher(expected))
  result = p.run()
  result.wait_until_finish()
  holder = _summary_file(output, expected)
  assert holder["grid"]["cells"] > 2 and len(holder["shards"]) == holder["grid"]["cells"]
  assert holder["shards"] == [f"{output}-{i:05d}-of-{len(holder['shards']):05d}.tfrecord"
                              for i in range(len(holder["shards"]))]
  assert os.path.exists(output + "-summary.json")
  assert _read(holder) == _nested_loop(LEFT, RIGHT)
  counters = _counters(result)
  assert counters == {"left_records": 5, "right_records": 3, "pairs_written": 15,
                      "bytes_written": holder["record_bytes"]}
  assert holder["record_bytes"] == holder["bytes"]  # uncompressed: the shards are exactly the frames


def test_cross_product_auto_broadcasts_and_writes_gzip(tmp_path):
  output = str(tmp_path / "pairs")
  with _pipeline() as p:
    summary = ((p | "Left" >> beam.Create(LEFT), p | "Right" >> beam.Create(RIGHT))
               | CrossProduct(output, output_compression="gzip"))
    expected = {"pairs": 15, "strategy": "broadcast", "shards": [f"{output}-00000-of-00001.tfrecord.gz"]}
    assert_that(summary, _summary_matcher(expected))
  holder = _summary_file(output, expected)
  dataset = tf.data.TFRecordDataset(holder["shards"], compression_type="GZIP")
  assert collections.Counter(parse(r.numpy()).features.SerializeToString(deterministic=True)
                             for r in dataset) == _nested_loop(LEFT, RIGHT)


@pytest.mark.parametrize("self_join,pairs", [("combinations", 66), ("combinations_with_replacement", 78),
                                             ("product", 144)])
def test_self_join_orders_by_source_then_numeric_index(tmp_path, self_join, pairs):
  # Twelve records of one source: index 10 comes after index 9 (numeric, not text order), and the elements
  # arrive shuffled. "a" sorts before "b", so a's records come first whatever the element order.
  elements = [("b", i, make_example({"n": [i]})) for i in range(10)] + [("a", i, make_example({"m": [i]}))
                                                                        for i in range(2)]
  elements = elements[::3] + elements[1::3] + elements[2::3]
  output = str(tmp_path / "pairs")
  with _pipeline() as p:
    summary = p | beam.Create(elements) | CrossProduct(output, collision="prefix", self_join=self_join,
                                                       strategy="grid", target_shard_mb=TINY)
    expected = {"pairs": pairs, "strategy": "grid", "left_records": 12, "right_records": 12}
    assert_that(summary, _summary_matcher(expected))
  holder = _summary_file(output, expected)
  assert _read(holder) == _nested_loop(elements, None, self_join, left_prefix="left_", right_prefix="right_")


def test_skip_counts_corrupt_elements_and_keeps_the_rest(tmp_path):
  left = [("a", 0, make_example({"l": [0]})), ("a", 1, Corrupt(40, "bad data CRC")),
          ("a", 2, make_example({"l": [2]})), ("a", 3, b"\xff\xff\xff\xff"), ("a", 4, make_example({"l": [4]}))]
  output = str(tmp_path / "pairs")
  p = _pipeline()
  summary = ((p | "Left" >> beam.Create(left), p | "Right" >> beam.Create(RIGHT))
             | CrossProduct(output, on_corrupt="skip", strategy="grid", target_shard_mb=TINY))
  expected = {"pairs": 9, "left_records": 3, "right_records": 3, "corrupt_records": 2}
  assert_that(summary, _summary_matcher(expected))
  result = p.run()
  result.wait_until_finish()
  holder = _summary_file(output, expected)
  corrupt = holder["corrupt"]
  assert [(c["file"], c["record"], c["offset"], c["rest_of_file_lost"]) for c in corrupt] == [
      ("a", 1, 40, False), ("a", 3, -1, False)]
  assert corrupt[0]["problem"] == "bad data CRC"
  assert corrupt[1]["problem"].startswith("payload is not a tf.train.Example")
  assert _read(holder) == _nested_loop(left, RIGHT)
  assert _counters(result)["corrupt_records"] == 2


def test_fail_on_a_payload_that_is_not_an_example(tmp_path):
  left = [("a", 0, make_example({"l": [0]})), ("a", 1, b"\xff\xff\xff\xff")]
  output = str(tmp_path / "pairs")
  p = _pipeline()
  _ = (p | "Left" >> beam.Create(left), p | "Right" >> beam.Create(RIGHT)) | CrossProduct(output)
  with pytest.raises(Exception) as info:
    p.run().wait_until_finish()
  message = find_job_error(info.value)
  assert message.startswith("corrupt input a: record 1: payload is not a tf.train.Example (")
  assert message.endswith("(--on_corrupt skip leaves it out)")
  assert _published(tmp_path) == []


def test_collision_error_inside_the_pipeline(tmp_path):
  output = str(tmp_path / "pairs")
  p = _pipeline()
  _ = p | beam.Create(RIGHT) | CrossProduct(output)  # a self-join without prefixes: every name collides
  with pytest.raises(Exception) as info:
    p.run().wait_until_finish()
  assert find_job_error(info.value) == ("2 feature name(s) exist on both sides: 'r', 's'; choose how to merge them "
                                        "with --collision prefix|left|right")
  assert _published(tmp_path) == []


@pytest.mark.parametrize("kwargs,message", [
    (dict(collision="both"), "--collision must be one of error, prefix, left, right, not 'both'"),
    (dict(self_join="pairs"), "--self_join must be one of product, combinations, combinations_with_replacement"),
    (dict(on_corrupt="ignore"), "--on_corrupt must be one of fail, skip, not 'ignore'"),
    (dict(strategy="fast"), "--strategy must be one of auto, broadcast, grid, not 'fast'"),
    (dict(output_compression="zlib"), "--output_compression must be one of uncompressed, gzip, not 'zlib'"),
    (dict(max_pairs=-1), "--max_pairs must be at least 0, not -1"),
    (dict(target_shard_mb=0), "--target_shard_mb must be positive, not 0"),
])
def test_cross_product_rejects_bad_options(kwargs, message):
  with pytest.raises(JobError) as info:
    CrossProduct("/tmp/never-written", **kwargs)
  assert str(info.value).startswith(message)


def test_cross_product_rejects_empty_output_and_self_join_with_two_inputs():
  with pytest.raises(JobError, match="--output must name a prefix"):
    CrossProduct("")
  p = _pipeline()
  with pytest.raises(JobError, match="--self_join applies only when --right is omitted"):
    _ = (p | "L" >> beam.Create(LEFT), p | "R" >> beam.Create(RIGHT)) | CrossProduct("/tmp/x", self_join="combinations")


# --- ReadExamples ------------------------------------------------------------------------------------------


def _files(tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  b = [make_example({"b": [i]}) for i in range(2)]
  a = [make_example({"a": [i], "bin": [bytes([i, 255 - i])]}) for i in range(3)] + [make_example({})]
  return {write_tfrecord(folder / "b.tfrecord", b): b, write_tfrecord(folder / "a.tfrecord.gz", a, "gzip"): a}


def test_read_examples_yields_path_index_payload(tmp_path):
  files = _files(tmp_path)
  folder = tmp_path / "in"
  expected = [(path, i, payload) for path, payloads in files.items() for i, payload in enumerate(payloads)]
  with _pipeline() as p:
    # Overlapping patterns: every file is still read once.
    read = p | ReadExamples([f"{folder}/*.tfrecord", f"{folder}/a*", f"{folder}/b.tfrecord", f"{folder}/*"])
    assert_that(read, equal_to(expected))


def test_read_examples_skip_marks_a_bad_frame(tmp_path):
  files = _files(tmp_path)
  path = next(p for p in files if p.endswith("b.tfrecord"))
  with open(path, "rb") as f:
    data = bytearray(f.read())
  second = 16 + struct.unpack_from("<Q", data, 0)[0]
  data[second + 12 + 1] ^= 0x40
  with open(path, "wb") as f:
    f.write(bytes(data))
  with _pipeline() as p:
    read = p | ReadExamples([path], on_corrupt="skip")
    assert_that(read, equal_to([(path, 0, files[path][0]), (path, 1, Corrupt(second, "bad data CRC", False))]))
  p = _pipeline()
  _ = p | ReadExamples([path])
  with pytest.raises(Exception) as info:
    p.run().wait_until_finish()
  assert find_job_error(info.value) == (f"corrupt input {path}: record 1 (byte {second}): bad data CRC "
                                        "(--on_corrupt skip leaves it out)")


def test_read_examples_compression_flag(tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  payloads = [make_example({"z": [i]}) for i in range(3)]
  path = write_tfrecord(folder / "z.data", payloads, "zlib")
  with _pipeline() as p:
    assert_that(p | ReadExamples([path], compression="zlib"), equal_to([(path, i, x) for i, x in enumerate(payloads)]))


def test_read_examples_rejects_bad_options():
  with pytest.raises(JobError, match="--compression must be one of auto, uncompressed, gzip, zlib, not 'bz2'"):
    ReadExamples(["x"], compression="bz2")
  with pytest.raises(JobError, match="--on_corrupt must be one of fail, skip, not 'drop'"):
    ReadExamples(["x"], on_corrupt="drop")


def test_read_examples_into_cross_product(tmp_path):
  files = _files(tmp_path)
  output = str(tmp_path / "out" / "pairs")
  with _pipeline() as p:
    records = p | ReadExamples([str(tmp_path / "in" / "*")])
    summary = records | CrossProduct(output, collision="prefix", self_join="combinations", strategy="broadcast",
                                     target_shard_mb=TINY)
    expected = {"pairs": 15, "left_records": 6, "strategy": "broadcast"}
    assert_that(summary, _summary_matcher(expected))
  holder = _summary_file(output, expected)
  elements = [(path, i, x) for path, payloads in files.items() for i, x in enumerate(payloads)]
  assert _read(holder) == _nested_loop(elements, None, "combinations", left_prefix="left_", right_prefix="right_")


@pytest.mark.parametrize("indexes,problem", [
    ([1, 2, 3], "indexes 0..0 are missing"), ([0, 5, 10], "indexes 1..4 are missing"),
    ([0, 0, 3], "index 0 appears more than once"),
    ([0, 0, 3, 3], "index 0 appears more than once"),  # count, maximum and sum of 0, 1, 2, 3
    ([3, 0, 2, 2], "index 2 appears more than once")], ids=["one_based", "gaps", "repeats", "same_sums", "unordered"])
def test_indexes_must_number_each_source_from_zero(tmp_path, indexes, problem):
  """Ordinals are offset + index, so each source's indexes must be 0, 1, 2, ...: anything else is refused
  before any output is written (it would otherwise drop or repeat pairs silently)."""
  left = [("a", i, make_example({"l": [i]})) for i in indexes]
  right = [("r", j, make_example({"r": [j]})) for j in range(2)]
  output = str(tmp_path / "pairs")
  with pytest.raises(Exception, match=r"records of source 'a' are not numbered 0, 1, 2, \.\.\. without gaps or "
                                      r"repeats \(" + problem.replace(".", r"\.") + r"\)"):
    with _pipeline() as p:
      _ = (p | "Left" >> beam.Create(left), p | "Right" >> beam.Create(right)) | CrossProduct(output)
  assert _published(tmp_path) == []


def test_the_run_token_is_chosen_when_the_pipeline_runs_not_when_it_is_built(tmp_path):
  """One graph run twice (as a classic template would be) gets two runs: two tokens, two temporary folders,
  and the second run replaces the first's output."""
  files = _files(tmp_path)
  output = str(tmp_path / "out" / "pairs")
  pipeline = beam.Pipeline(runner=cli.local_runner(PipelineOptions([])), options=PipelineOptions([]))
  records = pipeline | ReadExamples([str(tmp_path / "in" / "*")])
  _ = records | CrossProduct(output, collision="prefix", self_join="combinations", overwrite=True)
  runs = []
  for _ in range(2):
    pipeline.run().wait_until_finish()
    with open(output + "-summary.json", encoding="utf-8") as f:
      runs.append(json.load(f)["run"])
  assert runs[0] != runs[1] and all(len(run) == 12 for run in runs)
  assert sorted(os.listdir(tmp_path / "out")) == ["pairs-00000-of-00001.tfrecord", "pairs-schema.pbtxt",
                                                  "pairs-summary.json"]
  assert sum(len(payloads) for payloads in files.values()) == 6


# --- scale: one broadcast copy per process, compact shuffles, one preparation per self-join -------------------


def test_broadcast_side_is_built_once_per_process_and_cut_into_column_ranges(tmp_path, monkeypatch):
  built = []
  original = write._BroadcastSide.__init__

  def counting(self, *args):
    built.append(1)
    original(self, *args)

  monkeypatch.setattr(write._BroadcastSide, "__init__", counting)
  output = str(tmp_path / "pairs")
  with _pipeline() as p:
    _ = ((p | "Left" >> beam.Create(LEFT), p | "Right" >> beam.Create(RIGHT))
         | CrossProduct(output, strategy="broadcast", target_shard_mb=TINY))
  summary = _summary_file(output, {"pairs": 15, "strategy": "broadcast"})
  assert summary["grid"]["cols"] > 1 and summary["grid"]["cells"] > 5  # a row of 3 pairs is more than a shard
  assert _read(summary) == _nested_loop(LEFT, RIGHT)
  assert built == [1]


def test_the_broadcast_side_comes_back_from_its_blocks_as_the_payloads_in_ordinal_order():
  """Each worker process unpacks the broadcast blocks once into its copy: a run of payloads in ordinal order, or
  records with their names when the merge needs them; a record repeated or missing fails the job."""
  payloads = [examples.prepare(make_example({"right_name": [b"item-%06d" % k], "right_id": [k]})).payload
              for k in range(2000)]
  packer, packed = blocks.Packer(block_bytes=20_000), []
  for k in list(range(1000, 2000)) + list(range(1000)):  # out of order, in several blocks
    packed.append(packer.add(k, payloads[k]))
  packed = [block for block in packed + [packer.flush()] if block]
  assert len(packed) > 2
  run = write._BroadcastSide(packed, 2000, with_keys=False).columns(range(500, 1500))
  assert (run.first, run.payloads) == (500, payloads[500:1500])
  named = write._BroadcastSide(packed, 2000, with_keys=True).columns(range(3, 5))
  assert named == [(3, examples.from_payload(payloads[3])), (4, examples.from_payload(payloads[4]))]
  again = blocks.Packer()
  again.add(7, payloads[7])
  with pytest.raises(RuntimeError, match="received right record 7 twice"):
    write._BroadcastSide(packed + [again.flush()], 2000, with_keys=False)
  with pytest.raises(RuntimeError, match=r"received 2000 right record\(s\), the plan has 2001"):
    write._BroadcastSide(packed, 2001, with_keys=False)


def _coder(pipeline, transform_suffix, output_tag=None):
  """The coder (as URN names, nested) of a transform's output in the pipeline proto the runner receives."""
  proto = pipeline.to_runner_api()
  components = proto.components

  def show(coder_id):
    coder = components.coders[coder_id]
    name = coder.spec.urn.split(":")[-2]
    inner = ",".join(show(c) for c in coder.component_coder_ids)
    return f"{name}({inner})" if inner else name

  (transform,) = [t for t in components.transforms.values() if t.unique_name.endswith(transform_suffix)]
  outputs = dict(transform.outputs)
  return show(components.pcollections[outputs[output_tag] if output_tag else next(iter(outputs.values()))].coder_id)


def test_records_cross_stages_with_deterministic_compact_coders(tmp_path):
  p = _pipeline()
  _ = ((p | "Left" >> beam.Create(LEFT), p | "Right" >> beam.Create(RIGHT))
       | CrossProduct(str(tmp_path / "pairs")))
  # Prepared records in blocks of a source: (source, indexes, lengths, payloads), tagged with their side; routed
  # to cells: (shard, (ordinal * 2 + side, payload)); the broadcast side in blocks: (ordinals, lengths, payloads).
  assert _coder(p, "PrepareLeft/Parse", "None") == "tuple(string_utf8,bytes,bytes,bytes)"
  assert _coder(p, "TagRight") == "kv(varint,tuple(string_utf8,bytes,bytes,bytes))"
  assert _coder(p, "ToCells", "None") == "kv(varint,kv(varint,bytes))"
  assert _coder(p, "ToCells", "broadcast") == "tuple(bytes,bytes,bytes)"
  _ = p | ReadExamples([str(tmp_path / "*.tfrecord")])  # read records: the payload may be a Corrupt
  assert _coder(p, "ReadFrames") == "tuple(string_utf8,varint,pickled_python)"



def test_kept_pair_and_grouped_routes_cross_stages_with_deterministic_compact_coders(tmp_path):
  """The sampled grid's join on right ordinals, (right ordinal, (shard or OFFERED, payload)), and what it
  delivers; a grouped job's routed records, (shard, (key, ordinal * 2 + side, payload)), and those on their way
  to a rank, ((key, block), (ordinal, payload)): integers and bytes, none pickled."""
  p = _pipeline()
  _ = ((p | "Left" >> beam.Create(LEFT), p | "Right" >> beam.Create(RIGHT))
       | CrossProduct(str(tmp_path / "sampled"), sample_rate=0.01, strategy="grid"))
  assert _coder(p, "ToCells", "wanted") == "kv(varint,kv(varint,bytes))"
  assert _coder(p, "Deliver") == "kv(varint,kv(varint,bytes))"
  p = _pipeline()
  _ = ((p | "Left" >> beam.Create(LEFT), p | "Right" >> beam.Create(RIGHT))
       | CrossProduct(str(tmp_path / "grouped"), pairs_per_left=2))
  assert _coder(p, "ToLeftGroupCells/Direct") == "kv(varint,tuple(bytes,varint,bytes))"
  assert _coder(p, "ToLeftGroupCells/ToRank") == "kv(kv(bytes,varint),kv(varint,bytes))"

def test_records_of_the_wrong_type_fail_when_the_pipeline_is_built(tmp_path):
  p = _pipeline()
  with pytest.raises(TypeCheckError, match=r"at PrepareLeft: expected Tuple\[<class 'str'>, <class 'int'>, .*got "
                                           r"Tuple\[<class 'str'>, <class 'str'>, <class 'bytes'>\]"):
    _ = p | beam.Create([("a", "0", make_example({}))]) | CrossProduct(str(tmp_path / "pairs"))


@pytest.mark.parametrize("options", [{"collision": "left"}, {"collision": "prefix"}],
                         ids=["sides prepared alike", "sides renamed apart"])
def test_a_self_join_parses_each_record_once(tmp_path, options):
  output = str(tmp_path / "pairs")
  p = _pipeline()
  _ = p | beam.Create(LEFT) | CrossProduct(output, self_join="combinations", **options)
  names = [t.unique_name for t in p.to_runner_api().components.transforms.values()]
  assert len([n for n in names if n.endswith("/Parse")]) == 1
  p.run().wait_until_finish()
  summary = _summary_file(output, {"pairs": 10})
  if options["collision"] == "prefix":
    assert _read(summary) == _nested_loop(LEFT, self_join="combinations", left_prefix="left_", right_prefix="right_")
  else:  # the left record's value wins every shared name; the right one's other features join it
    ordered = [parse(payload) for payload in _in_order(LEFT)]
    expected = collections.Counter()
    for i, j in itertools.combinations(range(len(ordered)), 2):
      merged = tf.train.Example()
      merged.MergeFrom(ordered[j])
      merged.MergeFrom(ordered[i])
      expected[merged.features.SerializeToString(deterministic=True)] += 1
    assert _read(summary) == expected


def test_a_self_join_selected_apart_gives_each_side_its_own_features_from_one_parse(tmp_path):
  output = str(tmp_path / "pairs")
  p = _pipeline()
  _ = p | beam.Create(LEFT) | CrossProduct(output, self_join="combinations_with_replacement", collision="prefix",
                                           left_features=("l", "bin"), right_features=("f", "l"))
  names = [t.unique_name for t in p.to_runner_api().components.transforms.values()]
  assert len([n for n in names if n.endswith("/Parse")]) == 1
  p.run().wait_until_finish()
  summary = _summary_file(output, {"pairs": 15})

  def kept(payload, names, prefix):
    out = tf.train.Example()
    for name, feature in parse(payload).features.feature.items():
      if name in names:
        out.features.feature[prefix + name].CopyFrom(feature)
    return out

  ordered = _in_order(LEFT)
  expected = collections.Counter()
  for i, j in itertools.combinations_with_replacement(range(len(ordered)), 2):
    merged = kept(ordered[i], {"l", "bin"}, "left_")
    merged.MergeFrom(kept(ordered[j], {"f", "l"}, "right_"))
    expected[merged.features.SerializeToString(deterministic=True)] += 1
  assert _read(summary) == expected
  with open(output + "-schema.pbtxt") as f:
    schema = f.read()
  assert all(f'name: "{name}"' in schema for name in ("left_l", "left_bin", "right_f", "right_l"))
  assert 'name: "left_f"' not in schema and 'name: "right_bin"' not in schema


def test_describe_pairs_gives_the_plan_and_writes_nothing(tmp_path):
  """The dry run is its own composite: CrossProduct always yields the summary, DescribePairs the plan."""
  from beam_job import DescribePairs
  left = [("l", i, make_example({"a": [i]})) for i in range(3)]
  right = [("r", j, make_example({"b": [float(j)]})) for j in range(2)]
  with _pipeline() as p:
    plan = ((p | "L" >> beam.Create(left), p | "R" >> beam.Create(right))
            | DescribePairs(str(tmp_path / "pairs"), strategy="grid"))
    assert_that(plan | beam.Map(lambda d: (d["pairs"], d["left_records"], d["right_records"])),
                equal_to([(6, 3, 2)]))
  assert list(tmp_path.iterdir()) == []


def _local_stages(argv) -> int:
  """The stages Beam's local runner makes of the CLI's pipeline (after fusion), as it would run it."""
  from apache_beam.runners.portability.fn_api_runner import fn_runner  # pylint: disable=import-outside-toplevel
  parser = cli.make_parser()
  args, beam_args = parser.parse_known_args(argv)
  options = cli._Options(beam_args)  # pylint: disable=protected-access
  pipeline = beam.Pipeline(runner=cli.local_runner(options), options=options)
  files = {side: {"patterns": [getattr(args, side)], "files": {getattr(args, side): 1}} if getattr(args, side) else
           None for side in ("left", "right")}
  cli.build(pipeline, args, temp_token="t", inputs={"compression": "auto", **files})
  return len(fn_runner.FnApiRunner().create_stages(pipeline.to_runner_api())[1])


@pytest.mark.parametrize("flags, stages", [
    (["--strategy", "broadcast"], 6), (["--strategy", "grid"], 6), (["--self_join", "combinations"], 5),
    (["--sample_rate", "0.01"], 8)], ids=["broadcast", "grid", "self-join", "sampled"])
def test_the_job_runs_in_a_few_fused_stages(tmp_path, flags, stages):
  """Each stage costs the local runner a round of scheduling (6-16 ms) and a pass over its input: reading
  (one per side), the tallies and the plan, routing, writing the cells, publishing; a sample that may be routed
  by its kept pairs adds its join. (16 stages before issue 11.)"""
  side = ["--right", str(tmp_path / "r.tfrecord")] if "--self_join" not in flags else []
  assert _local_stages(["--left", str(tmp_path / "l.tfrecord"), *side, "--output", str(tmp_path / "pairs"),
                        *flags]) == stages

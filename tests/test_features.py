"""End-to-end tests of the planning and selection features: --dry_run, --sample_rate/--seed,
--left_features/--right_features, --index_features, the TFMD schema, and ``python -m beam_job.verify``."""

import glob
import json
import re
import os

import pytest
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from beam_job import cli, verify
from tests.helpers import make_example, parse, read_tfrecords, split_frames, write_tfrecord

N_LEFT, N_RIGHT = 7, 5


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  folder = tmp_path_factory.mktemp("inputs")
  left = [make_example({"id": [i], "vec": [i / 2, -1.5], "name": [b"u%d" % i]}) for i in range(N_LEFT)]
  right = [make_example({"id": [100 + j], "tag": [b"t%d" % j], "w": [j * 1.0]}) for j in range(N_RIGHT)]
  write_tfrecord(str(folder / "left-a.tfrecord"), left[:4])
  write_tfrecord(str(folder / "left-b.tfrecord"), left[4:])
  write_tfrecord(str(folder / "right.tfrecord.gz"), right, compression="gzip")
  return {"left": str(folder / "left-*.tfrecord"), "right": str(folder / "right.tfrecord.gz"),
          "left_records": left, "right_records": right}


def _job(inputs, prefix, *flags):
  return ["--left", inputs["left"], "--right", inputs["right"], "--output", str(prefix), *flags]


def _shards(prefix):
  return sorted(glob.glob(f"{prefix}-*-of-*.tfrecord*"))


def _records(prefix):
  return [parse(r) for r in read_tfrecords(_shards(prefix))]


def _indexes(prefix):
  return [(e.features.feature["left_index"].int64_list.value[0], e.features.feature["right_index"].int64_list.value[0])
          for e in _records(prefix)]


def test_dry_run_prints_the_plan_and_writes_nothing(inputs, tmp_path, capsys):
  prefix = tmp_path / "out" / "pairs"
  assert cli.main(_job(inputs, prefix, "--collision", "left", "--dry_run", "--strategy", "grid",
                       "--target_shard_mb", "0.0005")) == 0
  text = capsys.readouterr().out
  assert "left records:   7" in text and "right records:  5" in text and "pairs:          35" in text
  assert "strategy:       grid" in text
  assert "the left side's value wins: id" in text
  assert "non-empty cell(s)" in text and "pairs-00000-of-" in text
  assert re.search(r"per cell: +at most \d+ \+ \d+ records, ~[\d.]+ MB of them; ~\d+ MB estimated per worker", text)
  assert "sampled" not in text
  assert not (tmp_path / "out").exists()


def test_dry_run_under_prefix_names_what_collided_before_renaming(inputs, tmp_path, capsys):
  assert cli.main(_job(inputs, tmp_path / "pairs", "--collision", "prefix", "--dry_run")) == 0
  assert ("collisions:     1 name(s) on both sides before renaming, renamed apart by the prefixes: id "
          "(--collision prefix)") in capsys.readouterr().out


def test_dry_run_of_a_sampled_job_says_its_cells_are_split(inputs, tmp_path, capsys):
  assert cli.main(_job(inputs, tmp_path / "pairs", "--collision", "left", "--dry_run", "--strategy", "grid",
                       "--sample_rate", "0.5")) == 0
  text = capsys.readouterr().out
  assert "cell grid:      7 x 5 chunks of 1 x 1 records, 35 non-empty cell(s)" in text
  assert "(sampled: a cell holds at most a quarter of each side, so that the work spreads over workers)" in text
  assert cli.main(_job(inputs, tmp_path / "pairs", "--collision", "left", "--dry_run", "--strategy", "broadcast",
                       "--sample_rate", "0.5")) == 0
  assert "(sampled: a cell holds at most a sixteenth of the left side, so that the work spreads over workers)" in (
      capsys.readouterr().out)


def test_index_features_trace_every_record_to_its_sources(inputs, tmp_path):
  prefix = tmp_path / "pairs"
  summary = cli.run(_job(inputs, prefix, "--collision", "prefix", "--index_features", "--strategy", "grid",
                         "--target_shard_mb", "0.001"))
  assert summary["pairs"] == N_LEFT * N_RIGHT
  pairs = _indexes(prefix)
  assert sorted(pairs) == [(i, j) for i in range(N_LEFT) for j in range(N_RIGHT)]
  for example in _records(prefix):
    i = example.features.feature["left_index"].int64_list.value[0]
    j = example.features.feature["right_index"].int64_list.value[0]
    assert example.features.feature["left_id"].int64_list.value == [i]
    assert example.features.feature["right_id"].int64_list.value == [100 + j]


@pytest.mark.parametrize("policy", ["error", "left", "right"])
def test_index_features_give_two_traceable_features_under_every_policy(inputs, tmp_path, policy):
  prefix = tmp_path / "pairs"
  flags = ["--left_features", "name", "--right_features", "tag"] if policy == "error" else []
  cli.run(_job(inputs, prefix, "--collision", policy, "--index_features", *flags))
  records = _records(prefix)
  assert len(records) == N_LEFT * N_RIGHT
  pairs = sorted((e.features.feature["left_index"].int64_list.value[0],
                  e.features.feature["right_index"].int64_list.value[0]) for e in records)
  assert pairs == [(i, j) for i in range(N_LEFT) for j in range(N_RIGHT)]
  for example in records:  # each index names the record its other features came from
    i, j = (example.features.feature[f"{side}_index"].int64_list.value[0] for side in ("left", "right"))
    assert example.features.feature["name" if policy == "error" else "vec"] == \
        parse(inputs["left_records"][i]).features.feature["name" if policy == "error" else "vec"]
    assert example.features.feature["tag"] == parse(inputs["right_records"][j]).features.feature["tag"]


def test_index_features_refuse_a_side_that_has_the_name(tmp_path, capsys):
  left, right = str(tmp_path / "l.tfrecord"), str(tmp_path / "r.tfrecord")
  write_tfrecord(left, [make_example({"left_index": [7]})])
  write_tfrecord(right, [make_example({"b": [1]})])
  assert cli.main(["--left", left, "--right", right, "--output", str(tmp_path / "p"), "--index_features"]) == 2
  assert "--index_features cannot add 'left_index' to the left records" in capsys.readouterr().err


def test_feature_selection_keeps_only_the_named_features(inputs, tmp_path):
  prefix = tmp_path / "pairs"
  cli.run(_job(inputs, prefix, "--collision", "prefix", "--left_features", "id,name", "--right_features", "w"))
  records = _records(prefix)
  assert len(records) == N_LEFT * N_RIGHT
  assert {tuple(sorted(e.features.feature)) for e in records} == {("left_id", "left_name", "right_w")}


def test_feature_selection_names_a_feature_that_never_occurs(inputs, tmp_path, capsys):
  prefix = tmp_path / "pairs"
  assert cli.main(_job(inputs, prefix, "--collision", "prefix", "--right_features", "w,nope")) == 2
  err = capsys.readouterr().err
  assert "--right_features names 'nope', which no right record has" in err
  assert "Traceback" not in err
  assert not glob.glob(f"{prefix}*")


def test_sampling_is_deterministic_and_follows_the_seed(inputs, tmp_path):
  runs = {}
  for name, seed, strategy in (("a", 1, "broadcast"), ("b", 1, "grid"), ("c", 2, "broadcast")):
    prefix = tmp_path / name / "pairs"
    summary = cli.run(_job(inputs, prefix, "--collision", "prefix", "--index_features", "--sample_rate", "0.4",
                           "--seed", str(seed), "--strategy", strategy, "--target_shard_mb", "0.001"))
    runs[name] = sorted(_indexes(prefix))
    assert summary["pairs"] == len(runs[name])
  assert runs["a"] == runs["b"]  # same seed, other strategy and cells: same pairs
  assert runs["a"] != runs["c"]
  assert 0 < len(runs["a"]) < N_LEFT * N_RIGHT


def test_sampling_self_join_keeps_only_allowed_pairs(inputs, tmp_path):
  prefix = tmp_path / "pairs"
  cli.run(["--left", inputs["left"], "--output", str(prefix), "--collision", "prefix", "--index_features",
           "--self_join", "combinations", "--sample_rate", "0.5", "--seed", "7"])
  pairs = _indexes(prefix)
  assert pairs and all(i < j for i, j in pairs)
  assert len(set(pairs)) == len(pairs)


def test_schema_lists_every_output_feature_with_its_type(inputs, tmp_path):
  prefix = tmp_path / "pairs"
  summary = cli.run(_job(inputs, prefix, "--collision", "prefix", "--index_features"))
  with open(summary["schema"], encoding="utf-8") as f:
    schema = text_format.Parse(f.read(), schema_pb2.Schema())
  types = {feature.name: feature.type for feature in schema.feature}
  assert types == {"left_id": schema_pb2.INT, "left_vec": schema_pb2.FLOAT, "left_name": schema_pb2.BYTES,
                   "left_index": schema_pb2.INT, "right_id": schema_pb2.INT, "right_tag": schema_pb2.BYTES,
                   "right_w": schema_pb2.FLOAT, "right_index": schema_pb2.INT}
  # The schema describes the records: parse them with a feature spec built from it.
  spec = {name: tf.io.VarLenFeature({schema_pb2.INT: tf.int64, schema_pb2.FLOAT: tf.float32,
                                      schema_pb2.BYTES: tf.string}[kind]) for name, kind in types.items()}
  parsed = tf.io.parse_example(read_tfrecords(_shards(prefix)), spec)
  assert parsed["right_tag"].dense_shape[0] == N_LEFT * N_RIGHT


def _verify_flags(inputs, prefix):
  return _job(inputs, prefix, "--collision", "prefix", "--strategy", "grid", "--target_shard_mb", "0.002")


@pytest.fixture()
def verified_output(inputs, tmp_path):
  prefix = tmp_path / "pairs"
  summary = cli.run(_verify_flags(inputs, prefix))
  assert len(summary["shards"]) > 2
  assert verify.main(_verify_flags(inputs, prefix)) == 0
  return prefix, summary["shards"]


def _frames(path):
  with open(path, "rb") as f:
    return split_frames(f.read())


def _verify_error(inputs, prefix, capsys):
  assert verify.main(_verify_flags(inputs, prefix)) == 1
  return capsys.readouterr().err


def test_verify_catches_a_dropped_record(inputs, verified_output, capsys):
  prefix, shards = verified_output
  frames = _frames(shards[1])
  open(shards[1], "wb").write(b"".join(frames[:-1]))
  assert f"{shards[1]} holds {len(frames) - 1} records, expected {len(frames)}" in _verify_error(
      inputs, prefix, capsys)


def test_verify_catches_a_duplicated_record(inputs, verified_output, capsys):
  prefix, shards = verified_output
  frames = _frames(shards[0])
  open(shards[0], "wb").write(b"".join(frames + frames[:1]))
  assert f"{shards[0]} holds {len(frames) + 1} records" in _verify_error(inputs, prefix, capsys)


def test_verify_catches_a_flipped_byte(inputs, verified_output, capsys):
  prefix, shards = verified_output
  data = bytearray(open(shards[2], "rb").read())
  data[20] ^= 0x40  # inside the first record's data: its CRC no longer matches
  open(shards[2], "wb").write(bytes(data))
  assert f"{shards[2]}: record 0 (byte 0): bad data CRC" in _verify_error(inputs, prefix, capsys)


def test_verify_catches_a_swapped_but_valid_record(inputs, verified_output, capsys):
  prefix, shards = verified_output
  frames = _frames(shards[0])
  open(shards[0], "wb").write(b"".join([frames[1], frames[0]] + frames[2:]))
  assert f"{shards[0]}: record 0 is not the expected merged pair" in _verify_error(inputs, prefix, capsys)


def test_verify_catches_a_missing_shard(inputs, verified_output, capsys):
  prefix, shards = verified_output
  os.remove(shards[-1])
  assert f"missing shard {shards[-1]}" in _verify_error(inputs, prefix, capsys)


def test_verify_checks_the_summary(inputs, verified_output, capsys):
  prefix, _ = verified_output
  summary_path = f"{prefix}-summary.json"
  summary = json.load(open(summary_path))
  summary["pairs"] += 1
  json.dump(summary, open(summary_path, "w"))
  assert "the summary says pairs 36, the output and inputs give 35" in _verify_error(inputs, prefix, capsys)


def test_schema_of_a_feature_with_several_types_has_no_type(tmp_path):
  left = write_tfrecord(str(tmp_path / "left.tfrecord"),
                        [make_example({"c": [1]}), make_example({"c": [b"x"]}), make_example({"d": [1.5]})])
  right = write_tfrecord(str(tmp_path / "right.tfrecord"), [make_example({"e": [2]})])
  summary = cli.run(["--left", left, "--right", right, "--output", str(tmp_path / "pairs")])
  assert summary["pairs"] == 3
  schema = text_format.Parse(open(summary["schema"]).read(), schema_pb2.Schema())
  assert {f.name: f.HasField("type") and f.type for f in schema.feature} == {
      "c": False, "d": schema_pb2.FLOAT, "e": schema_pb2.INT}


@pytest.mark.parametrize("policy", ["left", "right"])
def test_schema_of_a_collision_holds_both_sides_kinds(tmp_path, policy):
  # Left records have 'a' (int) or not; right ones have 'a' as floats and 'b' as int or bytes on either side.
  left = write_tfrecord(str(tmp_path / "left.tfrecord"), [make_example({"a": [1], "b": [3]}), make_example({"x": [0]})])
  right = write_tfrecord(str(tmp_path / "right.tfrecord"), [make_example({"a": [0.5], "b": [4]})])
  summary = cli.run(["--left", left, "--right", right, "--output", str(tmp_path / "pairs"), "--collision", policy])
  schema = text_format.Parse(open(summary["schema"]).read(), schema_pb2.Schema())
  types = {f.name: f.HasField("type") and f.type for f in schema.feature}
  # Under left, 'a' is an int in one pair and, where the left record lacks it, the right record's float in the
  # other: the union of what can appear, so no single type. Under right the one right record has 'a', so every
  # pair takes its float and the loser's int cannot appear. 'b' is an int either way.
  assert types == {"a": False if policy == "left" else schema_pb2.FLOAT, "b": schema_pb2.INT, "x": schema_pb2.INT}
  kinds = {parse(r).features.feature["a"].WhichOneof("kind") for r in read_tfrecords(summary["shards"])}
  assert kinds == ({"int64_list", "float_list"} if policy == "left" else {"float_list"})


def test_dry_run_shows_the_plan_and_every_problem_with_its_fix(inputs, tmp_path, capsys):
  # Three problems at once: 'id' on both sides under --collision error, too many pairs, an unknown feature.
  flags = ["--dry_run", "--max_pairs", "10", "--left_features", "id,nope"]
  assert cli.main(_job(inputs, tmp_path / "pairs", *flags)) == 0
  text = capsys.readouterr().out
  assert "pairs:          35" in text and "cell grid:" in text
  assert "collisions:     1 name(s) on both sides, which --collision error refuses: id" in text
  problems = [line for line in text.splitlines() if line.startswith("problem:")]
  assert problems == [
      "problem:        --left_features names 'nope', which no left record has",
      "problem:        the job would write 35 pairs (7 x 5 records), more than --max_pairs 10; raise --max_pairs "
      "to allow it",
      "problem:        1 feature name(s) exist on both sides: 'id'; choose how to merge them with --collision "
      "prefix|left|right",
  ]
  assert text.rstrip().endswith("the job would fail: each problem above names the flag that fixes it")
  assert not (tmp_path / "pairs-summary.json").exists()
  # The real run still fails, on the first of them.
  assert cli.main(_job(inputs, tmp_path / "pairs", *flags[1:])) == 2
  assert "--left_features names 'nope'" in capsys.readouterr().err

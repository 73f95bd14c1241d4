"""``python -m beam_job.verify --output PREFIX`` takes the inputs and options from the summary (flags override
them, and each disagreement is named), checks every summary field it can recompute, and streams every shard: a
correct shard is compared block by block against the native writer's frames, and a wrong one is read again
frame by frame only to name the first wrong record.

Each output is written once per module and copied for each test, which then damages its copy."""

import glob
import gzip
import itertools
import json
import os
import random
import re
import shutil
import zlib

import pytest

from beam_job import cells, cli, examples, expected, planning, sampling, tfrecord, verify
from tests.helpers import make_example, split_frames, write_tfrecord

N_LEFT, N_RIGHT = 12, 6
_EVERY = "every record compared; every record checked against the inputs independently"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  folder = tmp_path_factory.mktemp("inputs")
  left = [make_example({"id": [i], "vec": [i / 4, 2.5], "name": [b"q%d" % i]}) for i in range(N_LEFT)]
  right = [make_example({"id": [50 + j], "tag": [b"d%d" % j]}) for j in range(N_RIGHT)]
  write_tfrecord(str(folder / "left.tfrecord"), left)
  write_tfrecord(str(folder / "right.tfrecord"), right)
  return folder


# name -> the job's flags (besides --left, --right and --output), also given to verify
_OUTPUTS = {
    "grid": ["--collision", "prefix", "--strategy", "grid", "--target_shard_mb", "0.002"],
    "gzip": ["--collision", "prefix", "--strategy", "broadcast", "--target_shard_mb", "0.004",
             "--output_compression", "gzip"],
    # (a sampled cell holds at most a quarter of each side, a sixteenth of the left when broadcast: rows of 6)
    "sampled": ["--collision", "left", "--strategy", "broadcast", "--target_shard_mb", "0.002", "--sample_rate",
                "0.9", "--seed", "3"],
}


@pytest.fixture(scope="module")
def written(inputs, tmp_path_factory):
  folders = {}
  for name in _OUTPUTS:
    folder = tmp_path_factory.mktemp(name)
    cli.run(_flags(inputs, folder / "pairs", name))
    folders[name] = folder
  return folders


def _flags(inputs, prefix, name, *more):
  return ["--left", str(inputs / "left.tfrecord"), "--right", str(inputs / "right.tfrecord"),
          "--output", str(prefix), *_OUTPUTS[name], *more]


@pytest.fixture()
def output(inputs, written, tmp_path):
  """``copy(name)`` -> (prefix, shards, run): a fresh copy of that output, and ``run(*more)`` runs verify on it
  with the job's flags and returns (exit status, stderr)."""

  def copy(name):
    folder = tmp_path / name
    shutil.copytree(written[name], folder)
    prefix = folder / "pairs"
    shards = sorted(glob.glob(f"{prefix}-*-of-*.tfrecord*"))
    assert len(shards) > 2

    def run(*more):  # from the summary alone, as a user would
      return verify.main(["--output", str(prefix), *more])

    return prefix, shards, run
  return copy


def _read(path):
  data = open(path, "rb").read()
  return gzip.decompress(data) if path.endswith(".gz") else data


def _write(path, data):
  open(path, "wb").write(gzip.compress(data) if path.endswith(".gz") else data)


def _failure(run, capsys, *more):
  capsys.readouterr()
  assert run(*more) == 1
  return capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(_OUTPUTS))
def test_a_correct_output_is_compared_without_the_reference_pairs(name, output, monkeypatch, capsys):
  prefix, shards, run = output(name)

  def never(*args, **kwargs):
    raise AssertionError("a correct shard needs no frame-by-frame comparison")

  if name != "sampled" and cells._fastframes is not None:  # sampled cells take the reference path to write
    monkeypatch.setattr(cells, "pair_examples", never)
  capsys.readouterr()
  assert run() == 0
  assert capsys.readouterr().out.endswith(f" pairs in {len(shards)} shard(s) under {prefix}: {_EVERY}\n")


@pytest.mark.parametrize("name", sorted(_OUTPUTS))
def test_an_altered_record_is_named_reading_only_up_to_it(name, output, monkeypatch, capsys):
  _, shards, run = output(name)
  shard = max(shards, key=lambda s: len(split_frames(_read(s))))
  frames = split_frames(_read(shard))
  assert len(frames) > 4
  _write(shard, b"".join(frames[:3] + [frames[4]] + frames[4:]))  # record 3 is a valid frame, not its pair
  yielded = []  # per call: how many pairs it gave
  reference = cells.pair_examples

  def counted(*args, **kwargs):
    yielded.append(0)
    for example in reference(*args, **kwargs):
      yielded[-1] += 1
      yield example

  monkeypatch.setattr(cells, "pair_examples", counted)
  assert _failure(run, capsys) == f"verify failed: {shard}: record 3 is not the expected merged pair\n"
  assert yielded[-1] == 4  # the expected pairs are generated one at a time, up to the first wrong one


@pytest.mark.parametrize("name", sorted(_OUTPUTS))
def test_a_truncated_shard(name, output, capsys):
  _, shards, run = output(name)
  frames = split_frames(_read(shards[1]))
  kept = b"".join(frames[:-1])
  _write(shards[1], kept + frames[-1][:30])
  length = len(frames[-1]) - 16  # 18 bytes follow the header; the reader counts them less a footer, as ever
  assert _failure(run, capsys) == (f"verify failed: {shards[1]}: record {len(frames) - 1} (byte {len(kept)}): "
                                   f"record claims {length} bytes but the file ends after 14\n")


@pytest.mark.parametrize("name", sorted(_OUTPUTS))
def test_an_extra_record(name, output, capsys):
  _, shards, run = output(name)
  frames = split_frames(_read(shards[-1]))
  _write(shards[-1], b"".join(frames + frames[-1:]))
  assert _failure(run, capsys) == (f"verify failed: {shards[-1]} holds {len(frames) + 1} records, expected "
                                   f"{len(frames)} (records dropped or duplicated)\n")


@pytest.mark.parametrize("damage, problem", [
    (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "Incorrect length of data produced"),
    (lambda data: data[:-8], "Compressed file ended before the end-of-stream marker was reached"),
], ids=["bad length in the trailer", "trailer cut off"])
def test_a_gzip_shard_with_a_damaged_tail(damage, problem, output, capsys):
  _, shards, run = output("gzip")
  records = len(split_frames(_read(shards[0])))
  data = open(shards[0], "rb").read()
  open(shards[0], "wb").write(damage(data))
  assert _failure(run, capsys) == (f"verify failed: {shards[0]}: the gzip stream is broken after record "
                                   f"{records}: {problem}\n")


def test_a_shard_not_compared_is_counted(output, capsys):
  _, shards, run = output("grid")
  compared = random.Random(0).sample(range(len(shards)), 1)
  shard = shards[min(set(range(len(shards))) - set(compared))]
  frames = split_frames(_read(shard))
  _write(shard, b"".join(frames[:-1]))
  assert _failure(run, capsys, "--full_check_max", "1", "--sample_shards", "1") == (
      f"verify failed: {shard} holds {len(frames) - 1} records, expected {len(frames)}\n")


def test_bad_deflate_data_in_a_gzip_shard_is_a_broken_stream(output, capsys):
  _, shards, run = output("gzip")
  data = open(shards[0], "rb").read()
  for at in range(10, len(data) - 8):  # the first damaged byte zlib itself refuses (a block header)
    damaged = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
    try:
      gzip.decompress(damaged)
    except zlib.error:
      break
  else:
    pytest.fail("no byte of the shard makes its deflate data invalid")
  open(shards[0], "wb").write(damaged)
  message = _failure(run, capsys)
  assert re.fullmatch(rf"verify failed: {re.escape(shards[0])}: the gzip stream is broken after record \d+: "
                      r"Error -3 while decompressing data: [^\n]+\n", message), message


@pytest.mark.parametrize("text, problem", [("{not json", "is not JSON (Expecting property name"),
                                           ("[1, 2]", "is not a JSON object")])
def test_a_summary_that_is_not_a_json_object_is_a_verify_failure(text, problem, output, capsys):
  prefix, _, run = output("grid")
  _write(f"{prefix}-summary.json", text.encode())
  assert _failure(run, capsys).startswith(f"verify failed: {prefix}-summary.json {problem}")


# --- from the summary; flags that override it; usage errors ------------------------------------------------


@pytest.mark.parametrize("name", sorted(_OUTPUTS))
def test_the_job_flags_given_again_agree_with_the_summary(name, inputs, output, capsys):
  prefix, shards, _ = output(name)
  capsys.readouterr()
  assert verify.main(_flags(inputs, prefix, name)) == 0
  assert capsys.readouterr().out.endswith(f" pairs in {len(shards)} shard(s) under {prefix}: {_EVERY}\n")


@pytest.mark.parametrize("name, flags, problem", [
    ("gzip", ["--output_compression", "uncompressed"], 'the summary lists 3 shards, the output and inputs give 3: '
     'item 0 is "{prefix}-00000-of-00003.tfrecord.gz", expected "{prefix}-00000-of-00003.tfrecord"'),
    ("sampled", ["--seed", "4"], "{shard0} holds 6 records, expected 5 (records dropped or duplicated)"),
    ("grid", ["--collision", "left"], 'the summary says grid {{"cells": 8, "col_chunk": 5, "cols": 2, "row_chunk": '
     '3, "rows": 4}}, the output and inputs give {{"rows": 3, "cols": 2, "row_chunk": 4, "col_chunk": 5, '
     '"cells": 6}}'),
], ids=["compression", "seed", "collision"])
def test_a_flag_that_disagrees_with_the_summary_is_named(name, flags, problem, output, capsys):
  prefix, shards, run = output(name)
  message = _failure(run, capsys, *flags)
  recorded = {"--output_compression": "gzip", "--seed": "3", "--collision": "prefix"}[flags[0]]
  assert message == (f"verify failed: {problem.format(prefix=prefix, shard0=shards[0])} (flags that differ from "
                     f"the summary: {flags[0]} {flags[1]} (the run: {recorded}))\n")


def test_given_inputs_override_the_summary_and_are_named_when_they_differ(inputs, output, capsys, tmp_path):
  prefix, _, run = output("grid")
  copy = tmp_path / "copy"
  shutil.copytree(inputs, copy)
  capsys.readouterr()
  assert run("--left", str(copy / "left.tfrecord"), "--right", str(copy / "right.tfrecord")) == 0
  out = capsys.readouterr().out
  assert out.endswith(f"{_EVERY} (flags that differ from the summary: --left {copy}/left.tfrecord "
                      f"(1 file(s); the run read 1 file(s) of {inputs}/left.tfrecord); --right "
                      f"{copy}/right.tfrecord (1 file(s); the run read 1 file(s) of {inputs}/right.tfrecord))\n"), out


def test_an_input_changed_or_gone_since_the_run(inputs, written, tmp_path, capsys):
  moved = tmp_path / "inputs"
  shutil.copytree(inputs, moved)
  prefix = str(tmp_path / "out" / "pairs")
  cli.run(["--left", str(moved / "left.tfrecord"), "--right", str(moved / "right.tfrecord"), "--output", prefix,
           "--collision", "prefix"])
  capsys.readouterr()
  assert verify.main(["--output", prefix]) == 0
  size = (moved / "right.tfrecord").stat().st_size
  write_tfrecord(str(moved / "right.tfrecord"), [make_example({"id": [1]})])
  assert verify.main(["--output", prefix]) == 1
  now = (moved / "right.tfrecord").stat().st_size
  assert capsys.readouterr().err == (f"verify failed: input {moved}/right.tfrecord has changed since the run: "
                                     f"{now:,} bytes, the run read {size:,}\n")
  (moved / "right.tfrecord").unlink()
  assert verify.main(["--output", prefix]) == 1
  assert capsys.readouterr().err == (f"verify failed: input {moved}/right.tfrecord, read by the run, is gone "
                                     "(give --right to verify against other files)\n")


@pytest.mark.parametrize("field, value, problem", [
    ("left_records", 13, 'the summary says left_records 13, the output and inputs give 12'),
    ("pairs", 1, 'the summary says pairs 1, the output and inputs give 72'),
    ("bytes", 5, 'the summary says bytes 5, the output and inputs give {bytes}'),
    ("record_bytes", 5, 'the summary says record_bytes 5, the output and inputs give {bytes}'),
    ("strategy", "broadcast", 'the summary says strategy "broadcast", the output and inputs give "grid"'),
    ("shuffle_bytes", 0, 'the summary says shuffle_bytes 0, the output and inputs give {shuffle}'),
])
def test_every_summary_field_it_can_recompute_is_checked(field, value, problem, output, capsys):
  prefix, shards, run = output("grid")
  path = f"{prefix}-summary.json"
  summary = json.load(open(path))
  expected = problem.format(bytes=sum(os.path.getsize(s) for s in shards), shuffle=summary["shuffle_bytes"])
  summary[field] = value
  open(path, "w").write(json.dumps(summary))
  assert _failure(run, capsys) == f"verify failed: {expected}\n"


def test_a_shard_missing_from_the_summary_list(output, capsys):
  prefix, shards, run = output("grid")
  path = f"{prefix}-summary.json"
  summary = json.load(open(path))
  summary["shards"] = summary["shards"][:-1]
  open(path, "w").write(json.dumps(summary))
  assert _failure(run, capsys) == ("verify failed: the summary lists 7 shards, the output and inputs give 8: item 7 is "
                                   f'nothing more, expected "{shards[7]}"\n')


def test_the_schema_must_be_there_and_name_every_output_feature(output, capsys):
  prefix, _, run = output("grid")
  schema = f"{prefix}-schema.pbtxt"
  text = open(schema).read()
  open(schema, "w").write(text.replace('name: "left_id"', 'name: "left_idd"'))
  assert _failure(run, capsys) == f"verify failed: {schema} lacks feature 'left_id' of the output\n"
  open(schema, "w").write("feature { nme: 1 }")
  assert _failure(run, capsys).startswith(f"verify failed: {schema} is not a TFMD schema (")
  os.remove(schema)
  assert _failure(run, capsys) == f"verify failed: missing schema {schema}\n"


def test_corrupt_records_and_their_dead_letters_are_checked(inputs, tmp_path, capsys):
  data = (inputs / "left.tfrecord").read_bytes()
  frames = split_frames(data)
  bad = tmp_path / "bad.tfrecord"
  bad.write_bytes(b"".join(frames[:2]) + frames[2][:-1] + b"x" + b"".join(frames[3:]))  # record 2's CRC
  prefix = str(tmp_path / "out" / "pairs")
  cli.run(["--left", str(bad), "--right", str(inputs / "right.tfrecord"), "--output", prefix, "--on_corrupt", "skip",
           "--collision", "left"])
  capsys.readouterr()
  assert verify.main(["--output", prefix]) == 0
  letters = f"{prefix}-corrupt.jsonl"
  open(letters, "w").write("")
  assert verify.main(["--output", prefix]) == 1
  assert capsys.readouterr().err == f"verify failed: {letters} lists 0 corrupt record(s), the inputs hold 1\n"
  assert verify.main(["--output", prefix, "--on_corrupt", "fail"]) == 1
  assert capsys.readouterr().err == (f"verify failed: corrupt input {bad}: record 2 (byte {len(frames[0]) * 2}): "
                                     "bad data CRC (--on_corrupt skip leaves it out) (flags that differ from the "
                                     "summary: --on_corrupt fail (the run: skip))\n")


def test_a_summary_without_inputs_needs_the_input_flags(inputs, output, capsys):
  prefix, _, run = output("grid")
  path = f"{prefix}-summary.json"
  summary = json.load(open(path))
  del summary["inputs"]
  open(path, "w").write(json.dumps(summary))
  assert _failure(run, capsys) == (f"verify failed: the summary of {summary['output']} does not record its inputs "
                                   "(a run of an older version): give --left, and --right if the run had one\n")
  assert run("--left", str(inputs / "left.tfrecord"), "--right", str(inputs / "right.tfrecord")) == 0


@pytest.mark.parametrize("argv, message", [
    (["--sed", "3"], "unknown flag --sed; did you mean --seed?"),
    (["--index"], "unknown flag --index; did you mean --index_features?"),
    (["--seed=x"], "argument --seed: must be a whole number from -9223372036854775808 to 9223372036854775807 "
                   "(64-bit signed), not x"),
    (["extra"], "unexpected argument 'extra'"),
    ([], None),
])
def test_usage_errors_exit_2_on_one_line(argv, message, output, capsys):
  prefix, _, _ = output("grid")
  capsys.readouterr()
  assert verify.main((["--output", str(prefix)] if message else []) + argv) == 2
  err = capsys.readouterr().err
  assert err == f"error: {message or 'the following arguments are required: --output'}\n"


def test_a_self_join_from_its_summary_alone(inputs, tmp_path, capsys):
  prefix = str(tmp_path / "pairs")
  cli.run(["--left", str(inputs / "left.tfrecord"), "--self_join", "combinations", "--collision", "prefix",
           "--output", prefix, "--target_shard_mb", "0.002"])
  capsys.readouterr()
  assert verify.main(["--output", prefix]) == 0
  assert capsys.readouterr().out.startswith(f"verified {N_LEFT * (N_LEFT - 1) // 2} pairs in ")
  assert verify.main(["--output", prefix, "--self_join", "product"]) == 1
  assert capsys.readouterr().err.endswith(
      "(flags that differ from the summary: --self_join product (the run: combinations))\n")


# --- the independent definition of the output (beam_job.expected) --------------------------------------------

# name -> the job's flags besides --left and --output (--right unless a self-join)
_CASES = {
    "prefix": ["--collision", "prefix"],
    "left wins": ["--collision", "left"],
    "right wins": ["--collision", "right", "--target_shard_mb", "0.002"],
    "selection": ["--left_features", "vec,name", "--right_features", "tag"],
    "selection left wins": ["--collision", "left", "--right_features", "id", "--target_shard_mb", "0.002"],
    "index prefix": ["--collision", "prefix", "--index_features", "--left_prefix", "a.", "--right_prefix", "b."],
    "index right wins": ["--collision", "right", "--index_features"],
    "sampled": ["--collision", "left", "--sample_rate", "0.5", "--seed", "11", "--index_features"],
    "gzip grid": ["--collision", "prefix", "--strategy", "grid", "--target_shard_mb", "0.002",
                  "--output_compression", "gzip"],
    "self product": ["--self_join", "product", "--collision", "prefix", "--target_shard_mb", "0.002"],
    "self combinations": ["--self_join", "combinations", "--collision", "left", "--index_features",
                          "--target_shard_mb", "0.002"],
    "self with replacement": ["--self_join", "combinations_with_replacement", "--collision", "prefix",
                              "--strategy", "grid", "--target_shard_mb", "0.002"],
    "self sampled": ["--self_join", "combinations", "--collision", "prefix", "--sample_rate", "0.3", "--seed", "-5",
                     "--left_features", "id", "--index_features"],
}


def _run_case(inputs, tmp_path, flags):
  prefix = str(tmp_path / "out" / "pairs")
  right = [] if "--self_join" in flags else ["--right", str(inputs / "right.tfrecord")]
  cli.run(["--left", str(inputs / "left.tfrecord"), *right, "--output", prefix, *flags])
  return prefix, sorted(glob.glob(f"{prefix}-*-of-*.tfrecord*"))


@pytest.mark.parametrize("case", sorted(_CASES))
def test_every_policy_self_join_sample_index_and_selection_passes_the_independent_check(case, inputs, tmp_path,
                                                                                       capsys):
  prefix, shards, = _run_case(inputs, tmp_path, _CASES[case])
  capsys.readouterr()
  assert verify.main(["--output", prefix]) == 0
  out = capsys.readouterr().out
  assert out.endswith(f" shard(s) under {prefix}: {_EVERY}\n"), out
  assert verify.main(["--output", prefix, "--semantic_check_max", "0", "--semantic_samples", "2"]) == 0
  out = capsys.readouterr().out
  checked = int(re.search(r"; (\d+) records checked against the inputs independently\n$", out).group(1))
  assert len(shards) <= checked <= 4 * len(shards)  # first, last and two more of each non-empty shard


def _left_0_right_0(inputs):
  return f"the pair of left {inputs}/left.tfrecord record 0 and right {inputs}/right.tfrecord record 0"


@pytest.mark.parametrize("more", [[], ["--semantic_check_max", "0", "--semantic_samples", "1"]],
                         ids=["every record", "sampled records"])
def test_a_feature_dropped_by_prepare_in_the_job_and_in_verify_alike_is_named(more, inputs, tmp_path, monkeypatch,
                                                                             capsys):
  real = examples._entries  # pylint: disable=protected-access  # the core the job and verify share

  def dropping(feature_map, views):  # loses the left records' "vec", schema included
    prepared = real(feature_map, views)
    for _, _, shapes in views:
      for shape in [shape for shape in shapes or () if shape[0] == "left_vec"]:
        del shapes[shape]
    return [examples.from_payload(examples.without(record, {"left_vec"})) for record in prepared]

  monkeypatch.setattr(examples, "_entries", dropping)
  prefix, shards = _run_case(inputs, tmp_path, ["--collision", "prefix", "--target_shard_mb", "0.002"])
  assert _failure(lambda *a: verify.main(["--output", prefix, *a]), capsys, *more) == (
      f"verify failed: {shards[0]}: record 0, {_left_0_right_0(inputs)}: lacks feature 'left_vec' "
      "(float_list [0.0, 2.5])\n")
  monkeypatch.setattr(examples, "_entries", real)
  assert verify.main(["--output", prefix, *more]) == 1  # (the plan for whole records differs: another failure)


def test_a_collision_winner_swapped_in_the_job_and_in_verify_alike_is_named(inputs, tmp_path, monkeypatch, capsys):
  real = cells.write_cell

  def swapped(*args, collision="error", **kwargs):
    return real(*args, collision={"left": "right", "right": "left"}.get(collision, collision), **kwargs)

  monkeypatch.setattr(cells, "write_cell", swapped)
  prefix, shards = _run_case(inputs, tmp_path, ["--collision", "left"])
  assert _failure(lambda: verify.main(["--output", prefix]), capsys) == (
      f"verify failed: {shards[0]}: record 0, {_left_0_right_0(inputs)}: feature 'id' is int64_list [50], "
      "expected int64_list [0]\n")


def test_a_loser_left_untrimmed_holds_a_name_twice(inputs, tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(examples, "without", lambda record, names: record.payload)  # TensorFlow's parser: last wins
  prefix, shards = _run_case(inputs, tmp_path, ["--collision", "right"])
  assert _failure(lambda: verify.main(["--output", prefix]), capsys) == (
      f"verify failed: {shards[0]}: record 0, {_left_0_right_0(inputs)}: holds feature 'id' twice\n")


def test_a_self_join_rule_broken_in_the_plan_and_the_writer_alike_is_named(inputs, tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(planning.MIN_STEP, "combinations", 0)  # combinations would keep each record with itself
  prefix, shards = _run_case(inputs, tmp_path, ["--self_join", "combinations", "--collision", "prefix"])
  left = f"{inputs}/left.tfrecord"
  assert _failure(lambda: verify.main(["--output", prefix]), capsys) == (
      f"verify failed: {shards[0]}: record 0, the pair of left {left} record 0 and right {left} record 1: feature "
      "'right_id' is int64_list [0], expected int64_list [1]\n")


def test_pairs_left_out_by_the_plan_and_the_writer_alike_are_found(inputs, tmp_path, monkeypatch, capsys):
  real_write, real_pairs = cells.write_cell, planning.cell_pairs
  def all_but_the_last(right):  # the broadcast side's columns come as a run of payloads
    return cells.Run(right.first, right.payloads[:-1]) if isinstance(right, cells.Run) else right[:-1]

  monkeypatch.setattr(cells, "write_cell", lambda left, right, out, **merge: real_write(
      left, all_but_the_last(right), out, **merge))
  monkeypatch.setattr(planning, "cell_pairs", lambda rows, cols, self_join: real_pairs(rows, (cols[0], cols[1] - 1),
                                                                                       self_join))
  prefix, shards = _run_case(inputs, tmp_path, ["--collision", "prefix"])  # one cell: the last column is lost
  run = lambda *more: verify.main(["--output", prefix, *more])
  assert _failure(run, capsys) == (
      f"verify failed: {shards[0]}: record 5, the pair of left {inputs}/left.tfrecord record 0 and right "
      f"{inputs}/right.tfrecord record 5: feature 'left_id' is int64_list [1], expected int64_list [0]\n")
  assert _failure(run, capsys, "--semantic_check_max", "0", "--semantic_samples", "0") == (  # first and last
      f"verify failed: {shards[0]} holds {N_LEFT * (N_RIGHT - 1)} records; its cell of the summary's grid (left "
      f"ordinals 0..{N_LEFT - 1} x right ordinals 0..{N_RIGHT - 1}) has {N_LEFT * N_RIGHT} pairs\n")


def test_a_sampling_draw_broken_in_the_job_and_in_verify_alike_is_named(inputs, tmp_path, monkeypatch, capsys):
  real = sampling.kept_columns
  monkeypatch.setattr(sampling, "kept_columns", lambda seed, *rest: real(seed + 1, *rest))
  prefix, shards = _run_case(inputs, tmp_path, ["--collision", "prefix", "--sample_rate", "0.5", "--seed", "3",
                                                "--index_features"])
  message = _failure(lambda: verify.main(["--output", prefix]), capsys)
  assert re.fullmatch(rf"verify failed: {re.escape(shards[0])}: record \d+, the pair of left .+ record \d+ and right "
                      r".+ record \d+: feature 'right_id' is int64_list \[5\d\], expected int64_list \[5\d\]\n",
                      message), message


@pytest.mark.parametrize("self_join", ["combinations", "combinations_with_replacement", None])
@pytest.mark.parametrize("rate", [1.0, 0.4])
def test_the_independent_pairs_are_itertools_and_the_documented_draw(self_join, rate):
  """Over a grid of uneven cells: the pairs, in shard order, are itertools' over the ordinals, each kept as
  ``sampling.kept_columns`` decides, and ``pairs_at`` finds each of them by its record number."""
  n = 11
  side = expected.Side([b""] * n, [("f", 0, [])])
  independent = expected.Expected(side, None if self_join else side,
                                  expected.Options(self_join=self_join, sample_rate=rate, seed=7))
  grid = {"rows": 3, "cols": 4, "row_chunk": 4, "col_chunk": 3}
  found = [pair for cell in independent.cells(grid) for _, pair in independent.pairs(cell)]
  every = {"combinations": itertools.combinations, None: lambda r, k: itertools.product(r, repeat=k),
           "combinations_with_replacement": itertools.combinations_with_replacement}[self_join](range(n), 2)
  assert sorted(found) == [(i, j) for i, j in every if j in set(sampling.kept_columns(7, rate, i, 0, n))]
  assert len(found) > 5
  for cell in independent.cells(grid):
    pairs = list(independent.pairs(cell))
    assert independent.count(cell) == len(pairs)
    assert pairs or rate < 1  # a cell without pairs is not a shard, unless the sample kept none of its pairs
    assert independent.pairs_at(cell, [k for k, _ in pairs][::-1]) == pairs


@pytest.mark.parametrize("piece", [1, 5, 17, 1 << 20])
def test_the_wanted_records_are_found_however_a_shard_streams_in(piece):
  """A compared shard's bytes reach the independent check in the writer's blocks; a frame cut anywhere (its
  header, or a wanted one) is found whole, and checking stops at the first wrong record."""
  payloads = [bytes([k]) * (k * 7 % 40) for k in range(30)]  # record 0 and others are empty
  data = b"".join(tfrecord.frame(p) for p in payloads)
  seen = []

  class Recorder:
    def problem(self, payload, pair):
      seen.append((pair, payload))
      return "wrong" if pair == "bad" else None

    def where(self, pair):
      return f"the pair {pair}"

  wanted = [(0, "a"), (3, "b"), (4, "c"), (29, "d")]
  picking = verify._Picking("shard", Recorder(), iter(wanted))
  for at in range(0, len(data), piece):
    picking.feed(data[at:at + piece])
  assert seen == [(pair, payloads[k]) for k, pair in wanted]
  assert (picking.problem, picking.checked) == (None, 4)
  seen.clear()
  picking = verify._Picking("shard", Recorder(), iter([(2, "a"), (6, "bad"), (7, "c")]))
  for at in range(0, len(data), piece):
    picking.feed(data[at:at + piece])
  assert seen == [("a", payloads[2]), ("bad", payloads[6])]
  assert (picking.problem, picking.checked) == ("shard: record 6, the pair bad: wrong", 2)


def test_a_side_leaves_out_what_is_not_an_example_and_names_records_by_file_position(inputs, tmp_path):
  frames = split_frames((inputs / "left.tfrecord").read_bytes())
  sequence_example = tfrecord.frame(b"\x12\x00")  # a SequenceExample's feature_lists: field 2, not an Example
  first = tmp_path / "a.tfrecord"
  first.write_bytes(b"".join(frames[:2]) + frames[2][:-1] + b"x" + sequence_example + b"".join(frames[3:5]))
  empty = tmp_path / "b.tfrecord"
  empty.write_bytes(b"")
  last = tmp_path / "c.tfrecord"
  shutil.copy(inputs / "left.tfrecord", last)
  side = expected.read_side([str(last), str(empty), str(first)], "auto")  # read in path order
  assert side.payloads == [f[12:-4] for f in frames[:2] + frames[3:5] + frames]
  assert [side.where(k) for k in (1, 2, 3, 4, 5)] == [f"{first} record 1", f"{first} record 4", f"{first} record 5",
                                                      f"{last} record 0", f"{last} record 1"]


def test_a_name_on_both_sides_is_refused_under_error_and_prefix_and_a_nan_equals_itself():
  left = expected.Side([make_example({"id": [1], "a": [float("nan"), 0.5]})], [("l", 0, [])])
  right = expected.Side([make_example({"id": [3]})], [("r", 0, [])])
  output = make_example({"id": [1], "a": [float("nan"), 0.5]})  # the right's "id" dropped, as --collision left does
  for collision in ("error", "prefix"):
    independent = expected.Expected(left, right, expected.Options(collision=collision))
    assert independent.problem(output, (0, 0)) == f"feature 'id' is on both sides, which --collision {collision} refuses"
  assert expected.Expected(left, right, expected.Options(collision="left")).problem(output, (0, 0)) is None
  assert expected.Expected(left, right, expected.Options(collision="right")).problem(output, (0, 0)) == (
      "feature 'id' is int64_list [1], expected int64_list [3]")


@pytest.mark.parametrize("change, field", [
    (lambda s: s["inputs"]["left"].pop("files"), "inputs.left.files"),
    (lambda s: s.update(inputs=[]), "inputs"),
    (lambda s: s.update(options=[]), "options"),
], ids=["no_files", "inputs_a_list", "options_a_list"])
def test_a_malformed_summary_is_a_one_line_failure(change, field, output, capsys):
  prefix, _, run = output("grid")
  path = f"{prefix}-summary.json"
  summary = json.load(open(path))
  change(summary)
  open(path, "w").write(json.dumps(summary))
  assert _failure(run, capsys) == f"verify failed: {path}: its field {field} is missing or malformed\n"


def test_an_input_flag_matching_nothing_is_a_usage_error(output, tmp_path, capsys):
  prefix, _, run = output("grid")
  capsys.readouterr()
  assert run("--left", str(tmp_path / "nothing.tfrecord")) == 2
  err = capsys.readouterr().err
  assert err == f"error: --left pattern '{tmp_path}/nothing.tfrecord' matches no file\n"


def test_verify_holds_the_inputs_and_a_block_not_the_output(tmp_path, monkeypatch, capsys):
  """verify streams: a shard is compared one writer block at a time against the native frames, so its memory is
  the inputs as read and prepared plus a block or two, whatever the output's size. Traced (tracemalloc) over an
  output of 90,000 pairs (about 10 MB in 4 shards) with 256 KB blocks: the peak (1.0 MB when written) stays
  below one shard, which verify would hold were it to read a shard whole."""
  import tracemalloc  # pylint: disable=import-outside-toplevel
  folder = tmp_path / "in"
  folder.mkdir()
  write_tfrecord(str(folder / "left.tfrecord"), [make_example({"id": [i], "vec": [i / 4] * 4}) for i in range(300)])
  write_tfrecord(str(folder / "right.tfrecord"), [make_example({"id": [j], "tag": [b"d%d" % j]}) for j in range(300)])
  prefix = tmp_path / "out" / "pairs"
  cli.run(["--left", str(folder / "left.tfrecord"), "--right", str(folder / "right.tfrecord"), "--output",
           str(prefix), "--collision", "prefix", "--target_shard_mb", "3"])
  shards = glob.glob(f"{prefix}-*-of-*.tfrecord")
  output_bytes = sum(os.path.getsize(shard) for shard in shards)
  assert len(shards) >= 4 and output_bytes > 10_000_000
  monkeypatch.setattr(cells, "BLOCK_BYTES", 256 << 10)
  capsys.readouterr()
  tracemalloc.start()
  try:
    assert verify.main(["--output", str(prefix)]) == 0
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert capsys.readouterr().out.endswith(f" pairs in {len(shards)} shard(s) under {prefix}: {_EVERY}\n")
  assert peak < min(output_bytes / len(shards), 2_000_000), (peak, output_bytes)


def test_verify_plans_with_the_names_the_job_counted(tmp_path, capsys):
  """Under --collision left the cell budget counts each record's names, which the job learns in its one parse:
  verify's own reading must count them too, or it plans another grid (here 30 shards for the job's 120) and
  fails a correct output."""
  folder = tmp_path / "in"
  folder.mkdir()
  write_tfrecord(str(folder / "l.tfrecord"), [make_example(
      {"id": [i], "vec": [i / 4, 2.5] * (1 + i % 7), "name": [b"q%d" % i], "s": [b"x" * (i % 50)]})
      for i in range(60)])
  write_tfrecord(str(folder / "r.tfrecord"), [make_example(
      {"id": [50 + j], "tag": [b"d%d" % j] * (1 + j % 3), "s": [b"y" * (j * 37 % 300)]}) for j in range(45)])
  prefix = tmp_path / "out" / "pairs"
  summary = cli.run(["--left", str(folder / "l.tfrecord"), "--right", str(folder / "r.tfrecord"), "--output",
                     str(prefix), "--collision", "left", "--sample_rate", "0.3", "--seed", "5", "--target_shard_mb",
                     "0.01"])
  assert summary["grid"]["cells"] == 120
  capsys.readouterr()
  assert verify.main(["--output", str(prefix)]) == 0
  assert capsys.readouterr().out.endswith(f" pairs in 120 shard(s) under {prefix}: {_EVERY}\n")


def test_a_job_whose_large_records_sit_together_is_cut_by_their_sizes(tmp_path, capsys):
  """200 small records then 40 of about 20 KB a side, a sampled grid with a 0.5 MB budget: cut at the average
  size a chunk would hold 60 records, all 40 large ones (1.6 MB a cell); the job's size profile cuts its chunks
  so that no cell holds more than UNEVEN_SLACK times the budget and a large record a side, and verify, reading
  the inputs itself, plans the same."""
  folder = tmp_path / "in"
  folder.mkdir()
  records = [make_example({"id": [i], "blob": [b"z" * (20_000 if i >= 200 else 10)]}) for i in range(240)]
  write_tfrecord(str(folder / "l.tfrecord"), records)
  write_tfrecord(str(folder / "r.tfrecord"), records)
  prefix = tmp_path / "out" / "pairs"
  flags = ["--left", str(folder / "l.tfrecord"), "--right", str(folder / "r.tfrecord"), "--output", str(prefix),
           "--collision", "prefix", "--strategy", "grid", "--sample_rate", "0.01", "--seed", "1",
           "--target_shard_mb", "0.5"]
  summary = cli.run(flags)
  sizes = [len(examples.prepare(record, "l_").payload) for record in records]
  budget = 500_000

  def worst(chunk):
    return max(sum(sizes[start:start + chunk]) for start in range(0, len(sizes), chunk))

  grid = summary["grid"]
  assert worst(60) * 2 > planning.UNEVEN_SLACK * budget  # chunks of 60, as the average gives, would not do
  # at most UNEVEN_SLACK times the budget, and a large record a side
  assert worst(grid["row_chunk"]) + worst(grid["col_chunk"]) <= planning.UNEVEN_SLACK * budget + 2 * max(sizes)
  capsys.readouterr()
  assert verify.main(["--output", str(prefix)]) == 0
  assert capsys.readouterr().out.endswith(f" shard(s) under {prefix}: {_EVERY}\n")

"""--group_by and --pairs_per_left end to end (issue 14): every run goes through ``cli.run``, its shards are read
back with TensorFlow and compared, record by record and in order, with a nested loop over the input records
(itertools within each group, groups in key order: int64 numerically, then bytes in byte order)."""

import collections
import itertools
import json
import os
import random
import re

import pytest
import tensorflow as tf

from beam_job import cli
from beam_job.errors import JobError
from beam_job.transforms import PairOptions
from tests.helpers import make_example, read_tfrecords, write_tfrecord


def _renamed(payload: bytes, prefix: str) -> tf.train.Example:
  out = tf.train.Example()
  for name, feat in tf.train.Example.FromString(payload).features.feature.items():
    out.features.feature[prefix + name].CopyFrom(feat)
  return out


def _merged(left: bytes, right: bytes, left_ordinal: int, right_ordinal: int) -> bytes:
  """The pair under --collision prefix --index_features, by TensorFlow's protobuf merge."""
  merged = tf.train.Example()
  merged.MergeFrom(_renamed(left, "left_"))
  merged.MergeFrom(_renamed(right, "right_"))
  merged.features.feature["left_index"].int64_list.value.append(left_ordinal)
  merged.features.feature["right_index"].int64_list.value.append(right_ordinal)
  return merged.features.SerializeToString(deterministic=True)


def _key(payload: bytes, name: str):
  feature = tf.train.Example.FromString(payload).features.feature[name]
  value = feature.int64_list.value[0] if feature.WhichOneof("kind") == "int64_list" else feature.bytes_list.value[0]
  return (0, value, b"") if isinstance(value, int) else (1, 0, value)  # int64 keys first, numerically


def reference(left, right=None, left_key="q", right_key="q", self_join="product"):
  """Every pair as (group number, left ordinal, right ordinal, merged features), in order: groups by key, then
  left ordinal, then right ordinal."""
  pairs = []
  lefts = collections.defaultdict(list)
  for ordinal, payload in enumerate(left):
    lefts[_key(payload, left_key)].append((ordinal, payload))
  rights = lefts
  if right is not None:
    rights = collections.defaultdict(list)
    for ordinal, payload in enumerate(right):
      rights[_key(payload, right_key)].append((ordinal, payload))
  seen = []
  for key in sorted(lefts):
    members = lefts[key]
    if right is None and self_join == "combinations":
      found = itertools.combinations(members, 2)
    else:
      found = itertools.product(members, rights.get(key, []))
    pairs.extend((len(seen), i, j, _merged(l, r, i, j)) for (i, l), (j, r) in found)
    seen.append(key)
  return pairs


def output(summary, expected) -> list:
  """The output's merged features, checked against ``expected`` (``reference``): in exactly that order when no
  group is cut; otherwise (a heavy group's cells, like a full product's, are written cell by cell, each by left
  then right ordinal) the same pairs, each shard in (group, left, right) order and groups in key order."""
  group_of = {(left, right): group for group, left, right, _ in expected}
  found, shards = [], []
  for path in summary["shards"]:
    shard = []
    for record in read_tfrecords(path):
      example = tf.train.Example.FromString(record)
      features = example.features.feature
      pair = (features["left_index"].int64_list.value[0], features["right_index"].int64_list.value[0])
      shard.append((group_of.get(pair, -1), *pair))
      found.append(example.features.SerializeToString(deterministic=True))
    shards.append(shard)
  merged = [pair[-1] for pair in expected]
  if summary["grid"]["cut_groups"] == 0:
    assert found == merged
  else:
    assert sorted(found) == sorted(merged)
    assert all(shard == sorted(shard) for shard in shards)
    groups = [group for shard in shards for group, _, _ in shard]
    assert groups == sorted(groups)
  return found


def shard_bytes(summary) -> list:
  out = []
  for path in summary["shards"]:
    with open(path, "rb") as f:
      out.append(f.read())
  return out


def run(tmp_path, name, left, right=None, *flags):
  argv = ["--left", str(left), "--output", str(tmp_path / "out" / name), "--collision", "prefix",
          "--index_features", *flags]
  if right is not None:
    argv[2:2] = ["--right", str(right)]
  return cli.run(argv)


@pytest.fixture
def data(tmp_path):
  """Left: 40 records keyed q = i % 5 (int64); right: 30 keyed q = i % 7; bytes keys under 'tag'/'label'."""
  left = [make_example({"q": [i % 5], "tag": [b"ab"[i % 2:i % 2 + 1] * (1 + i % 3)], "a": [i]}) for i in range(40)]
  right = [make_example({"q": [i % 7], "label": [b"ab"[i % 2:i % 2 + 1] * (1 + i % 2)], "b": [float(i)]})
           for i in range(30)]
  return {"left": left, "right": right, "left_path": write_tfrecord(tmp_path / "left.tfrecord", left),
          "right_path": write_tfrecord(tmp_path / "right.tfrecord", right)}


def test_two_sides_grouped_by_an_int64_key(tmp_path, data):
  summary = run(tmp_path, "int", data["left_path"], data["right_path"], "--group_by", "q")
  expected = reference(data["left"], data["right"])
  assert len(output(summary, expected)) == summary["pairs"] == len(expected)
  groups = summary["groups"]
  assert (groups["groups"], groups["groups_with_pairs"], groups["pairs"]) == (7, 5, len(expected))
  assert groups["unpaired_records"] == {"left": 0, "right": 8}  # right keys 5 and 6: 4 + 4 records
  assert summary["missing_group_records"] == 0 and summary["options"]["group_by"] == "q"


def test_two_sides_grouped_by_a_bytes_key_named_differently(tmp_path, data):
  summary = run(tmp_path, "bytes", data["left_path"], data["right_path"], "--left_group_by", "tag",
                "--right_group_by", "label", "--target_shard_mb", "0.001")
  expected = reference(data["left"], data["right"], "tag", "label")
  assert len(output(summary, expected)) == summary["pairs"] == len(expected) > 0
  assert summary["groups"]["groups_with_pairs"] == 2  # "a" and "bb" are on both sides
  assert len(summary["shards"]) > 1


def test_self_join_combinations_within_groups(tmp_path, data):
  summary = run(tmp_path, "self", data["left_path"], None, "--group_by", "q", "--self_join", "combinations",
                "--target_shard_mb", "0.0005")
  expected = reference(data["left"], self_join="combinations")
  assert len(output(summary, expected)) == summary["pairs"] == len(expected) == 5 * (8 * 7 // 2)
  assert len(summary["shards"]) > 1


def test_a_skewed_key_is_cut_into_cells(tmp_path):
  left = [make_example({"q": [b"heavy" if i % 10 else b"k%d" % i], "a": [i]}) for i in range(120)]
  right = [make_example({"q": [b"heavy" if i % 10 else b"k%d" % (i % 30)], "b": [i]}) for i in range(90)]
  left_path = write_tfrecord(tmp_path / "l.tfrecord", left)
  right_path = write_tfrecord(tmp_path / "r.tfrecord", right)
  summary = run(tmp_path, "skew", left_path, right_path, "--group_by", "q", "--target_shard_mb", "0.05")
  expected = reference(left, right)
  assert len(output(summary, expected)) == summary["pairs"] == len(expected)
  heavy = summary["groups"]["largest_groups"][0]
  assert (heavy["key"], heavy["left"], heavy["right"]) == ("heavy", 108, 81) and heavy["cells"] > 4
  assert summary["grid"]["cut_groups"] == 1 and len(summary["shards"]) >= heavy["cells"]
  again = run(tmp_path, "skew2", left_path, right_path, "--group_by", "q", "--target_shard_mb", "0.05")
  assert shard_bytes(again) == shard_bytes(summary)  # deterministic: the same bytes twice


def _missing_inputs(tmp_path):
  left = [make_example({"q": [i % 3], "a": [i]}) if i not in (2, 5) else make_example({"a": [i]})
          for i in range(8)]
  right = [make_example({"q": [i % 3], "b": [i]}) for i in range(6)]
  return left, right, write_tfrecord(tmp_path / "l.tfrecord", left), write_tfrecord(tmp_path / "r.tfrecord", right)


def test_a_missing_key_fails_naming_file_record_and_feature(tmp_path, capsys):
  _, _, left_path, right_path = _missing_inputs(tmp_path)
  rc = cli.main(["--left", left_path, "--right", right_path, "--output", str(tmp_path / "out" / "p"),
                 "--collision", "prefix", "--group_by", "q"])
  assert rc == 2
  assert capsys.readouterr().err == (f"error: left input {left_path} record 2: has no feature 'q', its group key; "
                                     "--missing_group skip leaves such records out\n")
  assert not os.path.exists(tmp_path / "out" / "p-summary.json")


def test_a_missing_key_is_skipped_counted_and_listed(tmp_path):
  left, right, left_path, right_path = _missing_inputs(tmp_path)
  summary = run(tmp_path, "skip", left_path, right_path, "--group_by", "q", "--missing_group", "skip")
  kept = [payload for i, payload in enumerate(left) if i not in (2, 5)]
  expected = reference(kept, right)
  # (ordinals number the good records: the two records left out have none)
  assert len(output(summary, expected)) == len(expected)
  assert (summary["missing_group_records"], summary["corrupt_records"], summary["left_records"]) == (2, 0, 6)
  assert [(c["record"], c["missing_group"], c["problem"]) for c in summary["corrupt"]] == [
      (2, True, "has no feature 'q', its group key"), (5, True, "has no feature 'q', its group key")]
  with open(summary["dead_letter"], encoding="utf-8") as f:
    assert [json.loads(line)["record"] for line in f] == [2, 5]


def _k_pairs(summary):
  per_left = collections.defaultdict(list)
  for record in read_tfrecords(summary["shards"]):
    features = tf.train.Example.FromString(record).features.feature
    per_left[features["left_index"].int64_list.value[0]].append(features["right_index"].int64_list.value[0])
  return per_left


@pytest.mark.parametrize("grouped", [False, True])
def test_k_per_left_record(tmp_path, data, grouped):
  by = ["--group_by", "q"] if grouped else []
  summary = run(tmp_path, "k", data["left_path"], data["right_path"], "--pairs_per_left", "3", "--seed", "5", *by,
                "--target_shard_mb", "0.002")
  per_left = _k_pairs(summary)
  right_keys = [i % 7 for i in range(30)]
  for left_ordinal in range(40):
    eligible = [j for j in range(30) if not grouped or right_keys[j] == left_ordinal % 5]
    got = per_left.get(left_ordinal, [])
    assert len(got) == min(3, len(eligible)) and len(set(got)) == len(got) and set(got) <= set(eligible)
    assert got == sorted(got)  # within a left record, right ordinals in order
  assert summary["pairs"] == 120 and len(summary["shards"]) > 1
  expected = {i: sorted(per_left[i]) for i in per_left}
  multi = run(tmp_path, "k_multi", data["left_path"], data["right_path"], "--pairs_per_left", "3", "--seed", "5", *by,
              "--target_shard_mb", "0.002", "--direct_running_mode", "multi_processing", "--direct_num_workers", "2")
  assert shard_bytes(multi) == shard_bytes(summary) and _k_pairs(multi) == expected
  other_seed = run(tmp_path, "k_seed", data["left_path"], data["right_path"], "--pairs_per_left", "3", "--seed", "6",
                   *by, "--target_shard_mb", "0.002")
  assert _k_pairs(other_seed) != per_left


def test_k_with_self_join_combinations_within_groups(tmp_path, data):
  summary = run(tmp_path, "kself", data["left_path"], None, "--pairs_per_left", "2", "--group_by", "q",
                "--self_join", "combinations")
  per_left = _k_pairs(summary)
  for i in range(40):
    eligible = [j for j in range(40) if j > i and j % 5 == i % 5]
    got = per_left.get(i, [])
    assert len(got) == min(2, len(eligible)) and set(got) <= set(eligible) and len(set(got)) == len(got)


def test_k_is_uniform_over_seeds(tmp_path):
  """One left record, 4 right records, K = 2: each of the 6 pairs of right records comes out about equally
  often over 600 seeds (a chi-square test at a significance far below any flaky rate): the draw the writer
  makes per left record (sampling.pick_in), without the job around it."""
  from beam_job import sampling
  counts = collections.Counter(tuple(sampling.pick_in(seed, 0, 2, 4, 0, 4)) for seed in range(600))
  assert set(counts) == set(itertools.combinations(range(4), 2))
  chi2 = sum((c - 100) ** 2 / 100 for c in counts.values())
  assert chi2 < 25  # 5 degrees of freedom: P(chi2 > 25) < 2e-4


def test_max_pairs_counts_grouped_pairs_and_dry_run_reports_groups(tmp_path, data, capsys):
  rc = cli.main(["--left", data["left_path"], "--right", data["right_path"], "--output", str(tmp_path / "o" / "p"),
                 "--collision", "prefix", "--group_by", "q", "--max_pairs", "100"])
  assert rc == 2
  pairs = len(reference(data["left"], data["right"]))
  assert capsys.readouterr().err == (f"error: the job would write {pairs} pairs within 5 groups, more than "
                                     "--max_pairs 100; raise --max_pairs to allow it\n")
  described = cli.run(["--left", data["left_path"], "--right", data["right_path"], "--output",
                       str(tmp_path / "o" / "p"), "--collision", "prefix", "--group_by", "q", "--dry_run"])["dry_run"]
  assert described["groups"]["pairs"] == described["pairs"] == pairs and described["strategy"] == "grouped"
  from beam_job import describe
  text = describe.to_text(described)
  assert "groups:         7 key(s) of q, 5 with pairs" in text and "largest:" in text


@pytest.mark.parametrize("kwargs, message", [
    (dict(group_by="q", left_group_by="a"), "--group_by names the group feature of both sides; --left_group_by "
     "and --right_group_by are for names that differ: give one or the other"),
    (dict(left_group_by="a"), "--left_group_by needs --right_group_by (or --group_by for one name on both sides)"),
    (dict(pairs_per_left=3, sample_rate=0.5), "--pairs_per_left and --sample_rate both choose which pairs to keep: "
     "give one of them (--pairs_per_left K keeps exactly K per left record, --sample_rate each pair by chance)"),
    (dict(pairs_per_left=0), "--pairs_per_left must be from 1 to 9,223,372,036,854,775,807, not 0"),
    (dict(group_by="q", strategy="broadcast"), "--strategy broadcast does not apply with --group_by or "
     "--pairs_per_left, whose cells are planned per group: omit it"),
    (dict(missing_group="drop"), "--missing_group must be one of fail, skip, not 'drop'"),
])
def test_flag_exclusions(kwargs, message):
  with pytest.raises(JobError) as raised:
    PairOptions(output="/tmp/never-written", **kwargs)
  assert str(raised.value) == message


def _pairs(summary) -> set:
  found = set()
  for record in read_tfrecords(summary["shards"]):
    features = tf.train.Example.FromString(record).features.feature
    found.add((features["left_index"].int64_list.value[0], features["right_index"].int64_list.value[0]))
  return found


@pytest.mark.parametrize("flags", [["--pairs_per_left", "4"], ["--sample_rate", "0.3"]], ids=["k", "sampled"])
def test_the_same_pairs_on_any_cell_grid(tmp_path, data, flags):
  """K per record and a sample within groups are decided per record (seed, ordinal, rank), not per cell."""
  runs = [run(tmp_path, f"grid{i}", data["left_path"], data["right_path"], "--group_by", "q", "--seed", "9", *flags,
              "--target_shard_mb", target) for i, target in enumerate(("256", "0.001"))]
  assert len(runs[0]["shards"]) == 1 < len(runs[1]["shards"])
  assert _pairs(runs[0]) == _pairs(runs[1])
  within = {(i, j) for _, i, j, _ in reference(data["left"], data["right"])}
  assert _pairs(runs[0]) <= within and runs[0]["pairs"] == len(_pairs(runs[0]))
  if "--sample_rate" in flags:
    assert 0.15 * len(within) < runs[0]["pairs"] < 0.45 * len(within)


def test_feature_selection_and_collision_left_within_groups(tmp_path, data):
  """The key is read before --left_features drops it; --collision left keeps the left value of 'q'."""
  summary = cli.run(["--left", data["left_path"], "--right", data["right_path"], "--output", str(tmp_path / "o" / "p"),
                     "--group_by", "q", "--collision", "left", "--left_features", "a", "--right_features", "q,b"])
  found = [dict(tf.train.Example.FromString(r).features.feature) for r in read_tfrecords(summary["shards"])]
  expected = [(l, r) for _, l, r, _ in reference(data["left"], data["right"])]
  assert len(found) == len(expected) == summary["pairs"]
  for features, (l, r) in zip(found, expected):
    assert set(features) == {"a", "q", "b"}
    assert (features["a"].int64_list.value[0], features["b"].float_list.value[0]) == (l, float(r))
    assert features["q"].int64_list.value[0] == r % 7 == l % 5


@pytest.mark.parametrize("flags", [
    ["--group_by", "q", "--target_shard_mb", "0.001"],
    ["--left_group_by", "tag", "--right_group_by", "label", "--sample_rate", "0.5"],
    ["--pairs_per_left", "3", "--target_shard_mb", "0.002"],
    ["--pairs_per_left", "2", "--group_by", "q", "--output_compression", "gzip"],
], ids=["int", "bytes-sampled", "k", "k-grouped-gzip"])
def test_verify_checks_grouped_and_k_outputs(tmp_path, data, capsys, flags):
  from beam_job import verify
  summary = run(tmp_path, "v", data["left_path"], data["right_path"], *flags)
  prefix = str(tmp_path / "out" / "v")
  capsys.readouterr()
  assert verify.main(["--output", prefix]) == 0
  said = capsys.readouterr().out
  assert said.startswith(f"verified {summary['pairs']:,} pairs in {len(summary['shards'])} shard(s)")
  assert "; every record checked against the inputs independently" in said
  # A shard whose records were swapped for another cell's: the same count, other bytes.
  shards = summary["shards"]
  victim = max(shards, key=os.path.getsize)
  with open(victim, "rb") as f:
    data_bytes = f.read()
  with open(victim, "wb") as f:
    f.write(data_bytes[:-1] + bytes([data_bytes[-1] ^ 1]))
  assert verify.main(["--output", prefix]) == 1
  assert capsys.readouterr().err.startswith("verify failed: ")


def test_verify_checks_a_self_join_within_groups_with_skipped_keys(tmp_path, capsys):
  from beam_job import verify
  left = [make_example({"q": [b"k%d" % (i % 4)], "a": [i]}) if i % 9 else make_example({"a": [i]}) for i in range(30)]
  path = write_tfrecord(tmp_path / "l.tfrecord", left)
  run(tmp_path, "vs", path, None, "--group_by", "q", "--self_join", "combinations", "--missing_group", "skip",
      "--target_shard_mb", "0.001")
  capsys.readouterr()
  assert verify.main(["--output", str(tmp_path / "out" / "vs")]) == 0, capsys.readouterr().err


def test_the_independent_k_draw_is_sampling_pick():
  """``beam_job.expected.floyd`` is written from README (Floyd's algorithm from a hash of --seed and the left
  ordinal), not from ``sampling``: equal draws on many inputs are what makes verify's K check independent."""
  from beam_job import expected, sampling
  rng = random.Random(14)
  for _ in range(5000):
    seed = rng.choice([0, -1, 42, (1 << 63) - 1, -(1 << 63), rng.randrange(-(1 << 63), 1 << 63)])
    row, k = rng.randrange(10 ** 9), rng.randrange(1, 12)
    eligible = rng.choice([0, 1, k - 1, k, k + 1, rng.randrange(40), rng.randrange(1 << 40)])
    assert expected.floyd(seed, row, k, eligible) == sampling.pick(seed, row, k, eligible)


def _skewed(tmp_path):
  left = [make_example({"q": [b"heavy" if i % 10 else b"k%d" % i], "a": [i]}) for i in range(120)]
  right = [make_example({"q": [b"heavy" if i % 10 else b"k%d" % (i % 30)], "b": [i]}) for i in range(90)]
  return write_tfrecord(tmp_path / "l.tfrecord", left), write_tfrecord(tmp_path / "r.tfrecord", right)


@pytest.mark.parametrize("case,flags", [
    ("int", ["--group_by", "q", "--target_shard_mb", "0.001"]),
    ("bytes", ["--left_group_by", "tag", "--right_group_by", "label", "--collision", "left"]),
    ("self", ["--group_by", "q", "--self_join", "combinations", "--target_shard_mb", "0.0005"]),
    ("skewed", ["--group_by", "q", "--target_shard_mb", "0.05"]),
    ("sampled", ["--group_by", "q", "--sample_rate", "0.4", "--seed", "9"]),
    ("k", ["--pairs_per_left", "3", "--seed", "5", "--target_shard_mb", "0.002"]),
    ("k-grouped", ["--pairs_per_left", "2", "--group_by", "q", "--seed", "-3"]),
    ("k-self", ["--pairs_per_left", "2", "--group_by", "q", "--self_join", "combinations_with_replacement"]),
])
def test_verify_checks_grouped_and_k_outputs_independently(tmp_path, data, capsys, case, flags):
  from beam_job import verify
  left, right = data["left_path"], data["right_path"]
  if case == "skewed":
    left, right = _skewed(tmp_path)
  summary = run(tmp_path, case, left, None if "--self_join" in flags else right, *flags)
  assert case != "skewed" or summary["grid"]["cut_groups"] == 1
  prefix = str(tmp_path / "out" / case)
  capsys.readouterr()
  assert verify.main(["--output", prefix]) == 0, capsys.readouterr().err
  assert "; every record checked against the inputs independently" in capsys.readouterr().out
  # Beyond --semantic_check_max: the first, the last and --semantic_samples more of the groups that small.
  assert verify.main(["--output", prefix, "--semantic_check_max", "35", "--semantic_samples", "1"]) == 0
  said = capsys.readouterr().out
  groups = summary["groups"]["groups_with_pairs"] if "groups" in summary else 1
  assert re.search(rf"; \d of {groups} groups \([\d,]+ records\)( and \d+ records of \d larger group\(s\) by their "
                   r"index features)? checked against the inputs independently", said), said


def test_verify_checks_records_without_index_features_independently(tmp_path, data, capsys):
  from beam_job import verify
  prefix = str(tmp_path / "plain")
  cli.run(["--left", str(data["left_path"]), "--right", str(data["right_path"]), "--output", prefix,
           "--group_by", "q", "--collision", "right", "--pairs_per_left", "4"])
  capsys.readouterr()
  assert verify.main(["--output", prefix]) == 0, capsys.readouterr().err
  assert "every record checked against the inputs independently" in capsys.readouterr().out


def test_a_record_routed_to_another_group_in_the_job_and_in_verify_alike_is_found(tmp_path, data, monkeypatch,
                                                                                  capsys):
  """Left record 3 (key 3) is given key 4 by the shared ``grouping.key_of``: the byte comparison with the job's
  writer agrees (both sides route it alike), the independent definition does not."""
  from beam_job import grouping, verify
  real = grouping.key_of

  def wrong(features, name):
    if "a" in features and features["a"].int64_list.value[0] == 3:
      return grouping.encode_key(4)
    return real(features, name)

  monkeypatch.setattr(grouping, "key_of", wrong)
  summary = run(tmp_path, "routed", data["left_path"], data["right_path"], "--group_by", "q")
  assert summary["pairs"] == 176  # the same count as without the bug: groups 3 and 4 have 4 right records each
  capsys.readouterr()
  assert verify.main(["--output", str(tmp_path / "out" / "routed")]) == 1
  first = 40 + 40 + 32  # groups 0 and 1 (8 x 5), group 2 (8 x 4)
  assert capsys.readouterr().err == (
      f"verify failed: group 3 (output records {first}..{first + 31}) lacks the pair of left {data['left_path']} "
      f"record 3 and right {data['right_path']} record 3\n")


@pytest.mark.parametrize("grouped", [False, True])
def test_a_k_draw_one_position_off_in_the_job_and_in_verify_alike_is_found(tmp_path, data, monkeypatch, capsys,
                                                                           grouped):
  from beam_job import sampling, verify
  real = sampling.pick
  monkeypatch.setattr(sampling, "pick", lambda seed, row, k, eligible: sorted(
      {(p + 1) % eligible for p in real(seed, row, k, eligible)}) if k < eligible else real(seed, row, k, eligible))
  by = ["--group_by", "q"] if grouped else []
  run(tmp_path, "off", data["left_path"], data["right_path"], "--pairs_per_left", "3", *by)
  capsys.readouterr()
  assert verify.main(["--output", str(tmp_path / "out" / "off")]) == 1
  group = "group 0" if grouped else "the one group of every record"
  assert re.fullmatch(rf"verify failed: {group} \(output records 0\.\.\d+\) lacks the pair of left "
                      rf"{re.escape(str(data['left_path']))} record 0 and right {re.escape(str(data['right_path']))} "
                      r"record \d+\n", capsys.readouterr().err)


def test_a_k_draw_off_in_a_large_group_is_found_by_its_index_features(tmp_path, data, monkeypatch, capsys):
  """Beyond --semantic_check_max a group's pairs are not listed: the records sampled from it name their pair
  (--index_features), which must be one the documented draw keeps."""
  from beam_job import sampling, verify
  real = sampling.pick
  monkeypatch.setattr(sampling, "pick", lambda seed, row, k, eligible: sorted(
      {(p + 1) % eligible for p in real(seed, row, k, eligible)}) if k < eligible else real(seed, row, k, eligible))
  run(tmp_path, "big", data["left_path"], data["right_path"], "--pairs_per_left", "3")
  capsys.readouterr()
  argv = ["--output", str(tmp_path / "out" / "big"), "--semantic_check_max", "50", "--semantic_samples", "20"]
  assert verify.main(argv) == 1
  assert re.fullmatch(r"verify failed: .+-00000-of-\d+\.tfrecord: record \d+: names left ordinal \d+ and right "
                      r"ordinal \d+, no pair of the one group of every record\n", capsys.readouterr().err)
  monkeypatch.setattr(sampling, "pick", real)
  run(tmp_path, "good", data["left_path"], data["right_path"], "--pairs_per_left", "3")
  assert verify.main(["--output", str(tmp_path / "out" / "good"), *argv[2:]]) == 0
  assert re.search(r"; 0 of 1 groups \(0 records\) and 2\d records of 1 larger group\(s\) by their index features "
                   "checked against the inputs independently", capsys.readouterr().out)


# --- keys that cannot pair anything are refused, not published as an empty output (adversarial trial) --------


def _bad_keys(tmp_path, left_values, right_values):
  left = write_tfrecord(tmp_path / "l.tfrecord", [make_example({"zip": [v], "a": [i]}) for i, v in enumerate(left_values)])
  right = write_tfrecord(tmp_path / "r.tfrecord", [make_example({"postcode": [v], "b": [i]})
                                                   for i, v in enumerate(right_values)])
  return ["--left", str(left), "--right", str(right), "--output", str(tmp_path / "out" / "p"), "--collision", "prefix"]


def test_a_misspelt_key_under_missing_group_skip_is_an_error_and_the_dry_run_lists_it(tmp_path, capsys):
  argv = _bad_keys(tmp_path, [1, 2, 3], [1, 2]) + ["--left_group_by", "zipp", "--right_group_by", "postcode",
                                                  "--missing_group", "skip"]
  problem = ("no left record holds a group key 'zipp' (3 record(s) left out, without a key or corrupt): check the "
             "name given to --group_by or --left_group_by")
  capsys.readouterr()
  assert cli.main(argv) == 2
  assert capsys.readouterr().err == f"error: {problem}\n"
  assert not os.path.exists(tmp_path / "out" / "p-summary.json")
  assert cli.main(argv + ["--dry_run"]) == 0
  assert problem in capsys.readouterr().out


def test_int64_keys_on_one_side_and_bytes_on_the_other_are_an_error(tmp_path, capsys):
  argv = _bad_keys(tmp_path, [10001, 10002], [b"10001", b"10002"]) + ["--left_group_by", "zip", "--right_group_by",
                                                                        "postcode"]
  capsys.readouterr()
  assert cli.main(argv) == 2
  assert capsys.readouterr().err == ("error: the group keys are int64 on the left ('zip') and bytes on the right "
                                     "('postcode'): int64 and bytes keys never match, so no pair would be written\n")


def test_missing_group_needs_a_group_flag_and_pairs_per_left_says_at_least_1(tmp_path, capsys):
  with pytest.raises(JobError, match=r"^--missing_group applies only with --group_by \(or --left_group_by and "
                                     r"--right_group_by\)$"):
    PairOptions(output="/tmp/never-written", missing_group="skip")
  capsys.readouterr()
  assert cli.main(_bad_keys(tmp_path, [1], [1]) + ["--pairs_per_left", "-1"]) == 2
  assert capsys.readouterr().err == "error: argument --pairs_per_left: must be at least 1, not -1\n"


def test_verify_calls_contradictory_flags_a_usage_error(tmp_path, data, capsys):
  from beam_job import verify
  summary = run(tmp_path, "k", data["left_path"], data["right_path"], "--pairs_per_left", "2")
  prefix = summary["output"]
  capsys.readouterr()
  assert verify.main(["--output", prefix, "--sample_rate", "0.5"]) == 2
  assert capsys.readouterr().err == (
      "error: --pairs_per_left and --sample_rate both choose which pairs to keep: give one of them (--pairs_per_left "
      "K keeps exactly K per left record, --sample_rate each pair by chance) (flags that differ from the summary: "
      "--sample_rate 0.5 (the run: 1.0))\n")


def test_the_dry_run_lists_records_the_real_run_would_fail_on(tmp_path, capsys):
  """A missing key under --missing_group fail and a corrupt record under --on_corrupt fail: the dry run reads on,
  lists each with the flag that leaves them out, and exits 0; the real run still fails."""
  _, _, left_path, right_path = _missing_inputs(tmp_path)
  frames = open(right_path, "rb").read()
  length = int.from_bytes(frames[:8], "little")
  damaged = frames[:12 + length] + bytes([frames[12 + length] ^ 1]) + frames[13 + length:]  # record 0's data CRC
  open(right_path, "wb").write(damaged)
  argv = ["--left", left_path, "--right", right_path, "--output", str(tmp_path / "out" / "p"), "--collision",
          "prefix", "--group_by", "q"]
  capsys.readouterr()
  assert cli.main(argv + ["--dry_run"]) == 0
  out = capsys.readouterr().out
  assert (f"problem:        2 record(s) without a group key, first {left_path} record 2: has no feature 'q', its "
          "group key; --missing_group skip leaves them out") in out
  assert (f"problem:        1 corrupt record(s), first {right_path} record 0: bad data CRC; --on_corrupt skip leaves "
          "them out") in out
  assert "the job would fail" in out
  assert "corrupt:        1 record(s) left out" in out  # the keyless records are not counted as corrupt
  assert cli.main(argv) == 2


def test_verify_names_the_first_wrong_record_of_a_grouped_shard(tmp_path, data, capsys):
  from beam_job import verify
  from tests.helpers import split_frames
  summary = run(tmp_path, "g", data["left_path"], data["right_path"], "--group_by", "q", "--target_shard_mb",
                "0.01")
  shard = summary["shards"][1]
  frames = split_frames(open(shard, "rb").read())
  assert len(frames) > 3
  open(shard, "wb").write(b"".join(frames[:2] + [frames[0]] + frames[3:]))  # record 2: a valid frame, wrong pair
  capsys.readouterr()
  assert verify.main(["--output", summary["output"]]) == 1
  assert capsys.readouterr().err == f"verify failed: {shard}: record 2 is not the expected merged pair\n"
  open(shard, "wb").write(b"".join(frames[:-1]))
  assert verify.main(["--output", summary["output"]]) == 1
  assert capsys.readouterr().err == (f"verify failed: {shard} holds {len(frames) - 1:,} records, expected "
                                     f"{len(frames):,} (records dropped or duplicated)\n")


def test_groups_that_never_meet_give_one_empty_shard_and_say_so(tmp_path, capsys):
  argv = _bad_keys(tmp_path, [1, 2], [3, 4]) + ["--left_group_by", "zip", "--right_group_by", "postcode"]
  summary = cli.run(argv)
  assert (summary["pairs"], len(summary["shards"]), summary["groups"]["shards"]) == (0, 1, 1)
  assert summary["groups"]["unpaired_records"] == {"left": 2, "right": 2}
  assert read_tfrecords(summary["shards"]) == []

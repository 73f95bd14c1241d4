"""End-to-end tests of ``python -m beam_job`` through ``beam_job.cli.main`` / ``run``.

Every successful run is read back with ``tf.data.TFRecordDataset`` and compared, as a multiset of Examples,
with a nested loop over the input records that merges each pair with ``tf.train.Example.MergeFrom`` after
renaming. Every user error is checked for its exit code, the key parts of its one-line message, the absence
of a traceback, and the absence of any shard or summary.
"""

import collections
import glob
import json
import os
import struct
import subprocess
import sys

import pytest
import tensorflow as tf

from beam_job import cli
from tests.helpers import make_example, parse, read_tfrecords, write_tfrecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
I64_MIN, I64_MAX = -2 ** 63, 2 ** 63 - 1
TINY = "0.0001"  # --target_shard_mb: 100 bytes, a pair or two per cell, so there are many cells

# --- the reference: a nested loop over the records, merged at the protobuf level --------------------------


def _renamed(payload: bytes, prefix: str) -> tf.train.Example:
  example = tf.train.Example.FromString(payload)
  out = tf.train.Example()
  for name, feat in example.features.feature.items():
    out.features.feature[prefix + name].CopyFrom(feat)
  return out


def _canon(example: tf.train.Example) -> bytes:
  """Deterministic bytes of the feature map; an absent and an empty ``features`` compare equal."""
  return example.features.SerializeToString(deterministic=True)


def _merge(left: bytes, right: bytes, collision="error", left_prefix="left_", right_prefix="right_") -> bytes:
  prefixes = (left_prefix, right_prefix) if collision == "prefix" else ("", "")
  lhs, rhs = _renamed(left, prefixes[0]), _renamed(right, prefixes[1])
  if collision in ("error", "prefix"):
    assert not set(lhs.features.feature) & set(rhs.features.feature), "the reference expects no collision"
  merged = tf.train.Example()
  # MergeFrom replaces a map value of the same name: the second message wins.
  for part in ((rhs, lhs) if collision == "left" else (lhs, rhs)):
    merged.MergeFrom(part)
  return _canon(merged)


def _ordered(files: dict) -> list:
  """Records in job order: files sorted by path, records by position."""
  return [payload for path in sorted(files) for payload in files[path]]


def _nested_loop(left: dict, right: dict = None, self_join="product", **merge) -> list:
  """The merged pairs in nested-loop order (left record, then right record)."""
  lrec = _ordered(left)
  rrec = lrec if right is None else _ordered(right)
  out = []
  for i, lpay in enumerate(lrec):
    for j, rpay in enumerate(rrec):
      if right is None and self_join == "combinations" and not j > i:
        continue
      if right is None and self_join == "combinations_with_replacement" and not j >= i:
        continue
      out.append(_merge(lpay, rpay, **merge))
  return out


def _expected(left: dict, right: dict = None, self_join="product", **merge) -> collections.Counter:
  return collections.Counter(_nested_loop(left, right, self_join, **merge))


def _read_in_order(shards) -> list:
  compression = "GZIP" if shards[0].endswith(".gz") else ""
  dataset = tf.data.TFRecordDataset(list(shards), compression_type=compression)
  return [_canon(tf.train.Example.FromString(r.numpy())) for r in dataset]


def _actual(shards) -> collections.Counter:
  return collections.Counter(_read_in_order(shards))


# --- running the job and looking at what it left --------------------------------------------------------


def _run(*argv) -> dict:
  return cli.run([str(a) for a in argv])


def _check_success(summary: dict, prefix: str, *, left: int, right: int, pairs: int, strategy: str,
                   corrupt: int = 0, compression: str = "uncompressed") -> list:
  """Checks the summary against the files on disk; returns the shard paths."""
  shards = summary["shards"]
  suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
  assert shards == [f"{prefix}-{i:05d}-of-{len(shards):05d}{suffix}" for i in range(len(shards))]
  assert (summary["left_records"], summary["right_records"], summary["pairs"], summary["corrupt_records"],
          summary["strategy"]) == (left, right, pairs, corrupt, strategy)
  assert summary["output"] == prefix
  assert summary["bytes"] == sum(os.path.getsize(s) for s in shards)
  assert len(shards) == max(1, summary["grid"]["cells"])
  with open(f"{prefix}-summary.json") as f:
    assert json.load(f) == summary
  # Nothing else under the prefix: no temporary folder, no stale shard; a dead-letter list only with corrupt
  # records, holding exactly the summary's list. (A schema sidecar, if the job writes one, is allowed.)
  folder, base = os.path.split(prefix)
  dead_letter = [base + "-corrupt.jsonl"] if corrupt else []
  names = sorted(n for n in os.listdir(folder) if n.startswith(base + "-") and n not in _SIDECARS(base))
  assert names == sorted([os.path.basename(s) for s in shards] + [base + "-summary.json"] + dead_letter)
  if corrupt:
    assert summary["dead_letter"] == f"{prefix}-corrupt.jsonl"
    with open(summary["dead_letter"]) as f:
      assert [json.loads(line) for line in f] == summary["corrupt"]
  else:
    assert "dead_letter" not in summary and summary["corrupt"] == []
  return shards


def _SIDECARS(base: str) -> set:  # pylint: disable=invalid-name
  return {base + "-schema.pbtxt"}


def _shard_bytes(summary: dict) -> list:
  prefix = summary["output"]
  out = []
  for shard in summary["shards"]:
    with open(shard, "rb") as f:
      out.append((shard[len(prefix):], f.read()))
  return out


def _no_output(prefix: str) -> None:
  assert glob.glob(glob.escape(prefix) + "-[0-9][0-9][0-9][0-9][0-9]-of-*") == []
  assert not os.path.exists(prefix + "-summary.json")
  assert not os.path.exists(prefix + "-corrupt.jsonl")
  assert glob.glob(glob.escape(prefix) + "-temp-*") == []


def _user_error(capsys, argv, prefix, *parts) -> str:
  """Runs main, expects exit code 2 and one line ``error: ...`` holding every part; returns the line."""
  capsys.readouterr()
  rc = cli.main([str(a) for a in argv])
  captured = capsys.readouterr()
  assert rc == 2, captured
  assert "Traceback" not in captured.err
  lines = [line for line in captured.err.splitlines() if line.strip()]
  assert len(lines) == 1, captured.err
  assert lines[0].startswith("error: ")
  for part in parts:
    assert part in lines[0], (part, lines[0])
  assert captured.out == ""
  _no_output(prefix)
  return lines[0]


def _frame_offsets(path: str) -> list:
  with open(path, "rb") as f:
    data = f.read()
  offsets, offset = [], 0
  while offset < len(data):
    offsets.append(offset)
    offset += 16 + struct.unpack_from("<Q", data, offset)[0]
  return offsets


def _flip_payload_byte(path: str, record: int, at: int = 3) -> int:
  """Flips one byte inside the payload of ``record``; returns the record's frame offset."""
  offset = _frame_offsets(path)[record]
  with open(path, "r+b") as f:
    f.seek(offset + 12 + at)
    byte = f.read(1)
    f.seek(offset + 12 + at)
    f.write(bytes([byte[0] ^ 0xFF]))
  return offset


# --- input data ----------------------------------------------------------------------------------------

_EMPTY_FEATURES = tf.train.Example(features=tf.train.Features()).SerializeToString()  # b"\n\x00"
assert _EMPTY_FEATURES == b"\n\x00"

LEFT_A = [
    make_example({"id": [I64_MIN], "blob": [b"\x00\xff\x80\n\r"], "score": [1.5], "\u00e9t\u00e9": [b"x"]}),
    make_example({"id": [I64_MAX, 0, -1], "blob": [bytes(range(256))]}),
    make_example({}),  # an empty Example: a zero-length record
]
LEFT_B = [
    make_example({"id": [7], "score": [-0.25, 3.0], "ints": tf.train.Feature(int64_list=tf.train.Int64List())}),
    _EMPTY_FEATURES,  # features present but empty
    make_example({"blob": [b""]}),
]
RIGHT_X = [
    make_example({"rid": [1], "tag": [b"\xde\xad\xbe\xef"]}),
    make_example({}),
]
RIGHT_Y = [
    make_example({"rid": [I64_MIN, I64_MAX], "rvec": [0.5, -0.0]}),
    make_example({"tag": [b"\xff" * 40, b""], "nokind": tf.train.Feature()}),
]


def _write(path, payloads, compression=None) -> str:
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  return write_tfrecord(str(path), payloads, compression)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Left: two uncompressed files; right: two gzip files. 6 x 4 records, no feature name on both sides."""
  root = tmp_path_factory.mktemp("inputs")
  # b is written before a, and named first in --left: the job must still order a before b.
  left = {_write(root / "left" / "b.tfrecord", LEFT_B): LEFT_B, _write(root / "left" / "a.tfrecord", LEFT_A): LEFT_A}
  right = {_write(root / "right" / "y.tfrecord.gz", RIGHT_Y, "gzip"): RIGHT_Y,
           _write(root / "right" / "x.tfrecord.gz", RIGHT_X, "gzip"): RIGHT_X}
  return {
      "root": root,
      "left": left,
      "right": right,
      "left_arg": f"{root}/left/b.tfrecord,{root}/left/a*.tfrecord",
      "right_arg": f"{root}/right/*.tfrecord.gz",
  }


# Feature names shared by both sides: id (where both have it) and x.
COLL_LEFT = [make_example({"id": [1], "x": [b"l0"], "lonly": [1.0]}), make_example({"x": [b"l1"]}),
             make_example({"id": [3]})]
COLL_RIGHT = [make_example({"id": [10], "y": [b"r0"]}), make_example({"y": [b"r1"]}),
              make_example({"id": [30], "x": [b"rx"]})]


@pytest.fixture(scope="module")
def colliding(tmp_path_factory):
  root = tmp_path_factory.mktemp("colliding")
  left = {_write(root / "l.tfrecord", COLL_LEFT): COLL_LEFT}
  right = {_write(root / "r.tfrecord", COLL_RIGHT): COLL_RIGHT}
  return {"root": root, "left": left, "right": right, "left_arg": next(iter(left)), "right_arg": next(iter(right))}


# --- products, strategies, determinism --------------------------------------------------------------------


def test_product_both_strategies_equal_nested_loop_and_repeat_byte_identically(data, tmp_path, capsys):
  expected = _expected(data["left"], data["right"])
  assert sum(expected.values()) == 24
  runs = {}
  for name, strategy in (("broadcast1", "broadcast"), ("broadcast2", "broadcast"), ("grid1", "grid"),
                         ("grid2", "grid")):
    prefix = str(tmp_path / name / "pairs")
    runs[name] = _run("--left", data["left_arg"], "--right", data["right_arg"], "--output", prefix,
                      "--strategy", strategy, "--target_shard_mb", TINY)
    shards = _check_success(runs[name], prefix, left=6, right=4, pairs=24, strategy=strategy)
    assert len(shards) > 2, "a tiny --target_shard_mb must give several cells"
    assert _actual(shards) == expected
    assert len(read_tfrecords(shards)) == 24
  assert runs["grid1"]["grid"]["rows"] > 1 and runs["grid1"]["grid"]["cols"] > 1
  # A row of the broadcast side longer than a shard is cut into column ranges too.
  assert runs["broadcast1"]["grid"]["cols"] > 1 and runs["broadcast1"]["grid"]["rows"] > 1
  # With rows that fit a shard, broadcast cells are row chunks holding every column: the nested loop's order.
  prefix = str(tmp_path / "rows" / "pairs")
  rows = _run("--left", data["left_arg"], "--right", data["right_arg"], "--output", prefix, "--strategy", "broadcast",
              "--target_shard_mb", "0.002")
  assert rows["grid"]["cols"] == 1 and rows["grid"]["rows"] > 1
  assert _read_in_order(rows["shards"]) == _nested_loop(data["left"], data["right"])
  assert _shard_bytes(runs["broadcast1"]) == _shard_bytes(runs["broadcast2"])
  assert _shard_bytes(runs["grid1"]) == _shard_bytes(runs["grid2"])

  # The default: --strategy auto picks broadcast for a small right side, one shard of 256 MB at most.
  prefix = str(tmp_path / "auto" / "pairs")
  rc = cli.main(["--left", data["left_arg"], "--right", data["right_arg"], "--output", prefix])
  out = capsys.readouterr().out
  assert rc == 0
  assert out.splitlines()[0] == f"wrote 24 pairs in 1 shard(s) under {prefix}-*"
  with open(prefix + "-summary.json") as f:
    summary = json.load(f)
  assert json.loads(out.split("\n", 1)[1]) == {k: v for k, v in summary.items() if k != "corrupt"}
  shards = _check_success(summary, prefix, left=6, right=4, pairs=24, strategy="broadcast")
  assert shards == [f"{prefix}-00000-of-00001.tfrecord"]
  assert _read_in_order(shards) == _nested_loop(data["left"], data["right"])
  expected_options = {"collision": "error", "left_prefix": "left_", "right_prefix": "right_", "self_join": "",
                      "output_compression": "uncompressed", "target_shard_mb": 256.0}
  assert {k: summary["options"][k] for k in expected_options} == expected_options


def test_values_survive_tf_parse_example(data, tmp_path):
  """int64 extremes, binary bytes and float bit patterns read back through tf.io.parse_example."""
  prefix = str(tmp_path / "pairs")
  summary = _run("--left", data["left_arg"], "--right", data["right_arg"], "--output", prefix,
                 "--strategy", "grid", "--target_shard_mb", TINY)
  records = read_tfrecords(summary["shards"])
  spec = {"id": tf.io.VarLenFeature(tf.int64), "rid": tf.io.VarLenFeature(tf.int64),
          "blob": tf.io.VarLenFeature(tf.string), "tag": tf.io.VarLenFeature(tf.string),
          "rvec": tf.io.VarLenFeature(tf.float32)}
  parsed = tf.io.parse_example(tf.constant(records), spec)
  lrec, rrec = _ordered(data["left"]), _ordered(data["right"])

  def values(payloads, name, kind, times):
    out = []
    for payload in payloads:
      feature = tf.train.Example.FromString(payload).features.feature
      if name in feature:
        out.extend(getattr(feature[name], kind).value)
    return sorted(out * times)

  assert sorted(parsed["id"].values.numpy().tolist()) == values(lrec, "id", "int64_list", len(rrec))
  assert sorted(parsed["rid"].values.numpy().tolist()) == values(rrec, "rid", "int64_list", len(lrec))
  assert parsed["id"].values.numpy().tolist().count(I64_MIN) == 4
  assert parsed["id"].values.numpy().tolist().count(I64_MAX) == 4
  assert parsed["rid"].values.numpy().tolist().count(I64_MIN) == 6
  assert sorted(parsed["blob"].values.numpy().tolist()) == values(lrec, "blob", "bytes_list", len(rrec))
  assert sorted(parsed["tag"].values.numpy().tolist()) == values(rrec, "tag", "bytes_list", len(lrec))
  rvec = parsed["rvec"].values.numpy()
  assert [struct.pack("<f", v) for v in rvec] == [struct.pack("<f", 0.5), struct.pack("<f", -0.0)] * 6


def test_output_compression_gzip(data, tmp_path):
  expected = _expected(data["left"], data["right"])
  runs = []
  for name in ("a", "b"):
    prefix = str(tmp_path / name / "pairs")
    runs.append(_run("--left", data["left_arg"], "--right", data["right_arg"], "--output", prefix,
                     "--strategy", "grid", "--target_shard_mb", TINY, "--output_compression", "gzip"))
    shards = _check_success(runs[-1], prefix, left=6, right=4, pairs=24, strategy="grid", compression="gzip")
    assert len(shards) > 2
    for shard in shards:
      with open(shard, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    dataset = tf.data.TFRecordDataset(shards, compression_type="GZIP")
    assert collections.Counter(_canon(parse(r.numpy())) for r in dataset) == expected
    assert runs[-1]["options"]["output_compression"] == "gzip"
  assert _shard_bytes(runs[0]) == _shard_bytes(runs[1])


# --- input compression ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["gzip", "zlib", "auto_suffixes", "uncompressed_despite_gz_name"])
def test_input_compression(case, tmp_path):
  left_payloads, right_payloads = COLL_LEFT, [make_example({"r": [i]}) for i in range(3)]
  if case == "gzip":  # no .gz suffix: only the flag says gzip
    files = [("l.data", "gzip"), ("r.data", "gzip")]
  elif case == "zlib":
    files = [("l.data", "zlib"), ("r.data", "zlib")]
  elif case == "auto_suffixes":
    files = [("l.tfrecord.zlib", "zlib"), ("r.tfrecord.deflate", "zlib")]
  else:
    files = [("l.tfrecord.gz", None), ("r.tfrecord.gz", None)]
  left = {_write(tmp_path / "in" / files[0][0], left_payloads, files[0][1]): left_payloads}
  right = {_write(tmp_path / "in" / files[1][0], right_payloads, files[1][1]): right_payloads}
  flag = {"gzip": "gzip", "zlib": "zlib", "auto_suffixes": "auto", "uncompressed_despite_gz_name": "uncompressed"}
  prefix = str(tmp_path / "out" / "pairs")
  summary = _run("--left", next(iter(left)), "--right", next(iter(right)), "--output", prefix,
                 "--compression", flag[case])
  shards = _check_success(summary, prefix, left=3, right=3, pairs=9, strategy="broadcast")
  assert _actual(shards) == _expected(left, right)


# --- collisions ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags,merge,collisions", [
    # Under prefix, the names that met before renaming (renamed apart, so nothing is dropped).
    ([], dict(collision="prefix"), ["id", "x"]),
    (["--left_prefix", "", "--right_prefix", "r_"], dict(collision="prefix", left_prefix="", right_prefix="r_"),
     ["id", "x"]),
    (["--left_prefix", "L.", "--right_prefix", ""], dict(collision="prefix", left_prefix="L.", right_prefix=""),
     ["id", "x"]),
    (["--collision", "left"], dict(collision="left"), ["id", "x"]),
    (["--collision", "right"], dict(collision="right"), ["id", "x"]),
], ids=["prefix_defaults", "empty_left_prefix", "empty_right_prefix", "left_wins", "right_wins"])
def test_collision_policies(colliding, tmp_path, flags, merge, collisions):
  if merge["collision"] == "prefix":
    flags = ["--collision", "prefix"] + flags
  prefix = str(tmp_path / "pairs")
  summary = _run("--left", colliding["left_arg"], "--right", colliding["right_arg"], "--output", prefix,
                 "--strategy", "grid", "--target_shard_mb", TINY, *flags)
  shards = _check_success(summary, prefix, left=3, right=3, pairs=9, strategy="grid")
  actual = _actual(shards)
  assert actual == _expected(colliding["left"], colliding["right"], **merge)
  assert summary["collisions"] == collisions
  if merge["collision"] == "prefix":
    lp, rp = merge.get("left_prefix", "left_"), merge.get("right_prefix", "right_")
    assert (summary["options"]["left_prefix"], summary["options"]["right_prefix"]) == (lp, rp)
  # Spot checks of the policy itself, independent of the reference.
  decoded = [dict(tf.train.Features.FromString(c).feature.items()) for c in actual]
  if merge["collision"] == "left":
    # Left record 0 has id=1 and x=l0; paired with right record 2 (id=30, x=rx) it keeps its own values.
    assert any(d["id"].int64_list.value == [1] and d["x"].bytes_list.value == [b"l0"] and "y" not in d
               for d in decoded)
    # Left record 1 has no id: right's id survives.
    assert any(d["x"].bytes_list.value == [b"l1"] and d["id"].int64_list.value == [10] for d in decoded)
  if merge["collision"] == "right":
    assert any(d["id"].int64_list.value == [30] and d["x"].bytes_list.value == [b"rx"]
               and d["lonly"].float_list.value == [1.0] for d in decoded)
    assert any(d["x"].bytes_list.value == [b"l0"] and d["id"].int64_list.value == [10] for d in decoded)


# --- self-joins ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,strategy,pairs", [
    (None, "broadcast", 36),
    ("product", "grid", 36),
    ("combinations", "broadcast", 15),
    ("combinations", "grid", 15),
    ("combinations_with_replacement", "grid", 21),
])
def test_self_join(data, tmp_path, mode, strategy, pairs):
  prefix = str(tmp_path / "pairs")
  flags = [] if mode is None else ["--self_join", mode]
  summary = _run("--left", data["left_arg"], "--output", prefix, "--collision", "prefix", "--strategy", strategy,
                 "--target_shard_mb", TINY, *flags)
  shards = _check_success(summary, prefix, left=6, right=6, pairs=pairs, strategy=strategy)
  assert len(shards) > 1
  expected = _expected(data["left"], None, mode or "product", collision="prefix")
  assert sum(expected.values()) == pairs
  assert _actual(shards) == expected
  assert summary["options"]["self_join"] == (mode or "product")
  if mode == "combinations":
    # Job order is a.tfrecord then b.tfrecord, so a's first record (id = -2**63) is never on the right and
    # b's last record ({blob: [b""]}) never on the left.
    for canon in _actual(shards):
      features = tf.train.Features.FromString(canon).feature
      assert "right_id" not in features or list(features["right_id"].int64_list.value) != [I64_MIN]
      assert "left_blob" not in features or list(features["left_blob"].bytes_list.value) != [b""]


def test_self_join_collision_left_without_prefix(colliding, tmp_path):
  prefix = str(tmp_path / "pairs")
  summary = _run("--left", colliding["left_arg"], "--output", prefix, "--collision", "left",
                 "--self_join", "combinations_with_replacement", "--strategy", "grid", "--target_shard_mb", TINY)
  shards = _check_success(summary, prefix, left=3, right=3, pairs=6, strategy="grid")
  assert _actual(shards) == _expected(colliding["left"], None, "combinations_with_replacement", collision="left")
  assert summary["collisions"] == ["id", "lonly", "x"]


# --- corrupt input under --on_corrupt skip -------------------------------------------------------------------


def test_skip_data_crc_error(data, tmp_path):
  bad = str(tmp_path / "in" / "a.tfrecord")
  _write(bad, LEFT_A)
  offset = _flip_payload_byte(bad, 1)
  left = {bad: [LEFT_A[0], LEFT_A[2]]}
  for strategy in ("broadcast", "grid"):
    prefix = str(tmp_path / strategy / "pairs")
    summary = _run("--left", bad, "--right", data["right_arg"], "--output", prefix, "--on_corrupt", "skip",
                   "--strategy", strategy, "--target_shard_mb", TINY)
    shards = _check_success(summary, prefix, left=2, right=4, pairs=8, strategy=strategy, corrupt=1)
    assert summary["corrupt"] == [{"file": bad, "record": 1, "offset": offset, "problem": "bad data CRC",
                                   "rest_of_file_lost": False}]
    assert _actual(shards) == _expected(left, data["right"])


def test_skip_in_self_join_counts_each_bad_record_once_and_keeps_order(tmp_path):
  """A bad frame in the first file and a non-Example payload in the second: combinations over the rest."""
  first = [make_example({"n": [i]}) for i in range(4)]
  second = [make_example({"n": [10 + i]}) for i in range(3)]
  path1 = _write(tmp_path / "in" / "1.tfrecord", first)
  offset = _flip_payload_byte(path1, 0, at=1)
  path2 = _write(tmp_path / "in" / "2.tfrecord", second[:1] + [b"\xff\xff\xff\xff"] + second[1:])
  left = {path1: first[1:], path2: second}
  prefix = str(tmp_path / "out" / "pairs")
  summary = _run("--left", str(tmp_path / "in" / "*.tfrecord"), "--output", prefix, "--on_corrupt", "skip",
                 "--self_join", "combinations", "--collision", "prefix", "--strategy", "grid",
                 "--target_shard_mb", TINY)
  shards = _check_success(summary, prefix, left=6, right=6, pairs=15, strategy="grid", corrupt=2)
  assert [(c["file"], c["record"], c["offset"], c["rest_of_file_lost"]) for c in summary["corrupt"]] == [
      (path1, 0, offset, False), (path2, 1, _frame_offsets(path2)[1], False)]
  assert summary["corrupt"][0]["problem"] == "bad data CRC"
  assert summary["corrupt"][1]["problem"].startswith("payload is not a tf.train.Example")
  assert _actual(shards) == _expected(left, None, "combinations", collision="prefix")


def test_skip_truncated_file_loses_the_rest(data, tmp_path):
  path = _write(tmp_path / "in" / "t.tfrecord", LEFT_A + LEFT_B)
  offsets = _frame_offsets(path)
  with open(path, "r+b") as f:
    f.truncate(offsets[4] + 14)  # record 4 is cut inside its payload
  prefix = str(tmp_path / "out" / "pairs")
  summary = _run("--left", path, "--right", data["right_arg"], "--output", prefix, "--on_corrupt", "skip")
  shards = _check_success(summary, prefix, left=4, right=4, pairs=16, strategy="broadcast", corrupt=1)
  corrupt = summary["corrupt"]
  assert [(c["file"], c["record"], c["offset"], c["rest_of_file_lost"]) for c in corrupt] == [
      (path, 4, offsets[4], True)]
  assert "record claims" in corrupt[0]["problem"]
  assert _actual(shards) == _expected({path: (LEFT_A + LEFT_B)[:4]}, data["right"])


def test_skip_truncated_gzip_keeps_a_prefix_of_the_records(tmp_path):
  payloads = [make_example({"n": [i], "pad": [bytes([i]) * 300]}) for i in range(40)]
  path = _write(tmp_path / "in" / "t.tfrecord.gz", payloads, "gzip")
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)
  right = {_write(tmp_path / "in" / "r.tfrecord", COLL_RIGHT): COLL_RIGHT}
  prefix = str(tmp_path / "out" / "pairs")
  summary = _run("--left", path, "--right", next(iter(right)), "--output", prefix, "--on_corrupt", "skip",
                 "--collision", "right")
  kept = summary["left_records"]
  assert 0 <= kept < 40
  shards = _check_success(summary, prefix, left=kept, right=3, pairs=3 * kept, strategy="broadcast", corrupt=1)
  (corrupt,) = summary["corrupt"]
  assert (corrupt["file"], corrupt["record"], corrupt["rest_of_file_lost"]) == (path, kept, True)
  assert corrupt["problem"].startswith("cannot decompress gzip data")
  assert _actual(shards) == _expected({path: payloads[:kept]}, right, collision="right")


# --- limits, overwrite, empty output -----------------------------------------------------------------------


def test_max_pairs_equal_to_the_pair_count_is_allowed(data, tmp_path):
  prefix = str(tmp_path / "pairs")
  summary = _run("--left", data["left_arg"], "--output", prefix, "--self_join", "combinations",
                 "--collision", "prefix", "--max_pairs", "15")
  shards = _check_success(summary, prefix, left=6, right=6, pairs=15, strategy="broadcast")
  assert _actual(shards) == _expected(data["left"], None, "combinations", collision="prefix")


def test_overwrite(data, tmp_path, capsys):
  prefix = str(tmp_path / "pairs")
  args = ["--left", data["left_arg"], "--right", data["right_arg"], "--output", prefix]
  first = _run(*args, "--strategy", "grid", "--target_shard_mb", TINY)
  old_files = sorted(glob.glob(prefix + "-*"))
  old_bytes = [open(p, "rb").read() for p in old_files]
  assert len(first["shards"]) > 2

  # Again without --overwrite: refused before anything is read or written; the earlier run is untouched.
  capsys.readouterr()
  rc = cli.main(args)
  err = capsys.readouterr().err
  assert rc == 2
  assert "Traceback" not in err
  (line,) = [line for line in err.splitlines() if line.strip()]
  assert line == (f"error: output prefix {prefix!r} already holds {len(old_files)} file(s) of an earlier run "
                   f"(e.g. {old_files[0]}); pass --overwrite to replace them")
  assert sorted(glob.glob(prefix + "-*")) == old_files
  assert [open(p, "rb").read() for p in old_files] == old_bytes

  # With --overwrite, fewer shards: the earlier shards are all gone.
  second = _run(*args, "--overwrite")
  shards = _check_success(second, prefix, left=6, right=4, pairs=24, strategy="broadcast")
  assert shards == [f"{prefix}-00000-of-00001.tfrecord"]
  assert _actual(shards) == _expected(data["left"], data["right"])


def test_overwrite_removes_an_earlier_dead_letter_list(data, tmp_path):
  bad = _write(tmp_path / "in" / "bad.tfrecord", LEFT_A)
  _flip_payload_byte(bad, 1)
  prefix = str(tmp_path / "out" / "pairs")
  first = _run("--left", bad, "--right", data["right_arg"], "--output", prefix, "--on_corrupt", "skip")
  _check_success(first, prefix, left=2, right=4, pairs=8, strategy="broadcast", corrupt=1)
  second = _run("--left", data["left_arg"], "--right", data["right_arg"], "--output", prefix, "--overwrite",
                "--strategy", "grid", "--target_shard_mb", TINY)
  shards = _check_success(second, prefix, left=6, right=4, pairs=24, strategy="grid")  # no corrupt.jsonl left
  assert _actual(shards) == _expected(data["left"], data["right"])


def test_failed_overwrite_leaves_the_earlier_output_untouched(data, colliding, tmp_path, capsys):
  prefix = str(tmp_path / "pairs")
  first = _run("--left", data["left_arg"], "--right", data["right_arg"], "--output", prefix, "--strategy", "grid",
               "--target_shard_mb", TINY)
  before = {p: open(p, "rb").read() for p in glob.glob(prefix + "-*")}
  capsys.readouterr()
  rc = cli.main(["--left", colliding["left_arg"], "--right", colliding["right_arg"], "--output", prefix,
                 "--overwrite"])
  err = capsys.readouterr().err
  assert rc == 2 and err.startswith("error: 2 feature name(s) exist on both sides: 'id', 'x'")
  assert {p: open(p, "rb").read() for p in glob.glob(prefix + "-*")} == before
  assert _actual(first["shards"]) == _expected(data["left"], data["right"])


def test_no_pairs_still_writes_one_empty_shard(data, tmp_path):
  empty = _write(tmp_path / "in" / "empty.tfrecord", [])
  prefix = str(tmp_path / "out" / "pairs")
  summary = _run("--left", data["left_arg"], "--right", empty, "--output", prefix, "--max_pairs", "0")
  shards = _check_success(summary, prefix, left=6, right=0, pairs=0, strategy="broadcast")
  assert shards == [f"{prefix}-00000-of-00001.tfrecord"]
  assert os.path.getsize(shards[0]) == 0
  assert summary["bytes"] == 0


# --- user errors -------------------------------------------------------------------------------------------


def test_error_left_pattern_matches_nothing(data, tmp_path, capsys):
  pattern = str(tmp_path / "nothing" / "*.tfrecord")
  prefix = str(tmp_path / "out" / "pairs")
  _user_error(capsys, ["--left", pattern, "--right", data["right_arg"], "--output", prefix], prefix,
              f"--left pattern {pattern!r} matches no file")


def test_error_one_of_several_right_patterns_matches_nothing(data, tmp_path, capsys):
  missing = str(tmp_path / "missing.tfrecord")
  prefix = str(tmp_path / "out" / "pairs")
  _user_error(capsys, ["--left", data["left_arg"], "--right", f"{data['right_arg']}, {missing}", "--output",
                       prefix], prefix, f"--right pattern {missing!r} matches no file")


def test_error_collision(colliding, tmp_path, capsys):
  prefix = str(tmp_path / "pairs")
  line = _user_error(capsys, ["--left", colliding["left_arg"], "--right", colliding["right_arg"], "--output",
                              prefix], prefix, "2 feature name(s) exist on both sides: 'id', 'x'", "--collision")
  assert "'y'" not in line and "'lonly'" not in line


def test_error_self_join_collides_on_every_name(colliding, tmp_path, capsys):
  prefix = str(tmp_path / "pairs")
  _user_error(capsys, ["--left", colliding["left_arg"], "--output", prefix], prefix,
              "3 feature name(s) exist on both sides: 'id', 'lonly', 'x'", "--collision")


def test_error_prefix_still_colliding(colliding, tmp_path, capsys):
  prefix = str(tmp_path / "pairs")
  _user_error(capsys, ["--left", colliding["left_arg"], "--right", colliding["right_arg"], "--output", prefix,
                       "--collision", "prefix", "--left_prefix", "p_", "--right_prefix", "p_"], prefix,
              "still collide", "--left_prefix 'p_'", "--right_prefix 'p_'", "'p_id', 'p_x'")


def test_error_prefix_still_colliding_with_an_empty_prefix(tmp_path, capsys):
  left = _write(tmp_path / "in" / "l.tfrecord", [make_example({"r_y": [1], "a": [2]})])
  right = _write(tmp_path / "in" / "r.tfrecord", [make_example({"y": [3], "a": [4]})])
  prefix = str(tmp_path / "out" / "pairs")
  line = _user_error(capsys, ["--left", left, "--right", right, "--output", prefix, "--collision", "prefix",
                              "--left_prefix", "", "--right_prefix", "r_"], prefix,
                     "still collide", "--left_prefix ''", "--right_prefix 'r_'", "'r_y'")
  assert "'a'" not in line and "'r_a'" not in line


def test_error_max_pairs(data, tmp_path, capsys):
  prefix = str(tmp_path / "pairs")
  _user_error(capsys, ["--left", data["left_arg"], "--right", data["right_arg"], "--output", prefix,
                       "--max_pairs", "23"], prefix,
              "the job would write 24 pairs (6 x 4 records), more than --max_pairs 23")


def test_error_max_pairs_counts_the_self_join_mode(data, tmp_path, capsys):
  prefix = str(tmp_path / "pairs")
  _user_error(capsys, ["--left", data["left_arg"], "--output", prefix, "--self_join", "combinations_with_replacement",
                       "--collision", "prefix", "--max_pairs", "20"], prefix,
              "would write 21 pairs", "--max_pairs 20")


def test_error_self_join_with_right(data, tmp_path, capsys):
  prefix = str(tmp_path / "pairs")
  _user_error(capsys, ["--left", data["left_arg"], "--right", data["right_arg"], "--output", prefix,
                       "--self_join", "combinations"], prefix, "--self_join applies only when --right is omitted")


def test_error_corrupt_record(data, tmp_path, capsys):
  bad = _write(tmp_path / "in" / "a.tfrecord", LEFT_A)
  offset = _flip_payload_byte(bad, 1)
  prefix = str(tmp_path / "out" / "pairs")
  line = _user_error(capsys, ["--left", bad, "--right", data["right_arg"], "--output", prefix], prefix,
                     f"{bad}: record 1 (byte {offset}): bad data CRC", "--on_corrupt skip")
  assert line == f"error: corrupt input {bad}: record 1 (byte {offset}): bad data CRC (--on_corrupt skip leaves it out)"


def test_error_payload_not_an_example(data, tmp_path, capsys):
  right = _write(tmp_path / "in" / "r.tfrecord", RIGHT_X + [b"\xff\xff\xff\xff"])
  prefix = str(tmp_path / "out" / "pairs")
  _user_error(capsys, ["--left", data["left_arg"], "--right", right, "--output", prefix], prefix,
              f"corrupt input {right}: record 2 (byte {_frame_offsets(right)[2]}): payload is not a tf.train.Example",
              "--on_corrupt skip")


def test_error_compressed_file_read_as_uncompressed(data, tmp_path, capsys):
  gz = _write(tmp_path / "in" / "l.tfrecord", LEFT_A, "gzip")  # gzip bytes, no .gz suffix
  prefix = str(tmp_path / "out" / "pairs")
  _user_error(capsys, ["--left", gz, "--right", data["right_arg"], "--output", prefix], prefix,
              f"corrupt input {gz}: record 0 (byte 0): bad length CRC", "set --compression")


def test_error_truncated_gzip(data, tmp_path, capsys):
  gz = _write(tmp_path / "in" / "l.tfrecord.gz", LEFT_A, "gzip")
  with open(gz, "r+b") as f:
    f.truncate(os.path.getsize(gz) - 6)
  prefix = str(tmp_path / "out" / "pairs")
  _user_error(capsys, ["--left", gz, "--right", data["right_arg"], "--output", prefix], prefix,
              f"corrupt input {gz}: record ", "cannot decompress gzip data",
              "the rest of the file cannot be read")


def test_error_output_inside_input_pattern(data, tmp_path, capsys):
  folder = tmp_path / "in"
  _write(folder / "l.tfrecord", LEFT_A)
  pattern = f"{folder}/*.tfrecord"
  prefix = f"{folder}/pairs"
  _user_error(capsys, ["--left", pattern, "--right", data["right_arg"], "--output", prefix], prefix,
              f"--output {prefix!r} falls inside input pattern {pattern!r}")
  assert os.listdir(folder) == ["l.tfrecord"]


def test_error_output_is_prefix_of_input_files(data, tmp_path, capsys):
  path = _write(tmp_path / "pairs-old.tfrecord", LEFT_A)
  prefix = str(tmp_path / "pairs")
  _user_error(capsys, ["--left", path, "--right", data["right_arg"], "--output", prefix], prefix,
              f"--output {prefix!r} is the prefix of input files")


@pytest.mark.parametrize("flags,message", [
    (["--collision", "bogus"], "argument --collision: invalid choice: 'bogus'"),
    (["--strategy", "fast"], "argument --strategy: invalid choice: 'fast'"),
    (["--self_join", "pairs"], "argument --self_join: invalid choice: 'pairs'"),
    (["--compression", "bz2"], "argument --compression: invalid choice: 'bz2'"),
    (["--output_compression", "zlib"], "argument --output_compression: invalid choice: 'zlib'"),
    (["--on_corrupt", "ignore"], "argument --on_corrupt: invalid choice: 'ignore'"),
    (["--target_shard_mb", "0"], "argument --target_shard_mb: must be positive, not 0"),
    (["--target_shard_mb", "-1"], "argument --target_shard_mb: must be positive, not -1"),
    (["--max_pairs", "-1"], "argument --max_pairs: must be at least 0, not -1"),
    (["--max_pairs", "many"],
     "argument --max_pairs: must be a whole number (1000000, 1_000_000, 1,000,000 or 1e6), not many"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_error_bad_flag_values(data, tmp_path, capsys, flags, message):
  prefix = str(tmp_path / "pairs")
  _user_error(capsys, ["--left", data["left_arg"], "--right", data["right_arg"], "--output", prefix, *flags],
              prefix, message)


def test_error_missing_output(data, tmp_path, capsys):
  capsys.readouterr()
  assert cli.main(["--left", data["left_arg"]]) == 2
  err = capsys.readouterr().err
  assert err == "error: the following arguments are required: --output\n"


# --- bugs found while writing these tests (each test states the expected behaviour) --------------------------


def test_infinite_target_shard_mb_is_a_user_error(data, tmp_path, capsys):
  """BUG: ``--target_shard_mb inf`` passes ``cli._positive_float`` and ``PairOptions.__post_init__`` (both only
  test ``> 0``); ``PairOptions.plan_options`` then does ``int(target_shard_mb * 1_000_000)`` while the pipeline
  is built, which raises OverflowError, not a JobError: main re-raises it with a traceback."""
  prefix = str(tmp_path / "pairs")
  argv = ["--left", data["left_arg"], "--right", data["right_arg"], "--output", prefix, "--target_shard_mb", "inf"]
  try:
    rc = cli.main(argv)
  except OverflowError as e:
    pytest.fail(f"--target_shard_mb inf escapes main as {e!r} (a traceback) instead of a one-line user error")
  err = capsys.readouterr().err
  assert rc == 2
  assert err.startswith("error: ") and "--target_shard_mb" in err
  _no_output(prefix)


def test_empty_pattern_list_is_a_user_error(data, tmp_path, capsys):
  """BUG: ``--left ,`` (or ``--left ' '``) splits into no pattern at all; ``match_files`` then checks nothing
  and the job succeeds with 0 left records, writing an empty shard and a summary."""
  prefix = str(tmp_path / "pairs")
  capsys.readouterr()
  rc = cli.main(["--left", ",", "--right", data["right_arg"], "--output", prefix])
  err = capsys.readouterr().err
  assert rc == 2, "an empty --left must be refused, not run as an empty dataset"
  assert err.startswith("error: ") and "--left" in err
  _no_output(prefix)


def test_output_in_a_subfolder_of_an_input_glob_is_allowed(data, tmp_path):
  """BUG: ``_check_output`` tests the output names with ``fnmatch``, whose ``*`` also matches ``/``; Beam's
  ``*`` does not (``[^/\\\\]*``). So ``--left 'in/*.tfrecord' --output in/sub/pairs`` is refused although
  ``in/*.tfrecord`` can never match ``in/sub/pairs-00000-of-00001.tfrecord``."""
  folder = tmp_path / "in"
  left = {_write(folder / "l.tfrecord", LEFT_A): LEFT_A}
  prefix = f"{folder}/sub/pairs"
  os.makedirs(folder / "sub")
  summary = _run("--left", f"{folder}/*.tfrecord", "--right", data["right_arg"], "--output", prefix)
  shards = _check_success(summary, prefix, left=3, right=4, pairs=12, strategy="broadcast")
  assert _actual(shards) == _expected(left, data["right"])


_IN_PIPELINE_ERRORS = ["collision", "corrupt", "max_pairs"]


@pytest.mark.parametrize("case", ["pattern"] + _IN_PIPELINE_ERRORS)
def test_command_line_user_error_is_one_line_without_traceback(case, colliding, tmp_path):
  """``python -m beam_job`` as a user runs it: stderr is exactly the one ``error:`` line. Beam logs a failing
  DoFn's exception, traceback included, before re-raising it; main must keep that log record off stderr for a
  user error. (Under pytest the root logger already has handlers, so the in-process capsys tests above cannot
  see this.) Failed up to commit 12a61b9; fixed for this runner by a logging filter (commit 841a852; now ``quiet._UserErrors``)."""
  prefix = str(tmp_path / "out" / "pairs")
  args = ["--left", colliding["left_arg"], "--right", colliding["right_arg"], "--output", prefix]
  if case == "pattern":
    missing = str(tmp_path / "none*.tfrecord")
    args[1], expected = missing, f"error: --left pattern {missing!r} matches no file"
  elif case == "collision":
    expected = ("error: 2 feature name(s) exist on both sides: 'id', 'x'; choose how to merge them with "
                "--collision prefix|left|right")
  elif case == "corrupt":
    bad = _write(tmp_path / "in" / "bad.tfrecord", COLL_LEFT)
    offset = _flip_payload_byte(bad, 1, at=2)
    args[1] = bad
    expected = f"error: corrupt input {bad}: record 1 (byte {offset}): bad data CRC (--on_corrupt skip leaves it out)"
  else:
    args += ["--collision", "prefix", "--max_pairs", "8"]
    expected = "error: the job would write 9 pairs (3 x 3 records), more than --max_pairs 8; raise --max_pairs to allow it"
  proc = subprocess.run([sys.executable, "-m", "beam_job", *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=180)
  assert proc.returncode == 2, proc.stderr
  assert proc.stdout == ""
  _no_output(prefix)
  assert proc.stderr.rstrip("\n").splitlines()[-1] == expected
  assert "Traceback" not in proc.stderr, f"stderr has a traceback:\n{proc.stderr[:3000]}"
  assert [line for line in proc.stderr.splitlines() if line.strip()] == [expected]


def test_relative_glob_without_a_folder_matches_files_in_the_current_folder(data, tmp_path, monkeypatch):
  """BUG: a pattern with no folder part, e.g. ``--left '*.tfrecord'`` run from the data folder, is reported as
  "matches no file" although files match: ``sources.match_files`` hands it to Beam's LocalFileSystem, which
  lists the folder of the text before the first glob character -- '' here -- and ``os.walk('')`` yields
  nothing. ``./*.tfrecord`` and a plain file name work."""
  folder = tmp_path / "in"
  left = {"./l.tfrecord": LEFT_A}
  _write(folder / "l.tfrecord", LEFT_A)
  monkeypatch.chdir(folder)
  prefix = str(tmp_path / "out" / "pairs")
  summary = _run("--left", "*.tfrecord", "--right", data["right_arg"], "--output", prefix)
  shards = _check_success(summary, prefix, left=3, right=4, pairs=12, strategy="broadcast")
  assert _actual(shards) == _expected(left, data["right"])


@pytest.mark.parametrize("spelling", ["dot_slash_pattern", "absolute_pattern_relative_output"])
def test_output_inside_input_pattern_is_refused_however_paths_are_spelled(data, tmp_path, monkeypatch, capsys,
                                                                         spelling):
  """BUG: ``_check_output`` compares the output names and the patterns as raw strings. ``--left './*.tfrecord'
  --output pairs`` (or an absolute pattern with a relative --output) is accepted although the shards land in
  the input folder and match the pattern; a rerun with --overwrite then reads the earlier run's shards as
  left records (its ``path.startswith(output + '-')`` check misses './pairs-...' as well)."""
  folder = tmp_path / "in"
  _write(folder / "l.tfrecord", LEFT_A)
  monkeypatch.chdir(folder)
  pattern = "./*.tfrecord" if spelling == "dot_slash_pattern" else f"{folder}/*.tfrecord"
  capsys.readouterr()
  rc = cli.main(["--left", pattern, "--right", data["right_arg"], "--output", "pairs"])
  err = capsys.readouterr().err
  assert rc == 2, f"the shards would be written as {folder}/pairs-00000-of-00001.tfrecord, matched by {pattern!r}"
  assert "falls inside input pattern" in err
  _no_output(str(folder / "pairs"))

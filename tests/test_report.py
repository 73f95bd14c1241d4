"""beam_job.report: the few lines ``make demo`` prints about a finished run."""

from beam_job import cli, report
from tests.helpers import make_example, write_tfrecord


def test_report_names_pairs_bytes_shards_and_where_everything_is(tmp_path, capsys):
  left, right = str(tmp_path / "l.tfrecord"), str(tmp_path / "r.tfrecord")
  write_tfrecord(left, [make_example({"a": [i]}) for i in range(4)] + [b"\x10\x01"])
  write_tfrecord(right, [make_example({"b": [j]}) for j in range(3)])
  prefix = str(tmp_path / "out" / "pairs")
  summary = cli.run(["--left", left, "--right", right, "--output", prefix, "--on_corrupt", "skip",
                     "--strategy", "grid", "--target_shard_mb", "0.0002"])
  count = len(summary["shards"])
  assert count > 1
  capsys.readouterr()
  assert report.main([prefix]) == 0
  assert capsys.readouterr().out.splitlines() == [
      "pairs:    12 (4 left x 3 right records, 1 corrupt left out)",
      f"bytes:    {summary['bytes']:,} in {count} shard(s)",
      f"shards:   {prefix}-00000-of-{count:05d}.tfrecord ... {prefix}-{count - 1:05d}-of-{count:05d}.tfrecord",
      f"schema:   {prefix}-schema.pbtxt",
      f"corrupt:  {prefix}-corrupt.jsonl",
      f"summary:  {prefix}-summary.json",
  ]


def test_report_without_a_finished_run_is_one_line(tmp_path, capsys):
  assert report.main([str(tmp_path / "nothing")]) == 1
  assert capsys.readouterr().err == (f"error: no finished run under {tmp_path}/nothing ({tmp_path}/nothing-summary.json "
                                     "is missing)\n")


def test_report_of_a_summary_missing_a_field_is_one_line(tmp_path, capsys):
  prefix = str(tmp_path / "pairs")
  open(f"{prefix}-summary.json", "w").write('{"pairs": 1}')
  assert report.main([prefix]) == 1
  assert capsys.readouterr().err == (f"error: {prefix}-summary.json is not a summary of this job (field 'shards' "
                                     "missing or malformed)\n")

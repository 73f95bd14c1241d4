"""End-to-end record accounting: a record lost (or repeated) between any two stages fails the job, naming the
stage and the numbers, and nothing is published; the real TFX data gives identical bytes and exact counts on
every local runner mode, several runs at once."""

import json
import os
import subprocess
import sys

import pytest

from beam_job import cli, outputs
from beam_job.stages import prepare, write
from tests.helpers import make_example, write_tfrecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.join(os.path.dirname(ROOT), "shared", "realdata")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  folder = tmp_path_factory.mktemp("small")
  write_tfrecord(str(folder / "left.tfrecord"), [make_example({"a": [i]}) for i in range(6)])
  write_tfrecord(str(folder / "right.tfrecord"), [make_example({"b": [float(j)]}) for j in range(4)])
  return ["--left", str(folder / "left.tfrecord"), "--right", str(folder / "right.tfrecord")]


def _fails_unpublished(argv, prefix, message):
  with pytest.raises(Exception, match=message):
    cli.run(argv + ["--output", str(prefix)])
  assert os.listdir(prefix.parent) == []  # nothing published, and the failed run cleaned up after itself


def _dropping(function, drop):
  """``function`` with the elements ``drop`` picks silently left out: a runner bug between two stages."""
  def wrapper(self, element, *args, **kwargs):
    if drop(element):
      return iter(())
    return function(self, element, *args, **kwargs)
  return wrapper


def test_a_record_lost_between_reading_and_preparing_fails_naming_the_stage(small, tmp_path, monkeypatch):
  last = lambda element: element[1] == 5 and element[0].endswith("left.tfrecord")  # noqa: E731
  monkeypatch.setattr(prepare._PrepareFn, "process", _dropping(prepare._PrepareFn.process, last))
  _fails_unpublished(small, tmp_path / "out" / "p",
                     r"record accounting, left side: 6 read, 5 good \+ 0 corrupt in the plan")


def test_a_record_lost_before_the_side_stats_fails_naming_the_stage(small, tmp_path, monkeypatch):
  add = prepare._Tally.add

  def losing(self, source, index, prepared):
    if not (source.endswith("right.tfrecord") and index == 3):
      add(self, source, index, prepared)

  monkeypatch.setattr(prepare._Tally, "add", losing)
  # Caught where it first shows: the record the plan does not know is routed.
  for strategy in ("grid", "broadcast"):
    _fails_unpublished(small + ["--strategy", strategy], tmp_path / strategy / "p",
                       r"record accounting, right side: \S+right.tfrecord record 3 has ordinal 3, the plan has 3 "
                       r"record\(s\); the runner lost or duplicated records before planning")


@pytest.mark.parametrize("flags", [["--strategy", "grid", "--target_shard_mb", "0.0004"],
                                   ["--strategy", "broadcast"],
                                   ["--strategy", "grid", "--sample_rate", "0.5", "--seed", "3"]],
                         ids=["grid", "broadcast", "sampled"])
def test_a_record_lost_on_its_way_to_a_cell_fails_naming_the_cell(small, tmp_path, monkeypatch, flags):
  route = write._to_cells

  def losing(element, side, plan, index_name):
    routed = list(route(element, side, plan, index_name))
    return routed[1:] if side == 0 and element[1] == 2 else routed  # left record 2 misses its first cell

  monkeypatch.setattr(write, "_to_cells", losing)
  _fails_unpublished(small + flags, tmp_path / "out" / "p",
                     r"record accounting: cell \(\d+, 0\) received \d+ left record\(s\) \(distinct \d+\), the "
                     r"plan routes \d+ to it")


def test_a_record_repeated_on_its_way_to_a_cell_fails(small, tmp_path, monkeypatch):
  route = write._to_cells

  def repeating(element, side, plan, index_name):
    routed = list(route(element, side, plan, index_name))
    return routed + routed[:1] if side == 1 and element[1] == 0 else routed

  monkeypatch.setattr(write, "_to_cells", repeating)
  _fails_unpublished(small + ["--strategy", "grid"], tmp_path / "out" / "p",
                     r"cell \(0, 0\) received 5 right record\(s\) \(distinct 4\), the plan routes 4")


@pytest.mark.parametrize("change, message", [
    ("lose", r"the broadcast side received 3 right record\(s\), the plan has 4"),
    ("repeat", r"the broadcast side received right record 1 twice")])
def test_a_broadcast_record_lost_or_repeated_fails(small, tmp_path, monkeypatch, change, message):
  route = write._RouteFn._route

  def changed(self, element, sides, plan):
    source, index, _ = element
    if source.endswith("right.tfrecord") and index == 1:
      if change == "lose":
        return
      yield from route(self, element, sides, plan)
    yield from route(self, element, sides, plan)

  monkeypatch.setattr(write._RouteFn, "_route", changed)
  _fails_unpublished(small + ["--strategy", "broadcast"], tmp_path / "out" / "p", message)


def test_the_checks_pass_untouched_and_count_corrupt_records_once(tmp_path):
  left = str(tmp_path / "left.tfrecord")
  write_tfrecord(left, [make_example({"a": [i]}) for i in range(3)] + [b"\x10\x01"] + [make_example({"a": [9]})])
  summary = cli.run(["--left", left, "--self_join", "combinations", "--on_corrupt", "skip", "--collision", "prefix",
                     "--output", str(tmp_path / "p")])
  assert (summary["left_records"], summary["corrupt_records"], summary["pairs"]) == (4, 1, 6)


# Real data on every local runner mode, several at once --------------------------------------------------------

MODES = {"in_memory": [], "multi_processing": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]}


def test_real_data_gives_the_same_bytes_and_exact_counts_on_every_mode_several_at_once(tmp_path):
  left = os.path.join(REAL, "taxi_external", "data_tfrecord-00001-of-00002.gz")  # 5,012 records
  right = os.path.join(REAL, "penguin_eval", "data_tfrecord-00000-of-00001.gz")  # 100 records
  base = ["--left", left, "--right", right, "--collision", "prefix", "--strategy", "grid", "--target_shard_mb",
          "0.05", "--sample_rate", "0.01", "--seed", "11", "--index_features"]
  runs = {}
  for name, flags in [("in_memory", MODES["in_memory"]), ("multi_processing", MODES["multi_processing"]),
                      ("multi_processing_again", MODES["multi_processing"])]:
    runs[name] = subprocess.Popen([sys.executable, "-m", "beam_job", *base, *flags, "--output",
                                   str(tmp_path / name / "p")], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
  results = {}
  for name, run in runs.items():
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, f"{name}: {err[-3000:]}"
    with open(outputs.summary_path(str(tmp_path / name / "p")), encoding="utf-8") as f:
      summary = json.load(f)
    assert (summary["left_records"], summary["right_records"], summary["corrupt_records"]) == (5012, 100, 0)
    assert summary["grid"]["cells"] > 4
    results[name] = [open(path, "rb").read() for path in summary["shards"]], summary["pairs"]
  assert results["in_memory"] == results["multi_processing"] == results["multi_processing_again"]
  assert 4000 < results["in_memory"][1] < 6000  # about 1% of 501,200


def test_the_multi_threaded_mode_is_refused_before_reading(tmp_path):
  done = subprocess.run([sys.executable, "-m", "beam_job", "--left", os.path.join(REAL, "penguin_eval", "*.gz"),
                         "--output", str(tmp_path / "p"), "--direct_running_mode=multi_threading"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1].startswith(
      "error: --direct_running_mode=multi_threading loses records in Beam's FnApiRunner")
  assert os.listdir(tmp_path) == []


def _appearing_file(tmp_path, monkeypatch):
  """Inputs where b.tfrecord, matched by the left pattern, appears after the job's start matched it."""
  folder = tmp_path / "in"
  folder.mkdir()
  write_tfrecord(str(folder / "a.tfrecord"), [make_example({"a": [1]})])
  write_tfrecord(str(folder / "right.tfrecord"), [make_example({"b": [2]})])
  real = cli.sources.match_sizes

  def before_b_appeared(patterns, flag):
    return {path: size for path, size in real(patterns, flag).items() if not path.endswith("/b.tfrecord")}

  monkeypatch.setattr(cli.sources, "match_sizes", before_b_appeared)
  write_tfrecord(str(folder / "b.tfrecord"), [make_example({"a": [3]})])
  return folder


def test_the_job_reads_the_files_its_start_matched_and_the_summary_lists(tmp_path, monkeypatch):
  """The summary lists the files matched when the job started (``beam_job.verify`` reads them again), and the
  job reads exactly those: a file that appears while the job runs is not read."""
  folder = _appearing_file(tmp_path, monkeypatch)
  summary = cli.run(["--left", str(folder / "[ab].tfrecord"), "--right", str(folder / "right.tfrecord"),
                     "--output", str(tmp_path / "out" / "pairs")])
  assert list(summary["inputs"]["left"]["files"]) == [str(folder / "a.tfrecord")]
  assert (summary["left_records"], summary["pairs"]) == (1, 1)


def test_an_input_removed_after_the_start_matched_it_is_a_one_line_error(tmp_path, capsys, monkeypatch):
  """The job reads the files its start matched: one removed in between fails the run with one line, exit 2,
  and nothing published (matching again would have left its records out without a word)."""
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  (tmp_path / "in").mkdir()
  write_tfrecord(str(tmp_path / "in" / "a.tfrecord"), [make_example({"u": [k]}) for k in range(2)])
  gone = str(tmp_path / "in" / "b.tfrecord")
  write_tfrecord(gone, [make_example({"u": [k]}) for k in range(2)])
  run = beam.Pipeline.run

  def remove_then_run(self, *args, **kwargs):
    if os.path.exists(gone):
      os.remove(gone)
    return run(self, *args, **kwargs)

  monkeypatch.setattr(beam.Pipeline, "run", remove_then_run)
  out = tmp_path / "out"
  out.mkdir()
  capsys.readouterr()
  assert cli.main(["--left", str(tmp_path / "in" / "*.tfrecord"), "--output", str(out / "pairs"), "--collision",
                   "prefix"]) == 2
  err = capsys.readouterr().err
  assert err == (f"error: input {gone} was matched when the job started but no longer exists (removed or renamed "
                 "while the job ran); rerun the job\n")
  assert os.listdir(out) == []


def test_a_file_read_but_not_in_the_inputs_given_to_cross_product_fails_it(tmp_path, monkeypatch):
  """From Python, ``CrossProduct(inputs=...)`` records the files given; a source it reads that is not among them
  (a pattern matched again later) would be in the output and not in the summary."""
  import apache_beam as beam  # pylint: disable=import-outside-toplevel
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  from beam_job import CrossProduct, ReadExamples  # pylint: disable=import-outside-toplevel
  folder = _appearing_file(tmp_path, monkeypatch)
  patterns = {"left": [str(folder / "[ab].tfrecord")], "right": [str(folder / "right.tfrecord")]}
  inputs = {"compression": "auto", **{side: {"patterns": patterns[side], "files": cli.sources.match_sizes(
      patterns[side], f"--{side}")} for side in ("left", "right")}}
  options = PipelineOptions([])
  with pytest.raises(Exception, match=f"input {folder}/b.tfrecord was read but not matched by the left patterns "
                                      r"when the job started \(it appeared while the job ran\); rerun the job"):
    with beam.Pipeline(runner=cli.local_runner(options), options=options) as p:
      _ = ((p | "L" >> ReadExamples(patterns["left"]), p | "R" >> ReadExamples(patterns["right"]))
           | CrossProduct(str(tmp_path / "out" / "pairs"), inputs=inputs))

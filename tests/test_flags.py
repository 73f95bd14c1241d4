"""The command line's parsing: several values for --left/--right, unknown flags and stray arguments, bounds of
the numeric flags (and the same bounds in ``PairOptions`` for Python callers).

Every refusal is checked through ``beam_job.cli.main``: exit status 2, exactly one line ``error: ...`` on
stderr, nothing on stdout, and nothing written under the output folder.
"""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from beam_job import cli, flags, verify
from beam_job.errors import JobError
from beam_job.transforms import PairOptions
from tests.helpers import make_example, read_tfrecords, write_tfrecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
I64_MIN, I64_MAX = -2 ** 63, 2 ** 63 - 1


@pytest.fixture(name="inputs")
def _inputs(tmp_path):
  """One left file of 2 records, three right files of 1, 2 and 3 records."""
  left = write_tfrecord(str(tmp_path / "users.tfrecord"), [make_example({"u": [k]}) for k in range(2)])
  os.makedirs(tmp_path / "items")
  right = [write_tfrecord(str(tmp_path / "items" / f"{i}.tfrecord"), [make_example({"r": [10 * i + k]})
                                                                     for k in range(i + 1)]) for i in range(3)]
  return {"left": left, "right": right, "out": tmp_path / "out"}


def _refused(capsys, inputs, extra, message):
  """Runs main with valid inputs plus ``extra``; expects exactly ``error: message`` and no output."""
  capsys.readouterr()
  argv = ["--left", inputs["left"], "--right", inputs["right"][0], "--output", str(inputs["out"] / "pairs"), *extra]
  rc = cli.main(argv)
  captured = capsys.readouterr()
  assert (rc, captured.out, captured.err) == (2, "", f"error: {message}\n")
  assert not os.path.exists(inputs["out"])


# --- several values for --left and --right ------------------------------------------------------------------


def test_a_shell_expanded_glob_pairs_every_file(inputs):
  """``python -m beam_job --right items/*.tfrecord`` unquoted: the shell passes three paths, all are read."""
  out = inputs["out"] / "pairs"
  proc = subprocess.run([sys.executable, "-m", "beam_job", "--left", inputs["left"], "--right", *inputs["right"],
                         "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(f"{out}-summary.json", encoding="utf-8") as f:
    summary = json.load(f)
  assert (summary["left_records"], summary["right_records"], summary["pairs"]) == (2, 6, 12)
  assert len(read_tfrecords(summary["shards"])) == 12


def test_several_values_and_the_comma_form_mix(inputs):
  first, second, third = inputs["right"]
  summary = cli.run(["--left", inputs["left"], inputs["left"], "--right", f"{first},{second}", third,
                     "--output", str(inputs["out"] / "pairs")])
  # The same left file named twice is read once (match_files drops repeats).
  assert (summary["left_records"], summary["right_records"], summary["pairs"]) == (2, 6, 12)


def test_parsed_patterns_stay_one_comma_separated_string():
  args = cli.make_parser().parse_args(["--left", "a", "b,c", "--right", "d", "--output", "o"])
  assert (args.left, args.right) == ("a,b,c", "d")
  args = cli.make_parser().parse_args(["--left=a,b", "--output", "o"])
  assert (args.left, args.right) == ("a,b", None)


def test_left_needs_a_value(inputs, capsys):
  capsys.readouterr()
  assert cli.main(["--output", str(inputs["out"] / "pairs"), "--left"]) == 2
  assert capsys.readouterr().err == "error: argument --left: expected at least one argument\n"


# --- unknown flags and stray arguments ------------------------------------------------------------------------


@pytest.mark.parametrize("extra,message", [
    (["--runer=DataflowRunner"], "unknown flag --runer; did you mean --runner?"),
    (["--runer", "DataflowRunner"], "unknown flag --runer; did you mean --runner?"),
    (["--direct_num_worker=2"], "unknown flag --direct_num_worker; did you mean --direct_num_workers?"),
    (["--colision", "prefix"], "unknown flag --colision; did you mean --collision?"),
    (["--index"], "unknown flag --index; did you mean --index_features?"),  # no abbreviations
    (["--sample_rat", "0.5"], "unknown flag --sample_rat; did you mean --sample_rate?"),
    (["--save_main"], "unknown flag --save_main; did you mean --save_main_session?"),  # Beam's, abbreviated
    (["--no_such_flag"], "unknown flag --no_such_flag"),
    (["-x"], "unknown flag -x"),
    (["stray.tfrecord"], "unexpected argument 'stray.tfrecord': only --left and --right take several values"),
    (["--collision", "prefix", "more"], "unexpected argument 'more': only --left and --right take several values"),
    (["--direct_num_workers=abc"], "argument --direct_num_workers: invalid int value: 'abc'"),
    (["--streaming=true"], "argument --streaming: ignored explicit argument 'true'"),
    (["--runner", "DataflowRunne"], "unknown --runner DataflowRunne; did you mean DataflowRunner?"),
    (["--runner=NoSuchRunner"], "unknown --runner NoSuchRunner"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_unknown_flags_and_stray_arguments_are_refused(inputs, capsys, extra, message):
  _refused(capsys, inputs, extra, message)


def test_a_stray_path_after_output_is_refused_not_dropped(inputs, capsys):
  """``--output out/pairs items/1.tfrecord``: the path would be lost (Beam only warns), so it is an error."""
  _refused(capsys, inputs, inputs["right"][1:2],
           f"unexpected argument {inputs['right'][1]!r}: only --left and --right take several values")


@pytest.mark.parametrize("beam_args", [
    [], ["--runner", "DirectRunner"], ["--runner=direct"], ["--runner", "dataflow"],
    ["--runner", "apache_beam.runners.direct.direct_runner.DirectRunner"],
    ["--direct_num_workers", "2", "--direct_running_mode=multi_threading"], ["--save_main_session"],
    ["--labels", "team=ml", "--labels=b=c", "--project", "p", "--job_name=pairs", "--experiments", "x"],
])
def test_beam_flags_in_either_form_pass(beam_args):
  parser = cli.make_parser()
  _, rest = parser.parse_known_args(["--left", "a", "--output", "o", *beam_args])
  assert rest == beam_args
  cli._check_beam_flags(parser, rest)  # pylint: disable=protected-access


# --- numeric flags -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag,text,value", [
    ("--max_pairs", "1e6", 1_000_000), ("--max_pairs", "1_000_000", 1_000_000),
    ("--max_pairs", "1,000,000", 1_000_000), ("--max_pairs", "0", 0), ("--max_pairs", str(I64_MAX), I64_MAX),
    ("--max_pairs", "9.223372036854775807e18", I64_MAX),
    ("--sample_rate", "1e-12", 1e-12), ("--sample_rate", "1", 1.0),
    ("--seed", str(I64_MIN), I64_MIN), ("--seed", str(I64_MAX), I64_MAX), ("--seed", "-1", -1),
    ("--target_shard_mb", "1e6", 1e6), ("--target_shard_mb", "0.0001", 0.0001),
])
def test_numeric_flags_accept(flag, text, value):
  args = cli.make_parser().parse_args(["--left", "a", "--output", "o", flag, text])
  parsed = getattr(args, flag[2:])
  assert parsed == value and type(parsed) is type(value)


_WHOLE = "must be a whole number (1000000, 1_000_000, 1,000,000 or 1e6)"
_SEEDS = f"must be a whole number from {I64_MIN} to {I64_MAX} (64-bit signed)"


@pytest.mark.parametrize("flag,text,message", [
    ("--max_pairs", "1.5", f"{_WHOLE}, not 1.5"),
    ("--max_pairs", "1e-3", f"{_WHOLE}, not 1e-3"),
    ("--max_pairs", "nan", f"{_WHOLE}, not nan"),
    ("--max_pairs", "inf", f"{_WHOLE}, not inf"),
    ("--max_pairs", "-1", "must be at least 0, not -1"),
    ("--max_pairs", str(2 ** 63), f"must be at most 9,223,372,036,854,775,807 (2**63 - 1), not {2 ** 63}"),
    ("--max_pairs", "1e19", "must be at most 9,223,372,036,854,775,807 (2**63 - 1), not 1e19"),
    ("--sample_rate", "5e-324", "must be at least 1e-12, the smallest supported rate, not 5e-324"),
    ("--sample_rate", "9e-13", "must be at least 1e-12, the smallest supported rate, not 9e-13"),
    ("--sample_rate", "0", "must be in (0, 1], not 0"),
    ("--sample_rate", "1.5", "must be in (0, 1], not 1.5"),
    ("--sample_rate", "nan", "must be in (0, 1], not nan"),
    ("--sample_rate", "half", "must be a number, not 'half'"),
    ("--seed", str(2 ** 63), f"{_SEEDS}, not {2 ** 63}"),
    ("--seed", str(I64_MIN - 1), f"{_SEEDS}, not {I64_MIN - 1}"),
    ("--seed", "1.5", f"{_SEEDS}, not 1.5"),
    ("--target_shard_mb", "1e303", "must be at most 1,000,000 (one TB), not 1e303"),
    ("--target_shard_mb", "inf", "must be at most 1,000,000 (one TB), not inf"),
    ("--target_shard_mb", "0", "must be positive, not 0"),
    ("--target_shard_mb", "nan", "must be positive, not nan"),
])
def test_numeric_flags_refuse(inputs, capsys, flag, text, message):
  _refused(capsys, inputs, [flag, text], f"argument {flag}: {message}")


def test_the_extreme_accepted_values_run(inputs):
  """The bounds are safe: the smallest rate with the largest shard, extreme seeds and --max_pairs run to the
  end (5e-324, 2**63 and 1e303 used to end in tracebacks after reading)."""
  for name, seed in (("low", I64_MIN), ("high", I64_MAX)):
    summary = cli.run(["--left", inputs["left"], "--right", *inputs["right"], "--output",
                       str(inputs["out"] / name), "--sample_rate", "1e-12", "--seed", str(seed),
                       "--max_pairs", str(I64_MAX), "--target_shard_mb", "1e6"])
    assert (summary["right_records"], summary["pairs"]) == (6, 0)  # 12 pairs kept with probability 1e-12 each
    assert (summary["options"]["sample_rate"], summary["options"]["seed"]) == (1e-12, seed)
  summary = cli.run(["--left", inputs["left"], "--right", *inputs["right"], "--output", str(inputs["out"] / "half"),
                     "--sample_rate", "0.5", "--seed", str(I64_MAX)])
  assert 0 <= summary["pairs"] <= 12 and summary["options"]["seed"] == I64_MAX


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_pairs=2 ** 63),
     "--max_pairs must be at most 9,223,372,036,854,775,807 (2**63 - 1), not 9223372036854775808"),
    (dict(max_pairs=1.5), "--max_pairs must be a whole number, not 1.5"),
    (dict(target_shard_mb=1e303), "--target_shard_mb must be at most 1,000,000 (one TB), not 1e+303"),
    (dict(target_shard_mb=float("inf")), "--target_shard_mb must be at most 1,000,000 (one TB), not inf"),
    (dict(target_shard_mb=float("nan")), "--target_shard_mb must be positive, not nan"),
    (dict(sample_rate=5e-324), "--sample_rate must be at least 1e-12, the smallest supported rate, not 5e-324"),
    (dict(seed=2 ** 63), f"--seed must be a whole number from {I64_MIN} to {I64_MAX} (64-bit signed), not {2 ** 63}"),
    (dict(seed="7"), "--seed must be a whole number, not '7'"),
])
def test_pair_options_check_the_same_bounds(kwargs, message):
  with pytest.raises(JobError) as info:
    PairOptions(output="/tmp/never-written", **kwargs)
  assert str(info.value) == message


def test_pair_options_accept_the_bounds():
  options = PairOptions(output="/tmp/never-written", max_pairs=I64_MAX, target_shard_mb=1e6, sample_rate=1e-12,
                        seed=I64_MIN)
  assert options.plan_options(None)["target_shard_bytes"] == 10 ** 12


@pytest.mark.parametrize("flag,text,message", [
    ("--sample_shards", "-1", "argument --sample_shards: must be at least 0, not -1"),
    ("--full_check_max", "1.5", f"argument --full_check_max: {_WHOLE}, not 1.5"),
    ("--seed", str(2 ** 63), f"argument --seed: {_SEEDS}, not {2 ** 63}"),
])
def test_verify_checks_its_numeric_flags_too(inputs, capsys, flag, text, message):
  capsys.readouterr()
  rc = verify.main(["--left", inputs["left"], "--output", str(inputs["out"] / "pairs"), flag, text])
  assert (rc, capsys.readouterr().err) == (2, f"error: {message}\n")  # a usage error


def test_pair_options_are_the_job_flags_but_the_inputs_with_their_defaults():
  fields = {field.name: field.default for field in dataclasses.fields(PairOptions)}
  assert set(fields) == set(flags.BY_NAME) - {"left", "right", "compression", "dry_run"}
  assert fields["output"] is dataclasses.MISSING and fields["self_join"] == "product"  # the flag's unset
  assert {name: default for name, default in fields.items() if name not in ("output", "self_join")} == {
      name: flags.DEFAULTS[name] for name in fields if name not in ("output", "self_join")}

"""``python -m beam_job``: parse the job's flags, check them and the paths, build and run the pipeline.

Three thin layers, as in Beam's ``wordcount``: ``main`` turns errors into exit codes, ``run`` splits the
job's flags from Beam's with ``parse_known_args`` and checks everything that can be checked before
submitting, and ``build`` assembles the pipeline from the reusable transforms.
"""

import argparse
import difflib
import json
import logging
import math
import os
import re
import sys
import tempfile
import uuid
from typing import List, Optional

import apache_beam as beam
from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from beam_job import describe, planning, progress, quiet, running_modes, sinks, sources, transforms
from beam_job.errors import JobError, find_job_error

_LOG = logging.getLogger("beam_job")
_LOCAL_RUNNERS = (None, "DirectRunner", "direct", "directrunner")


def _non_negative_int(text: str) -> int:
  value = int(text.replace(",", "").replace("_", ""))
  if value < 0:
    raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
  return value


def _positive_float(text: str) -> float:
  value = float(text)
  if not (value > 0 and math.isfinite(value)):
    raise argparse.ArgumentTypeError(f"must be positive, not {text}")
  return value


def _names(text: str) -> tuple:
  names = tuple(name.strip() for name in text.split(",") if name.strip())
  if not names:
    raise argparse.ArgumentTypeError("expected a comma-separated list of feature names")
  return names


def _rate(text: str) -> float:
  value = float(text)
  if not 0 < value <= 1:
    raise argparse.ArgumentTypeError(f"must be in (0, 1], not {text}")
  return value


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    raise JobError(message)


def make_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="python -m beam_job", description=(
      "Writes every pairwise combination of two TFRecord datasets of tf.train.Example, each pair merged into "
      "one Example. Flags not listed here go to Beam's PipelineOptions."))
  parser.add_argument("--left", required=True, help="File pattern(s), comma-separated, of the left dataset.")
  parser.add_argument("--right", help="File pattern(s) of the right dataset; omitted: pair --left with itself.")
  parser.add_argument("--output", required=True, help="Output prefix: PREFIX-SSSSS-of-NNNNN.tfrecord.")
  parser.add_argument("--compression", default="auto", choices=sources.COMPRESSIONS,
                      help="Input compression; auto decides by file extension (.gz, .zlib, .deflate).")
  parser.add_argument("--output_compression", default="uncompressed", choices=transforms.OUTPUT_COMPRESSIONS)
  parser.add_argument("--collision", default="error", choices=transforms.COLLISIONS,
                      help="What to do with a feature name present on both sides.")
  parser.add_argument("--left_prefix", default="left_", help="With --collision prefix (may be empty).")
  parser.add_argument("--right_prefix", default="right_", help="With --collision prefix (may be empty).")
  parser.add_argument("--self_join", default=None, choices=planning.SELF_JOINS,
                      help="Which pairs of --left with itself (only without --right); default product.")
  parser.add_argument("--on_corrupt", default="fail", choices=transforms.ON_CORRUPT)
  parser.add_argument("--max_pairs", type=_non_negative_int, default=1_000_000_000,
                      help="Refuse, before writing, a job with more pairs than this.")
  parser.add_argument("--strategy", default="auto", choices=transforms.STRATEGIES)
  parser.add_argument("--target_shard_mb", type=_positive_float, default=256.0,
                      help="Approximate size of one output shard (one cell), in MB (10^6 bytes).")
  parser.add_argument("--overwrite", action="store_true",
                      help="Replace the shards and summary of an earlier run under the same prefix.")
  parser.add_argument("--left_features", type=_names, help="Keep only these left features (names before prefixing).")
  parser.add_argument("--right_features", type=_names, help="Keep only these right features.")
  parser.add_argument("--index_features", action="store_true",
                      help="Add each record's ordinal as an int64 feature 'index' on each side (renamed by prefixes).")
  parser.add_argument("--sample_rate", type=_rate, default=1.0,
                      help="Keep each pair independently with this probability, decided by --seed.")
  parser.add_argument("--seed", type=int, default=0, help="Seed of --sample_rate.")
  parser.add_argument("--dry_run", action="store_true",
                      help="Read the inputs, print the plan and exit without writing anything.")
  return parser


def _beam_flags() -> set:
  """Every flag some registered Beam ``PipelineOptions`` class defines."""
  collector = argparse.ArgumentParser(add_help=False, conflict_handler="resolve")
  pending = list(PipelineOptions.__subclasses__())
  while pending:
    options_class = pending.pop()
    pending.extend(options_class.__subclasses__())
    options_class._add_argparse_args(collector)  # pylint: disable=protected-access
  return {flag for action in collector._actions for flag in action.option_strings}  # pylint: disable=protected-access


def _check_beam_flags(parser: argparse.ArgumentParser, beam_args: List[str]) -> None:
  """A flag that neither the job nor Beam knows and that looks like one of the job's is a typo: Beam would only
  warn and drop it, and the job would run with the default."""
  ours = [flag for action in parser._actions for flag in action.option_strings]  # pylint: disable=protected-access
  known = _beam_flags()
  for arg in beam_args:
    flag = arg.split("=", 1)[0]
    if flag.startswith("--") and flag not in known:
      close = difflib.get_close_matches(flag, ours, n=1, cutoff=0.8)
      if close:
        raise JobError(f"unknown flag {flag}; did you mean {close[0]}?")


def _check_output(args, patterns: List[str], inputs: List[str]) -> None:
  """Refuses an output that would clobber an earlier run or land among the inputs, before reading anything."""
  output = sources.absolute(args.output)
  written = [planning.shard_name(output, 0, 1, args.output_compression), sinks.summary_path(output)]
  for pattern in patterns:
    matches = re.compile(FileSystem.translate_pattern(pattern)).match  # Beam's glob: '*' stops at '/'
    if any(matches(path) for path in written):
      raise JobError(f"--output {args.output!r} falls inside input pattern {pattern!r}; choose another prefix")
  if any(path.startswith(output + "-") for path in inputs):
    raise JobError(f"--output {args.output!r} is the prefix of input files; choose another prefix")
  sinks.check_writable(args.output, uuid.uuid4().hex[:12])
  if not args.overwrite:
    sinks.refuse_existing(args.output, sinks.existing_outputs(args.output))


def build(pipeline: beam.Pipeline, args, _fail_cell=None, temp_token: Optional[str] = None):
  """Adds the job to ``pipeline``; returns the PCollection of its summary (of its plan with --dry_run)."""
  left = pipeline | "ReadLeft" >> transforms.ReadExamples(
      sources.split_patterns(args.left), args.compression, args.on_corrupt)
  inputs = left
  if args.right:
    inputs = (left, pipeline | "ReadRight" >> transforms.ReadExamples(
        sources.split_patterns(args.right), args.compression, args.on_corrupt))
  return inputs | "CrossProduct" >> transforms.CrossProduct(
      dry_run=args.dry_run, temp_token=temp_token, _fail_cell=_fail_cell, **pair_options(args))


def pair_options(args) -> dict:
  """The parsed flags as ``transforms.PairOptions`` fields (also what ``beam_job.verify`` checks against)."""
  return {"output": args.output, "collision": args.collision, "left_prefix": args.left_prefix,
          "right_prefix": args.right_prefix, "self_join": args.self_join or "product", "on_corrupt": args.on_corrupt,
          "max_pairs": args.max_pairs, "strategy": args.strategy, "target_shard_mb": args.target_shard_mb,
          "output_compression": args.output_compression, "overwrite": args.overwrite,
          "left_features": args.left_features, "right_features": args.right_features,
          "index_features": args.index_features, "sample_rate": args.sample_rate, "seed": args.seed}


def _write_local_json(value: dict, path: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f)


def dry_run(args, beam_args) -> dict:
  """Reads the inputs on the local runner, whatever --runner says, and returns the plan's description."""
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "plan.json")
    options = PipelineOptions(beam_args)
    pipeline = beam.Pipeline(runner=local_runner(options), options=options)
    _ = build(pipeline, args) | "Keep" >> beam.Map(_write_local_json, path)
    pipeline.run().wait_until_finish()
    with open(path, encoding="utf-8") as f:
      return json.load(f)


def local_runner(options: PipelineOptions):
  """The DirectRunner's FnApiRunner, without the DirectRunner's attempt to download and start Prism first.

  Beam 2.77's DirectRunner tries Prism before anything else; here that means a download that cannot succeed.
  ``--direct_running_mode`` and ``--direct_num_workers`` keep their meaning, except that ``multi_threading``
  is refused: it loses records (see ``beam_job.running_modes``).
  """
  running_modes.refuse_lossy_mode(options)
  from apache_beam.portability.api import beam_provision_api_pb2
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  from apache_beam.runners.portability.portable_runner import JobServiceHandle
  encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
  return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
      beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def run(argv: Optional[List[str]] = None, _fail_cell=None, progress_stream=None) -> Optional[dict]:
  """Runs the job; returns its summary when the runner finished it (None when it only submitted it)."""
  parser = make_parser()
  args, beam_args = parser.parse_known_args(argv)
  _check_beam_flags(parser, beam_args)
  if args.right and args.self_join:
    raise JobError("--self_join applies only when --right is omitted")
  left_patterns, right_patterns = sources.split_patterns(args.left), sources.split_patterns(args.right or "")
  if args.right is not None and not right_patterns:
    raise JobError("--right names no file pattern; omit it to pair --left with itself")
  inputs = sources.match_files(left_patterns, "--left")
  if args.right:
    inputs += sources.match_files(right_patterns, "--right")
  for path in inputs:
    sources.check_supported(path, args.compression)
  patterns = left_patterns + right_patterns
  if args.dry_run:
    return {"dry_run": dry_run(args, beam_args)}
  _check_output(args, patterns, inputs)
  options = PipelineOptions(beam_args)
  runner_name = options.view_as(StandardOptions).runner
  runner = local_runner(options) if runner_name in _LOCAL_RUNNERS else None
  pipeline = beam.Pipeline(runner=runner, options=options)
  token = uuid.uuid4().hex[:12]
  build(pipeline, args, _fail_cell, temp_token=token)
  if runner is None and options.view_as(StandardOptions).no_wait_until_finish:
    pipeline.run()
    _LOG.info("submitted; the job publishes its shards and %s when it ends", sinks.summary_path(args.output))
    return None
  with progress.FolderProgress(sinks.temp_dir(args.output, token), progress_stream):
    state = pipeline.run().wait_until_finish()
  if state != beam.runners.runner.PipelineState.DONE:
    raise RuntimeError(f"pipeline ended in state {state}")
  with FileSystems.open(sinks.summary_path(args.output)) as f:
    return json.loads(f.read())


class _HideUserErrors(logging.Filter):
  """Beam logs a failing DoFn's exception with its traceback before re-raising it; for a JobError the CLI
  prints the one-line message itself, so the log record is dropped."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and find_job_error(exc)) and "JobError: " not in record.getMessage()


def main(argv: Optional[List[str]] = None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  for handler in logging.getLogger().handlers:
    handler.addFilter(_HideUserErrors())
  logging.getLogger("beam_job").setLevel(logging.INFO)
  # Dataflow's submission lines ("Created job with id", the console URL): Airflow's Beam operator reads them.
  logging.getLogger("apache_beam.runners.dataflow.internal.apiclient").setLevel(logging.INFO)
  on_terminal = sys.stderr.isatty()  # asked before descriptor 2 becomes the filter's pipe
  try:
    with quiet.filtered_stderr() as terminal:
      summary = run(argv, progress_stream=terminal if on_terminal else None)
  except Exception as e:  # pylint: disable=broad-except
    message = find_job_error(e)
    if message is None:
      raise
    print(f"error: {message}", file=sys.stderr)
    return 2
  if summary is not None and "dry_run" in summary:
    print(describe.to_text(summary["dry_run"]))
  elif summary is not None:
    print(f"wrote {summary['pairs']:,} pairs in {len(summary['shards'])} shard(s) under {summary['output']}-*")
    print(json.dumps({k: v for k, v in summary.items() if k != "corrupt"}, indent=2, sort_keys=True))
  return 0

"""``python -m beam_job``: parse the job's flags, check them and the paths, build and run the pipeline.

Three thin layers, as in Beam's ``wordcount``: ``main`` turns errors into exit codes, ``run`` splits the
job's flags from Beam's with ``parse_known_args`` and checks everything that can be checked before
submitting, and ``build`` assembles the pipeline from the reusable transforms.
"""

import argparse
import dataclasses
import difflib
import json
import logging
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

from beam_job import (describe, flags, lease, outputs, progress, publish, quiet, running_modes, sinks, sources,
                      transforms, workers)
from beam_job.errors import JobError, find_job_error

_LOG = logging.getLogger("beam_job")
_LOCAL_RUNNERS = (None, "DirectRunner", "direct", "directrunner")


class _Options(PipelineOptions):
  """Beam's options, with each view (``view_as``) made once per class. Beam builds and runs an argparse parser
  for every view, and its type checks ask for a ``TypeOptions`` view at every step of building a pipeline:
  hundreds per job, about 0.1 s of its start-up. A view holds nothing of its own (all views share the
  options' values), so one per class is the same thing."""

  def view_as(self, cls):
    views = self.__dict__.setdefault("_views", {})
    if cls not in views:
      views[cls] = super().view_as(cls)
    return views[cls]


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    raise JobError(message)


def make_parser(left_required: bool = True) -> argparse.ArgumentParser:
  """The job's flags (``beam_job.flags.FLAGS``) in a parser whose errors are JobErrors; ``left_required=False``
  for ``beam_job.verify``, which reads the inputs from the summary."""
  # allow_abbrev=False: an abbreviated flag (--index for --index_features) is an error, as in Beam's parser.
  parser = _Parser(prog="python -m beam_job", allow_abbrev=False, description=(
      "Writes every pairwise combination of two TFRecord datasets of tf.train.Example, each pair merged into "
      "one Example. Other flags go to Beam's PipelineOptions; a flag neither knows is an error."))
  flags.add_flags(parser, optional=() if left_required else ("left",))
  return parser


def _beam_parser() -> argparse.ArgumentParser:
  """The parser Beam builds from every registered ``PipelineOptions`` class, as ``get_all_options`` does (its
  public ``add_extra_args_fn`` hook hands it over), copied into one whose errors are JobErrors."""
  built = []
  PipelineOptions([]).get_all_options(add_extra_args_fn=built.append)
  return _Parser(add_help=False, allow_abbrev=False, parents=built)


def _check_runner(runner: Optional[str]) -> None:
  """A misspelled --runner fails only when the pipeline is built, with a traceback; refused here instead. Beam
  also takes a known name without its 'Runner' suffix, in any case, and any dotted class path."""
  if not runner or "." in runner:
    return
  names = {path.rsplit(".", 1)[-1].lower() for path in StandardOptions.ALL_KNOWN_RUNNERS}
  if runner.lower() in names or runner.lower() + "runner" in names:
    return
  close = difflib.get_close_matches(runner, StandardOptions.KNOWN_RUNNER_NAMES, n=1, cutoff=0.8)
  raise JobError(f"unknown --runner {runner}" + (f"; did you mean {close[0]}?" if close else ""))


def _check_beam_flags(parser: argparse.ArgumentParser, beam_args: List[str]) -> None:
  """What the job's parser left must all be Beam's flags, with valid values: Beam would only warn about the
  rest and drop it (``--runer=DataflowRunner`` would run locally), and a stray value means a file was lost."""
  beam = _beam_parser()
  beam_options, unknown = beam.parse_known_args(beam_args)
  if unknown and not unknown[0].startswith("-"):
    raise JobError(f"unexpected argument {unknown[0]!r}: only --left and --right take several values")
  if unknown:
    raise JobError(unknown_flag(unknown[0], (parser, beam)))
  _check_runner(beam_options.runner)


def unknown_flag(argument: str, parsers) -> str:
  """``unknown flag --sed; did you mean --seed?``: the closest flag the parsers know, or the one an
  abbreviation extends (``--index`` -> ``--index_features``)."""
  flag = argument.split("=", 1)[0]
  known = sorted({option for p in parsers for action in p._actions  # pylint: disable=protected-access
                  for option in action.option_strings if option.startswith("--")})
  extending = [name for name in known if name.startswith(flag)]  # an abbreviation
  close = extending if len(extending) == 1 else difflib.get_close_matches(flag, known, n=1, cutoff=0.8)
  return f"unknown flag {flag}" + (f"; did you mean {close[0]}?" if close else "")


def _check_prefix(output: str) -> None:
  """The prefix must end in a file name part: ``out/`` would name the shards ``out/-00000-of-00001.tfrecord``
  and an existing folder ``out`` would put them beside it as ``out-00000-...``, neither what was meant."""
  shards = "shards are PREFIX-00000-of-00001.tfrecord"
  if output.endswith("/"):
    raise JobError(f"--output {output!r} ends with '/': give a prefix such as {output}pairs ({shards})")
  if FileSystems.get_scheme(output) is None and os.path.isdir(output):
    raise JobError(f"--output {output!r} is a directory: give a prefix inside it such as {output}/pairs ({shards})")


def _check_output(args, patterns: List[str], inputs: List[str], matched: dict) -> None:
  """Refuses an output that would clobber an earlier run, a live run or an input, before reading anything.

  Paths are compared resolved (symlinks and ``//`` locally), so another spelling of an input is caught.
  """
  output = outputs.resolve(args.output)
  written = [outputs.shard_name(output, 0, 1, args.output_compression), outputs.summary_path(output)]
  for pattern in patterns:
    matches = re.compile(FileSystem.translate_pattern(outputs.resolve(pattern))).match  # '*' stops at '/'
    if any(matches(path) for path in written):
      raise JobError(f"--output {args.output!r} falls inside input pattern {pattern!r}; choose another prefix")
  for path in inputs:
    real = outputs.resolve(path, follow=True)
    if outputs.classify(output, real) or real == output:
      raise JobError(f"--output {args.output!r} would write over input file {path}; choose another prefix")
    if real.startswith(output + "-"):
      raise JobError(f"--output {args.output!r} is the prefix of input files ({path}); choose another prefix")
  sinks.check_writable(args.output, uuid.uuid4().hex[:12])
  lease.refuse_if_held(args.output)
  if args.overwrite:
    return
  self_join = (args.self_join or "product") if not args.right else None
  options = transforms.PairOptions(**pair_options(args)).summary(self_join)
  if publish.died_after_publishing(args.output, options, matched):
    # Rerunning the command whose run died after writing its summary (before its cleanup) completes it.
    _LOG.info("the last run on %s died after publishing; rerunning it replaces its output", args.output)
    args.overwrite = True
    return
  outputs.refuse_existing(args.output, publish.surviving(args.output))


def build(pipeline: beam.Pipeline, args, temp_token: Optional[str] = None,
          inputs: Optional[dict] = None):
  """Adds the job to ``pipeline``; returns the PCollection of its summary (of its plan with --dry_run).
  ``inputs`` is what ``run`` matched: its files are read (the patterns are not matched again), and recorded in
  the summary."""
  on_corrupt = "skip" if args.dry_run else args.on_corrupt  # a dry run lists what a real run would fail on

  def read(side: str) -> beam.PCollection:
    files = list(inputs[side]["files"]) if inputs else None  # matched already: not matched again
    return pipeline | f"Read{side.title()}" >> transforms.ReadExamples(
        sources.split_patterns(getattr(args, side)), args.compression, on_corrupt, files=files)

  records = (read("left"), read("right")) if args.right else read("left")
  if args.dry_run:
    return records | "DescribePairs" >> transforms.DescribePairs(**pair_options(args))
  return records | "CrossProduct" >> transforms.CrossProduct(temp_token=temp_token, inputs=inputs,
                                                             **pair_options(args))


def pair_options(args) -> dict:
  """The parsed flags as ``transforms.PairOptions`` fields: every flag but the inputs'."""
  fields = {field.name: getattr(args, field.name) for field in dataclasses.fields(transforms.PairOptions)}
  return dict(fields, self_join=args.self_join or "product")


def _write_local_json(value: dict, path: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f)


def dry_run(args, beam_args, inputs: Optional[dict] = None) -> dict:
  """Reads the inputs on the local runner, whatever --runner says, and returns the plan's description."""
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "plan.json")
    options = _Options(beam_args)
    pipeline = beam.Pipeline(runner=local_runner(options), options=options)
    _ = build(pipeline, args, inputs=inputs) | "Keep" >> beam.Map(_write_local_json, path)
    with workers.supervised(lambda: None, active=workers.multi_processing(options)):
      pipeline.run().wait_until_finish()
    with open(path, encoding="utf-8") as f:
      return json.load(f)


def local_runner(options: PipelineOptions):
  """The DirectRunner's FnApiRunner, without the DirectRunner's attempt to download and start Prism first.

  Beam 2.77's DirectRunner tries Prism before anything else; here that means a download that cannot succeed.
  ``--direct_running_mode`` and ``--direct_num_workers`` keep their meaning, except that ``multi_threading``
  is refused: it loses records (see ``beam_job.running_modes``). ``multi_processing`` workers import
  ``beam_job.workers`` first, so that none outlives the run (see ``run``).
  """
  running_modes.refuse_lossy_mode(options)
  from apache_beam.portability.api import beam_provision_api_pb2
  from apache_beam.runners.portability.fn_api_runner import fn_runner
  from apache_beam.runners.portability.portable_runner import JobServiceHandle
  all_options = options.get_all_options()
  if workers.multi_processing(options):
    all_options = workers.with_plugin(all_options)
    workers.ending_late_workers()
  encoded = JobServiceHandle.encode_pipeline_options(all_options)
  return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
      beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def run(argv: Optional[List[str]] = None, progress_stream=None) -> Optional[dict]:
  """Runs the job; returns its summary when the runner finished it (None when it only submitted it)."""
  parser = make_parser()
  args, beam_args = parser.parse_known_args(argv)
  _check_beam_flags(parser, beam_args)
  args.output = outputs.normalize(args.output)
  _check_prefix(args.output)
  left_patterns, right_patterns = sources.split_patterns(args.left), sources.split_patterns(args.right or "")
  if args.right is not None and not right_patterns:
    raise JobError("--right names no file pattern; omit it to pair --left with itself")
  matched = {"compression": args.compression, "left": None, "right": None}  # the summary's "inputs"
  for flag, side_patterns in (("--left", left_patterns), ("--right", right_patterns if args.right else None)):
    if side_patterns is not None:
      sizes = sources.match_sizes(side_patterns, flag)
      for path in sizes:
        sources.check_supported(path, args.compression)
      matched[flag[2:]] = {"patterns": side_patterns, "files": dict(sorted(sizes.items()))}
      _warn_empty(flag, sorted(path for path, size in sizes.items() if size == 0))
  inputs = [path for side in ("left", "right") if matched[side] for path in matched[side]["files"]]
  patterns = left_patterns + right_patterns
  if args.dry_run:
    return {"dry_run": dry_run(args, beam_args, matched)}
  _check_output(args, patterns, inputs, matched)
  options = _Options(beam_args)
  runner_name = options.view_as(StandardOptions).runner
  runner = local_runner(options) if runner_name in _LOCAL_RUNNERS else None
  pipeline = beam.Pipeline(runner=runner, options=options)
  token = uuid.uuid4().hex[:12]
  build(pipeline, args, temp_token=token, inputs=matched)
  if runner is None and options.view_as(StandardOptions).no_wait_until_finish:
    lease.acquire(args.output, token, watched=False)
    pipeline.run()
    _LOG.info("submitted; the job publishes its shards and %s when it ends", outputs.summary_path(args.output))
    return None
  lease.acquire(args.output, token)
  try:
    supervise = runner is not None and workers.multi_processing(options)  # a dead worker would hang it
    with lease.kept(args.output, token), progress.FolderProgress(outputs.temp_dir(args.output, token),
                                                                 progress_stream), \
        workers.supervised(lambda: _abandon(args.output, token), active=supervise):
      state = pipeline.run().wait_until_finish()
    if state != beam.runners.runner.PipelineState.DONE:
      raise RuntimeError(f"pipeline ended in state {state}")
  except BaseException:
    _abandon(args.output, token)
    raise
  with FileSystems.open(outputs.summary_path(args.output)) as f:
    return json.loads(f.read())


def _warn_empty(flag: str, empty: List[str]) -> None:
  """One line for the inputs of 0 bytes: the job runs (they may be placeholders) but yields no pairs of them,
  which is easy to miss in a summary. Only size 0 is caught here; a compressed file of no records is not."""
  if not empty:
    return
  named = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
  verb = "holds" if len(empty) == 1 else "hold"
  print(f"warning: {flag} input{'s' if len(empty) > 1 else ''} {named} {verb} no records (0 bytes)", file=sys.stderr)


def _abandon(output: str, token: str) -> None:
  """After a failed run: remove what it left (temporary objects, a half publish, its lease) where it can."""
  try:
    publish.abandon(output, token)
  except Exception as e:  # pylint: disable=broad-except  # the run's own error is the one to report
    _LOG.warning("could not clean up after the failed run %s under %s: %s", token, output, e)


def main(argv: Optional[List[str]] = None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  logging.getLogger("beam_job").setLevel(logging.INFO)
  # Dataflow's submission lines ("Created job with id", the console URL): Airflow's Beam operator reads them.
  logging.getLogger("apache_beam.runners.dataflow.internal.apiclient").setLevel(logging.INFO)
  on_terminal = sys.stderr.isatty()  # asked before descriptor 2 becomes the filter's pipe
  try:
    with quiet.quieted() as terminal:
      summary = run(argv, progress_stream=terminal if on_terminal else None)
  except workers.WorkerLost as e:  # the run failed, not the user: one line all the same
    print(f"error: {e}", file=sys.stderr)
    return 1
  except Exception as e:  # pylint: disable=broad-except
    message = find_job_error(e)
    if message is None:
      raise
    print(f"error: {message}", file=sys.stderr)
    return 2
  try:
    if summary is not None and "dry_run" in summary:
      print(describe.to_text(summary["dry_run"]))
    elif summary is not None:
      print(f"wrote {summary['pairs']:,} pairs in {len(summary['shards'])} shard(s) under {summary['output']}-*")
      print(json.dumps({k: v for k, v in summary.items() if k != "corrupt"}, indent=2, sort_keys=True))
    sys.stdout.flush()
  except BrokenPipeError:
    # The reader left (``| head -1``). The job has finished and published by now; stop writing quietly, as Unix
    # tools do, with what Python's "Note on SIGPIPE" suggests: stdout onto devnull, so the flush at exit fails
    # no more, and status 1.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 1
  return 0

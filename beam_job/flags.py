"""The job's flags, defined once: the command line, Beam's ``PipelineOptions``, the Flex Template's metadata and
the Airflow DAGs' params are all made from ``FLAGS``.

Beam's idiom for a pipeline's own options is a ``PipelineOptions`` subclass whose ``_add_argparse_args`` adds
them (``JobOptions`` here), so ``PipelineOptions(argv).view_as(JobOptions)`` reads them as runners and
templates do. ``python -m beam_job.flags`` writes ``templates/metadata.json`` and
``templates/dags/job_flags.json`` from the same table; a test checks that the files in the tree are what it
writes.
"""

import argparse
import dataclasses
import decimal
import json
import os
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beam_job import grouping, planning, sampling, sources

COLLISIONS = ("error", "prefix", "left", "right")
ON_CORRUPT = ("fail", "skip")
STRATEGIES = ("auto", "broadcast", "grid")
MISSING_GROUP = grouping.MISSING_GROUP
OUTPUT_COMPRESSIONS = ("uncompressed", "gzip")


# --- value types of the flags -------------------------------


def count(text: str) -> int:
  """A whole number of pairs or shards: ``1000000``, ``1_000_000``, ``1,000,000`` or ``1e6``; at most
  ``planning.MAX_PAIRS``, so that nothing downstream (JSON readers, int64 counters) overflows."""
  try:
    value = decimal.Decimal(text.replace(",", ""))
  except decimal.InvalidOperation:
    value = None
  whole = f"must be a whole number (1000000, 1_000_000, 1,000,000 or 1e6), not {text}"
  if value is None or not value.is_finite():
    raise argparse.ArgumentTypeError(whole)
  if value < 0:
    raise argparse.ArgumentTypeError(f"must be at least 0, not {text}")
  if value > planning.MAX_PAIRS:
    raise argparse.ArgumentTypeError(f"must be at most {planning.MAX_PAIRS:,} (2**63 - 1), not {text}")
  if value != int(value):
    raise argparse.ArgumentTypeError(whole)
  return int(value)


def shard_mb(text: str) -> float:
  value = _number(text)
  if not value > 0:
    raise argparse.ArgumentTypeError(f"must be positive, not {text}")
  if value > planning.MAX_TARGET_SHARD_MB:
    raise argparse.ArgumentTypeError(f"must be at most {planning.MAX_TARGET_SHARD_MB:,.0f} (one TB), not {text}")
  return value


def rate(text: str) -> float:
  value = _number(text)
  if not 0 < value <= 1:
    raise argparse.ArgumentTypeError(f"must be in (0, 1], not {text}")
  if value < sampling.MIN_RATE:
    raise argparse.ArgumentTypeError(f"must be at least {sampling.MIN_RATE:g}, the smallest supported rate, not {text}")
  return value


def seed(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = None
  if value is None or not sampling.MIN_SEED <= value <= sampling.MAX_SEED:
    raise argparse.ArgumentTypeError(
        f"must be a whole number from {sampling.MIN_SEED} to {sampling.MAX_SEED} (64-bit signed), not {text}")
  return value


def per_left(text: str) -> int:
  """--pairs_per_left: a whole number of right records per left record, at least 1."""
  try:
    value = count(text)
  except argparse.ArgumentTypeError:
    if text.strip().startswith("-"):
      raise argparse.ArgumentTypeError(f"must be at least 1, not {text}") from None
    raise
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
  return value


def feature_name(text: str) -> str:
  if not text.strip():
    raise argparse.ArgumentTypeError("expected a feature name")
  return text


def _number(text: str) -> float:
  try:
    return float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None


def names(text: str) -> tuple:
  found = tuple(name.strip() for name in text.split(",") if name.strip())
  if not found:
    raise argparse.ArgumentTypeError("expected a comma-separated list of feature names")
  return found


# --- the flags --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Flag:
  """One flag of ``python -m beam_job``, with everything each of its descriptions needs."""
  name: str
  help: str  # one text for --help, the template's helpText and the DAG's description (``--`` dropped there)
  label: str  # the Flex Template parameter's label
  regex: str  # the values the Flex Template accepts
  default: Any = None
  type: Optional[Callable] = None
  choices: Optional[Tuple[str, ...]] = None
  switch: bool = False  # takes no value (``--overwrite``); true/false in templates and DAGs
  required: bool = False
  patterns: bool = False  # one or more values, each comma-separated file patterns
  template: bool = True  # also a Flex Template parameter
  pipeline: bool = True  # also one of ``JobOptions`` (--dry_run is not: it is Beam's TestOptions' flag there)
  template_note: str = ""  # what only a template user needs (gcloud's quoting), after the help
  dag_type: str = "string"  # the DAG param's JSON type: string, integer, number or boolean
  dag_bounds: Dict[str, float] = dataclasses.field(default_factory=dict)  # its JSON-schema bounds

  @property
  def text(self) -> str:
    """The help with its default, as every description shows it."""
    if self.switch or self.default is None or "default" in self.help:
      return self.help
    default = f"{self.default:,}" if isinstance(self.default, int) else self.default
    return f"{self.help} Default: {default if default != '' else '(empty)'}."


_PATTERNS = r"^[^\n\r]*[^\s,][^\n\r]*$"
_LIST = r"^[^\n\r]*[^\s,][^\n\r]*$"


def _one_of(choices) -> str:
  return "^(" + "|".join(choices) + ")$"


FLAGS: Tuple[Flag, ...] = (
    Flag("left", "File pattern(s) of the left dataset: one or more values, each a comma-separated list of "
         "globs on any Beam filesystem, e.g. gs://my-bucket/users-*.tfrecord.gz. A pattern that matches no file "
         "is an error. Write \\, for a comma inside a file name (a value that is an existing local file is taken "
         "whole). Without --right, --left is paired with itself.",
         "Left input file pattern(s)", _PATTERNS, required=True, patterns=True,
         template_note="To pass commas with gcloud, use its alternate delimiter: --parameters "
         "^~^left=gs://b/a-*.tfrecord,gs://b/c-*.tfrecord~output=gs://b/out/pairs"),
    Flag("right", "File pattern(s) of the right dataset, as --left, e.g. gs://my-bucket/items-*.tfrecord.gz; "
         "omitted: pair --left with itself (see --self_join).",
         "Right input file pattern(s)", _PATTERNS, patterns=True),
    Flag("output", "Output prefix, e.g. gs://my-bucket/pairs/out: shards PREFIX-SSSSS-of-NNNNN.tfrecord, then "
         "PREFIX-summary.json, written last. No wildcard characters.",
         "Output prefix", r"^[^\s*?\[\]]([^\n\r*?\[\]]*[^\s*?\[\]])?$", required=True),
    Flag("compression", "Input compression: auto decides by file extension (" + sources.detected_suffixes() +
         "), other names are read uncompressed.",
         "Input compression", _one_of(sources.COMPRESSIONS), default="auto", choices=sources.COMPRESSIONS),
    Flag("output_compression", "Output compression; gzip shards end in .tfrecord.gz.",
         "Output compression", _one_of(OUTPUT_COMPRESSIONS), default="uncompressed", choices=OUTPUT_COMPRESSIONS),
    Flag("collision", "What to do with a feature name present on both sides: error (fails before any output is "
         "visible), prefix (rename every feature with --left_prefix / --right_prefix), left or right (that "
         "side's value wins).",
         "Feature name collisions", _one_of(COLLISIONS), default="error", choices=COLLISIONS),
    Flag("left_prefix", "With --collision prefix, put before every left feature name; may be empty.",
         "Prefix of left feature names", r"^[A-Za-z0-9_.:/-]*$", default="left_"),
    Flag("right_prefix", "With --collision prefix, put before every right feature name; may be empty.",
         "Prefix of right feature names", r"^[A-Za-z0-9_.:/-]*$", default="right_"),
    Flag("self_join", "Which pairs of --left with itself, only without --right: the pairs Python's itertools "
         "of that name gives over the records in order (default product).",
         "Pairs of a dataset with itself", _one_of(planning.SELF_JOINS), choices=planning.SELF_JOINS),
    Flag("on_corrupt", "fail: a bad record fails the job, naming file and record. skip: leave it out, count "
         "it and list it in the summary.",
         "Corrupt input records", _one_of(ON_CORRUPT), default="fail", choices=ON_CORRUPT),
    Flag("max_pairs", "Refuse, before writing anything, a job with more pairs: 0 to 2**63 - 1, digits that may "
         "be grouped (1_000_000 or 1,000,000; 1e6 on the command line).",
         "Maximum number of pairs", r"^[0-9][0-9_,]*$", default=1_000_000_000, type=count, dag_type="integer",
         dag_bounds={"minimum": 0}),
    Flag("strategy", "auto broadcasts the right side when its records take at most 64 MiB, else grid.",
         "Join strategy", _one_of(STRATEGIES), default="auto", choices=STRATEGIES),
    Flag("target_shard_mb", "Approximate size of one output shard (one cell), in MB (10^6 bytes), at most 1e6; "
         "a fraction is allowed (0.5).",
         "Target shard size (MB)", r"^([0-9]*[1-9][0-9]*(\.[0-9]+)?|[0-9]*\.[0-9]*[1-9][0-9]*)$", default=256.0,
         type=shard_mb, dag_type="number", dag_bounds={"exclusiveMinimum": 0}),
    Flag("overwrite", "Replace the shards and summary of an earlier run under the same prefix; without it such "
         "a prefix is refused.",
         "Overwrite an earlier run", "^(true|false)$", switch=True, dag_type="boolean"),
    Flag("left_features", "Keep only these left features: comma-separated names before prefixing, e.g. "
         "user_id,user_embedding; omitted: all.",
         "Left features to keep", _LIST, type=names,
         template_note="With gcloud, commas need its alternate delimiter (see left)."),
    Flag("right_features", "Keep only these right features, e.g. item_id,item_tag; omitted: all.",
         "Right features to keep", _LIST, type=names),
    Flag("index_features", "Add each record's ordinal as an int64 feature on each side: left_index and "
         "right_index (under --collision prefix, the prefixes' index).",
         "Add record ordinals", "^(true|false)$", switch=True, dag_type="boolean"),
    Flag("sample_rate", "Keep each pair independently with this probability, in (0, 1] (at least 1e-12), "
         "decided by --seed; 1 keeps every pair.",
         "Pair sampling rate", r"^(1(\.0*)?|0?\.[0-9]*[1-9][0-9]*)$", default=1.0, type=rate, dag_type="number",
         dag_bounds={"exclusiveMinimum": 0, "maximum": 1}),
    Flag("seed", "Seed of --sample_rate and --pairs_per_left: a whole number from -2**63 to 2**63 - 1.",
         "Sampling seed", r"^-?[0-9]+$", default=0, type=seed, dag_type="integer"),
    Flag("group_by", "Pair only records whose feature of this name (before prefixing) holds the same value on "
         "both sides: one int64 or bytes value per record. Omitted: the full product.",
         "Group feature", r"^[^\n\r]*[^\s][^\n\r]*$", type=feature_name),
    Flag("left_group_by", "As --group_by, when the group feature's name differs between the sides: its left "
         "name (with --right_group_by, and --right).",
         "Left group feature", r"^[^\n\r]*[^\s][^\n\r]*$", type=feature_name),
    Flag("right_group_by", "The group feature's right name (with --left_group_by).",
         "Right group feature", r"^[^\n\r]*[^\s][^\n\r]*$", type=feature_name),
    Flag("missing_group", "A record without exactly one group key value: fail (names file, record and "
         "feature) or skip (leave it out, count it and list it in the summary).",
         "Records without a group key", _one_of(MISSING_GROUP), default="fail", choices=MISSING_GROUP),
    Flag("pairs_per_left", "Pair each left record with exactly min(K, eligible) of the right records it would "
         "otherwise be paired with (within its group with --group_by), drawn uniformly by --seed; not with "
         "--sample_rate.",
         "Right records per left record", r"^[0-9]*[1-9][0-9]*$", type=per_left, dag_type="integer",
         dag_bounds={"minimum": 1}),
    Flag("dry_run", "Read the inputs, print the plan (and any problem, with the flag that fixes it) and exit "
         "without writing anything.",
         "Dry run", "^(true|false)$", switch=True, template=False, pipeline=False, dag_type="boolean"),
)
BY_NAME = {flag.name: flag for flag in FLAGS}
DEFAULTS = {flag.name: False if flag.switch else flag.default for flag in FLAGS}


class Patterns(argparse.Action):
  r"""One or more values, each a comma-separated list of file patterns, kept as one comma-separated string.

  An unquoted glob the shell expanded (``--right items/*.gz``) arrives as several values: every one is used.
  A comma inside a file name is written ``\,``; a value that is the path of an existing local file is that
  file, commas and all (escaped here), so a shell-expanded name such as ``a,b.tfrecord`` is not cut in two.
  """

  def __call__(self, parser, namespace, values, option_string=None):
    setattr(namespace, self.dest, ",".join(
        sources.escape_commas(value) if "," in value and _is_local_file(value) else value for value in values))


def _is_local_file(value: str) -> bool:
  return FileSystems.get_scheme(value) is None and os.path.isfile(value)


def add_flags(parser: argparse.ArgumentParser, optional=(), pipeline: bool = False) -> None:
  """Adds the flags of ``FLAGS`` to ``parser``, those named in ``optional`` never required (Beam's own parser,
  which every ``PipelineOptions`` builds, requires none; ``beam_job.verify`` reads --left from the summary);
  ``pipeline=True`` adds only the pipeline options."""
  for flag in FLAGS:
    if pipeline and not flag.pipeline:
      continue
    kwargs = {"help": flag.text}
    if flag.switch:
      kwargs["action"] = "store_true"
    else:
      kwargs.update(default=flag.default, required=flag.required and flag.name not in optional)
      if flag.type is not None:
        kwargs["type"] = flag.type
      if flag.choices is not None:
        kwargs["choices"] = flag.choices
      if flag.patterns:
        kwargs.update(nargs="+", action=Patterns)
    parser.add_argument(f"--{flag.name}", **kwargs)


class JobOptions(PipelineOptions):
  """The job's flags as Beam pipeline options: ``PipelineOptions(argv).view_as(JobOptions).left``."""

  @classmethod
  def _add_argparse_args(cls, parser):
    add_flags(parser, optional=BY_NAME, pipeline=True)


# --- the descriptions made from FLAGS ---------------------------------------------------------------------


def _plain(text: str) -> str:
  """A help text for template and DAG users, who name flags without dashes."""
  return re.sub(r"--(?=[a-z])", "", text)


_IMAGE = {
    "name": "sdk_container_image",
    "label": "Worker container image (Beam pipeline option)",
    "helpText": "The image this template was built from (it holds the job and its dependencies), e.g. "
                "us-central1-docker.pkg.dev/my-project/my-repo/beam-job:20260101. Without it the workers use "
                "Beam's default image, which lacks the job.",
    "isOptional": True,
    "regexes": ["^[a-z0-9][A-Za-z0-9._/:@-]*$"],
    "paramType": "TEXT",
}


def template_metadata() -> dict:
  """``templates/metadata.json``: the Flex Template's parameters, one per flag (but --dry_run), plus the
  worker image Beam option."""
  parameters = []
  for flag in FLAGS:
    if not flag.template:
      continue
    text = ("true or false. " if flag.switch else "") + _plain(flag.text)
    parameters.append({"name": flag.name, "label": flag.label,
                       "helpText": f"{text} {flag.template_note}".strip(),
                       "isOptional": not flag.required, "regexes": [flag.regex], "paramType": "TEXT"})
  return {
      "name": "Pairwise combinations of two TFRecord datasets of tf.train.Example",
      "description": "Writes every pair of a left and a right dataset (or of one dataset with itself) of "
                     "serialized tf.train.Example records, each pair's features merged into one Example, as "
                     "sharded TFRecords PREFIX-SSSSS-of-NNNNN.tfrecord[.gz], then PREFIX-summary.json last. "
                     "Parameters are the flags of python -m beam_job.",
      "streaming": False,
      "parameters": parameters + [_IMAGE],
  }


def dag_flags() -> List[dict]:
  """``templates/dags/job_flags.json``: each flag as an Airflow ``Param`` (null: the job's default applies;
  a switch is a boolean, false by default) and whether the Flex Template takes it."""
  described = []
  for flag in FLAGS:
    if flag.switch:
      param = {"default": False, "type": "boolean"}
    else:
      param = {"default": None, "type": ["null", flag.dag_type], **flag.dag_bounds}
      if flag.choices is not None:
        param["enum"] = [None, *flag.choices]
    param["description"] = _plain(flag.text)
    described.append({"name": flag.name, "template": flag.template, "param": param})
  return described


TEMPLATE_FILES = {os.path.join("templates", "metadata.json"): template_metadata,
                  os.path.join("templates", "dags", "job_flags.json"): dag_flags}


def render(make: Callable[[], Any]) -> str:
  return json.dumps(make(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
  """Writes the template files from ``FLAGS`` under the given project root (default: the current folder)."""
  root = (argv if argv is not None else sys.argv[1:] or ["."])[0]
  for path, make in TEMPLATE_FILES.items():
    with open(os.path.join(root, path), "w", encoding="utf-8") as f:
      f.write(render(make))
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())

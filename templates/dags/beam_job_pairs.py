"""Airflow 3 DAG: run the pairwise job with ``BeamRunPythonPipelineOperator`` (apache-airflow-providers-apache-beam).

The operator runs ``PY_INTERPRETER templates/main.py --runner=RUNNER --labels=airflow-version=... --FLAG=VALUE``
for every job flag and Beam option given, so the job runs in an interpreter of your choice (the project's own
virtualenv, with ``beam_job`` installed), not in Airflow's. Everything comes from the DAG's params, set when
triggering (``airflow dags trigger beam_job_pairs -c '{"left": ..., "output": ...}'``), with Airflow
Variables as the fallback of the deployment-wide ones:

* ``left``, ``right``, ``output`` and the other job flags (``job_flags.json`` beside this file, written from
  ``beam_job.flags``; ``python -m beam_job --help``). A job flag left at null is not passed, so the job's
  own default applies.
* ``runner``: DirectRunner (default), DataflowRunner, FlinkRunner, ...
* ``beam_options``: any other Beam pipeline options as a JSON object, e.g. ``{"direct_num_workers": 2}``, or
  ``{"temp_location": "gs://b/tmp", "sdk_container_image": "IMAGE"}`` for Dataflow, or
  ``{"flink_master": "host:8081", "environment_type": "DOCKER", "environment_config": "IMAGE",
  "parallelism": 4}`` for Flink.
* ``py_interpreter`` (Variable ``beam_job_python``, default ``python3``): the Python that runs the job.
* ``py_file`` (Variable ``beam_job_py_file``, default ``../main.py`` next to this folder): the entry file.
* ``project`` / ``region`` (Variables ``beam_job_gcp_project`` / ``beam_job_gcp_region``): for Dataflow.
"""

from __future__ import annotations

import json
import os

from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.sdk import DAG, Param

# The entry file of templates/, when this DAG is used from a checkout of the project.
DEFAULT_PY_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "main.py")

# The job's flags, written from their one definition (``python -m beam_job.flags``; a test checks the file):
# each as an Airflow Param, null meaning the job's default.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "job_flags.json"), encoding="utf-8") as _f:
  _JOB_FLAGS = json.load(_f)
JOB_FLAGS = tuple(flag["name"] for flag in _JOB_FLAGS)


def _text(description: str) -> Param:
  return Param(None, type=["null", "string"], description=description)


class BeamJobPipelineOperator(BeamRunPythonPipelineOperator):
  """``BeamRunPythonPipelineOperator`` whose ``py_interpreter`` is templated too (it comes from a param)."""

  template_fields = (*BeamRunPythonPipelineOperator.template_fields, "py_interpreter")


with DAG(
    dag_id="beam_job_pairs",
    description="Every pairwise combination of two TFRecord datasets of tf.train.Example, with Apache Beam.",
    schedule=None,
    catchup=False,
    tags=["beam", "beam_job"],
    # Params keep their types in the operator's options: null is left out, true becomes a bare flag.
    render_template_as_native_obj=True,
    user_defined_macros={"default_py_file": DEFAULT_PY_FILE},
    params={
        **{flag["name"]: Param(**flag["param"]) for flag in _JOB_FLAGS},
        "runner": Param("DirectRunner", type="string", description="Beam runner."),
        "beam_options": Param({}, type="object", description="Other Beam pipeline options (flag name: value)."),
        "py_interpreter": _text("Python that runs the job; null: Variable beam_job_python, else python3."),
        "py_file": _text("Entry file; null: Variable beam_job_py_file, else templates/main.py of this checkout."),
        "project": _text("Dataflow: Google Cloud project; null: Variable beam_job_gcp_project."),
        "region": _text("Dataflow: region; null: Variable beam_job_gcp_region, else us-central1."),
    },
) as dag:
  BeamJobPipelineOperator(
      task_id="pairs",
      py_file="{{ params.py_file or var.value.get('beam_job_py_file', default_py_file) }}",
      py_interpreter="{{ params.py_interpreter or var.value.get('beam_job_python', 'python3') }}",
      runner="{{ params.runner }}",
      default_pipeline_options="{{ params.beam_options }}",
      pipeline_options={flag: "{{ params.%s }}" % flag for flag in JOB_FLAGS},
      dataflow_config={
          "job_name": "beam-job-pairs",
          "project_id": "{{ params.project or var.value.get('beam_job_gcp_project', none) }}",
          "location": "{{ params.region or var.value.get('beam_job_gcp_region', 'us-central1') }}",
      },
  )

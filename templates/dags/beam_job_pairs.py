"""Airflow 3 DAG: run the pairwise job with ``BeamRunPythonPipelineOperator`` (apache-airflow-providers-apache-beam).

The operator runs ``PY_INTERPRETER templates/main.py --runner=RUNNER --labels=airflow-version=... --FLAG=VALUE``
for every job flag and Beam option given, so the job runs in an interpreter of your choice (the project's own
virtualenv, with ``beam_job`` installed), not in Airflow's. Everything comes from the DAG's params, set when
triggering (``airflow dags trigger beam_job_pairs -c '{"left": ..., "output": ...}'``), with Airflow
Variables as the fallback of the deployment-wide ones:

* ``left``, ``right``, ``output`` and the other job flags: ``python -m beam_job --help``. A job flag left at
  null is not passed, so the job's own default applies.
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

import os

from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.sdk import DAG, Param

# The entry file of templates/, when this DAG is used from a checkout of the project.
DEFAULT_PY_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "main.py")

# The job's own flags (beam_job.cli.make_parser); tests/test_airflow.py checks that the lists agree.
JOB_FLAGS = ("left", "right", "output", "compression", "output_compression", "collision", "left_prefix",
             "right_prefix", "self_join", "on_corrupt", "max_pairs", "strategy", "target_shard_mb", "overwrite",
             "left_features", "right_features", "index_features", "sample_rate", "seed", "dry_run")


def _choice(*choices: str, description: str) -> Param:
  return Param(None, type=["null", "string"], enum=[None, *choices], description=description)


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
        "left": _text("File pattern(s), comma-separated, of the left dataset (required)."),
        "right": _text("File pattern(s) of the right dataset; null pairs left with itself."),
        "output": _text("Output prefix (required): PREFIX-SSSSS-of-NNNNN.tfrecord and PREFIX-summary.json."),
        "compression": _choice("auto", "uncompressed", "gzip", "zlib", description="Input compression."),
        "output_compression": _choice("uncompressed", "gzip", description="Output compression."),
        "collision": _choice("error", "prefix", "left", "right", description="Feature names on both sides."),
        "left_prefix": _text("With collision=prefix (may be empty)."),
        "right_prefix": _text("With collision=prefix (may be empty)."),
        "self_join": _choice("product", "combinations", "combinations_with_replacement",
                             description="Which pairs of left with itself (only without right)."),
        "on_corrupt": _choice("fail", "skip", description="What a corrupt input record does."),
        "max_pairs": Param(None, type=["null", "integer"], minimum=0,
                           description="Refuse, before writing, a job with more pairs."),
        "strategy": _choice("auto", "broadcast", "grid", description="Join strategy."),
        "target_shard_mb": Param(None, type=["null", "number"], exclusiveMinimum=0,
                                 description="Approximate size of one output shard, in MB."),
        "overwrite": Param(False, type="boolean", description="Replace an earlier run under the same prefix."),
        "left_features": _text("Comma-separated left features to keep (names before prefixing); null: all."),
        "right_features": _text("Comma-separated right features to keep; null: all."),
        "index_features": Param(False, type="boolean", description="Add each record's ordinal as feature 'index'."),
        "sample_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=1,
                             description="Keep each pair with this probability."),
        "seed": Param(None, type=["null", "integer"], description="Seed of sample_rate."),
        "dry_run": Param(False, type="boolean", description="Read the inputs, log the plan, write nothing."),
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

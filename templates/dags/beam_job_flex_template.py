"""Airflow 3 DAG: launch the job's Dataflow Flex Template with ``DataflowStartFlexTemplateOperator``
(apache-airflow-providers-google) and wait for the job to end.

Build the image and the template first (templates/README.md). Everything comes from the DAG's params, set
when triggering, with Airflow Variables as the fallback of the deployment-wide ones:

* ``left``, ``right``, ``output`` and the other job flags: the template's parameters (templates/metadata.json);
  a job flag left at null is not passed, so the job's own default applies.
* ``template_file`` (Variable ``beam_job_template_file``): gs:// path of the template spec that
  ``gcloud dataflow flex-template build`` wrote.
* ``sdk_container_image`` (Variable ``beam_job_image``): the image the template was built from; the workers
  run it, so they have the job and its dependencies.
* ``temp_location`` / ``staging_location`` (Variables ``beam_job_temp_location`` / ``beam_job_staging_location``).
* ``project`` / ``region`` (Variables ``beam_job_gcp_project`` / ``beam_job_gcp_region``, default us-central1).
The connection is ``google_cloud_default``.
"""

from __future__ import annotations

import json
import os

from airflow.providers.google.cloud.operators.dataflow import DataflowStartFlexTemplateOperator
from airflow.sdk import DAG, Param, get_current_context, task

# The job's flags, written from their one definition (``python -m beam_job.flags``; a test checks the file):
# each as an Airflow Param, null meaning the job's default; those the template takes are sent.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "job_flags.json"), encoding="utf-8") as _f:
  _JOB_FLAGS = [flag for flag in json.load(_f) if flag["template"]]
JOB_PARAMETERS = tuple(flag["name"] for flag in _JOB_FLAGS)


def flex_template_body(params: dict, *, template_file: str, sdk_container_image: str = "",
                       temp_location: str = "", staging_location: str = "",
                       job_name: str = "beam-job-pairs") -> dict:
  """The request body of ``projects.locations.flexTemplates.launch`` for these params."""
  if not template_file:
    raise ValueError("no template: set the param template_file or the Variable beam_job_template_file")
  parameters = {}
  for name in JOB_PARAMETERS:
    value = params.get(name)
    if value is None:
      continue
    parameters[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
  environment = {"tempLocation": temp_location, "stagingLocation": staging_location,
                 "sdkContainerImage": sdk_container_image}
  return {"launchParameter": {
      "jobName": job_name,
      "containerSpecGcsPath": template_file,
      "parameters": parameters,
      "environment": {key: value for key, value in environment.items() if value},
  }}


with DAG(
    dag_id="beam_job_flex_template",
    description="Launch the pairwise job's Dataflow Flex Template and wait for it.",
    schedule=None,
    catchup=False,
    tags=["beam", "beam_job", "dataflow"],
    params={
        **{flag["name"]: Param(**flag["param"]) for flag in _JOB_FLAGS},
        "template_file": Param(None, type=["null", "string"], description="gs:// path of the template spec."),
        "sdk_container_image": Param(None, type=["null", "string"], description="The template's image."),
        "temp_location": Param(None, type=["null", "string"]),
        "staging_location": Param(None, type=["null", "string"]),
        "project": Param(None, type=["null", "string"]),
        "region": Param(None, type=["null", "string"]),
    },
) as dag:

  @task
  def launch_body(template_file: str, sdk_container_image: str, temp_location: str,
                  staging_location: str) -> dict:
    return flex_template_body(get_current_context()["params"], template_file=template_file,
                              sdk_container_image=sdk_container_image, temp_location=temp_location,
                              staging_location=staging_location)

  body = launch_body(
      template_file="{{ params.template_file or var.value.get('beam_job_template_file', '') }}",
      sdk_container_image="{{ params.sdk_container_image or var.value.get('beam_job_image', '') }}",
      temp_location="{{ params.temp_location or var.value.get('beam_job_temp_location', '') }}",
      staging_location="{{ params.staging_location or var.value.get('beam_job_staging_location', '') }}",
  )
  DataflowStartFlexTemplateOperator(
      task_id="start_flex_template",
      body=body,
      project_id="{{ params.project or var.value.get('beam_job_gcp_project', '') }}",
      location="{{ params.region or var.value.get('beam_job_gcp_region', 'us-central1') }}",
      wait_until_finished=True,
  )

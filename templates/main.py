"""Entry file of the Dataflow Flex Template (``FLEX_TEMPLATE_PYTHON_PY_FILE``), also the ``py_file`` of the
Airflow DAG that runs the job with ``BeamRunPythonPipelineOperator``.

It runs ``beam_job.cli.main`` with the arguments it is given, after adjustments that only a launcher
needs:

* On Dataflow the launcher must return once the job is submitted: the Flex Template launcher is a short-lived
  VM (and when it passes ``--template_location``, Beam only writes the job description, so
  ``wait_until_finish`` would fail for want of a job id), and an Airflow task on Dataflow waits through its
  own Dataflow hook. So for
  the DataflowRunner ``--no_wait_until_finish`` is added when absent: ``beam_job.cli.run`` then returns
  after submitting, and the job itself publishes the shards and the summary when it ends. Local runners
  ignore the flag (the job always waits for them) and Flink is left alone (a Flink submission waits for
  the job unless the caller passes the flag).
* On Dataflow it also logs Beam's job submission at INFO ("Created job with id: [...]" and the console URL):
  Airflow's Beam operator finds the job id in that line.
* Flex Template parameters arrive as ``--name=value``. The job's on/off flags (``--overwrite``) take no
  value, so ``--overwrite=true`` becomes ``--overwrite`` and ``--overwrite=false`` is dropped.
"""

import logging
import os
import sys
from typing import List, Optional, Sequence

_DATAFLOW_RUNNERS = ("dataflowrunner", "dataflow", "testdataflowrunner")
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no", "")


def _import_cli():
  try:
    from beam_job import cli
  except ImportError:  # run from a checkout without installing the package: the repository root is ../
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from beam_job import cli
  return cli


def _switches(cli) -> List[str]:
  """The job's flags that take no value (store_true), e.g. ``--overwrite``."""
  import argparse
  return [option for action in cli.make_parser()._actions  # pylint: disable=protected-access
          if isinstance(action, argparse._StoreTrueAction)  # pylint: disable=protected-access
          for option in action.option_strings]


def _value(argv: Sequence[str], flag: str) -> Optional[str]:
  """The last value given to ``flag`` (``--flag value`` or ``--flag=value``), None when absent."""
  found = None
  for i, arg in enumerate(argv):
    if arg == flag and i + 1 < len(argv):
      found = argv[i + 1]
    elif arg.startswith(flag + "="):
      found = arg[len(flag) + 1:]
  return found


def _present(argv: Sequence[str], flag: str) -> bool:
  return any(arg == flag or arg.startswith(flag + "=") for arg in argv)


def launcher_argv(argv: Sequence[str], switches: Sequence[str] = ("--overwrite",)) -> List[str]:
  """``argv`` as ``beam_job.cli`` should see it when started by a launcher (see the module docstring)."""
  out = []
  for arg in argv:
    flag, eq, value = arg.partition("=")
    if eq and flag in switches:
      if value.strip().lower() in _TRUE:
        out.append(flag)
      elif value.strip().lower() not in _FALSE:
        raise SystemExit(f"error: {flag} takes true or false, not {value!r}")
      continue
    out.append(arg)
  runner = _value(out, "--runner")
  if runner is None and (_present(out, "--template_location") or _present(out, "--dataflow_job_file")):
    out.append("--runner=DataflowRunner")  # only Dataflow reads a template location
    runner = "DataflowRunner"
  if is_dataflow(out) and not _present(out, "--no_wait_until_finish"):
    out.append("--no_wait_until_finish")
  return out


def is_dataflow(argv: Sequence[str]) -> bool:
  return (_value(argv, "--runner") or "").rsplit(".", 1)[-1].lower() in _DATAFLOW_RUNNERS


def main(argv: Optional[Sequence[str]] = None) -> int:
  cli = _import_cli()
  argv = launcher_argv(sys.argv[1:] if argv is None else list(argv), _switches(cli))
  if is_dataflow(argv):  # the job's own logging shows warnings only; the submission's INFO lines are wanted
    logging.getLogger("apache_beam.runners.dataflow.internal.apiclient").setLevel(logging.INFO)
  return cli.main(argv)


if __name__ == "__main__":
  sys.exit(main())

"""The Airflow virtualenv of tests/test_airflow.py: built on first use, reused while its pins stay the same.

A module of its own, without TensorFlow or Beam, so that conftest can check it and start its install at the
start of a session in a fraction of a second.
"""

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.environ.get("BEAM_JOB_AIRFLOW_VENV") or os.path.join(ROOT, ".venv-airflow")
REQUIREMENTS = ["apache-airflow==3.3.2", "apache-airflow-providers-apache-beam==6.3.1",
                "apache-airflow-providers-google==22.8.0"]
CONSTRAINTS = os.path.join(ROOT, "tests", "airflow-constraints.txt")
_INSTALL_TIMEOUT = 1500
RUN_TIMEOUT = 600


def clean_env() -> dict:
  """This process's environment without anything that would point Airflow or Python elsewhere."""
  return {k: v for k, v in os.environ.items()
          if not k.startswith("AIRFLOW") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def run(cmd, timeout, env=None, check=True):
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or clean_env(),
                          stdin=subprocess.DEVNULL)
  if check and result.returncode != 0:
    raise AssertionError(f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
                         f"--- stdout\n{result.stdout[-8000:]}\n--- stderr\n{result.stderr[-8000:]}")
  return result


def _install_key() -> str:
  with open(CONSTRAINTS, "rb") as f:
    constraints = f.read()
  return hashlib.sha256(repr((REQUIREMENTS, sys.version_info[:2])).encode() + constraints).hexdigest()


def ready() -> bool:
  """Whether the Airflow virtualenv exists and was installed from today's requirements and constraints."""
  marker = os.path.join(VENV, ".installed")
  if not (os.path.exists(os.path.join(VENV, "bin", "python")) and os.path.exists(marker)):
    return False
  with open(marker, encoding="utf-8") as f:
    return f.read().strip() == _install_key()


def ensure() -> str:
  """The python of the Airflow virtualenv, created or rebuilt when missing or out of date."""
  python = os.path.join(VENV, "bin", "python")
  marker = os.path.join(VENV, ".installed")
  key = _install_key()
  lock_path = os.path.join(tempfile.gettempdir(), "beam-job-airflow-venv-" +
                           hashlib.sha256(VENV.encode()).hexdigest()[:12] + ".lock")
  with open(lock_path, "w", encoding="utf-8") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # two test sessions at once: one installs, the other waits
    if ready():
      return python
    shutil.rmtree(VENV, ignore_errors=True)
    run([sys.executable, "-m", "venv", VENV], timeout=300)
    pip = [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run(pip + ["install", "-q", "--upgrade", "pip"], timeout=300)
    install = pip + ["install", "-q", "--retries", "10", "--timeout", "60", "-c", CONSTRAINTS, *REQUIREMENTS]
    try:
      run(install, timeout=_INSTALL_TIMEOUT)
    except (AssertionError, subprocess.TimeoutExpired):  # a dropped download: once more, pip's cache keeps the rest
      run(install, timeout=_INSTALL_TIMEOUT)
    run(pip + ["check"], timeout=300)
    with open(marker, "w", encoding="utf-8") as f:
      f.write(key + "\n")
    return python

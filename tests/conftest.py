"""Shared pytest setup. Helpers live in tests/helpers.py (``from tests.helpers import ...``)."""

import os
import sys

# Before anything imports TensorFlow: keep its C++ logging quiet.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Make ``tests`` and ``beam_job`` importable however pytest is started.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)


# --- A GCS server on loopback (tests/gcs_emulator.py), started only by the tests that ask for it. ---

import gc  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
  """The session's GCS emulator (a ``tests.gcs_emulator.Emulator``), with one bucket named by ``gcs_emulator.bucket``.

  For the session, ``STORAGE_EMULATOR_HOST``, ``GOOGLE_APPLICATION_CREDENTIALS`` (a fake ``authorized_user``
  file) and ``GOOGLE_CLOUD_PROJECT`` point at it, in this process and so in every subprocess a test starts;
  they are restored, Beam's cached credentials forgotten and the server stopped by its pid afterwards.
  """
  from tests import gcs_emulator as emulators
  with pytest.MonkeyPatch.context() as patch:
    emulator = emulators.start(str(tmp_path_factory.mktemp("gcs_emulator")))
    try:
      for name, value in emulator.environ().items():
        patch.setenv(name, value)
      emulators.reset_beam_credentials()
      emulator.bucket = emulator.create_bucket("test-bucket")
      yield emulator
    finally:
      # A GCS writer whose close() failed is still open and retries its upload when collected; collect such
      # leftovers while the server still answers, or the process would retry for minutes at exit.
      gc.collect()
      emulator.stop()
      emulators.reset_beam_credentials()


@pytest.fixture
def gcs_bucket(gcs_emulator):
  """A new, empty bucket of the session's emulator, as ``gs://NAME`` (no trailing slash)."""
  return f"gs://{gcs_emulator.create_bucket()}"


@pytest.fixture
def gcs_prefix(gcs_emulator, request):
  """A folder no other test uses in the session's bucket, as ``gs://test-bucket/<test>-<random>`` (no
  trailing slash)."""
  name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
  return f"gs://{gcs_emulator.bucket}/{name}-{uuid.uuid4().hex[:8]}"


# --- The Airflow virtualenv (tests/test_airflow.py) installs in the background while the other tests run. ---

import subprocess  # noqa: E402

_AIRFLOW_TESTS = "test_airflow.py"
_airflow_install = None


def pytest_collection_modifyitems(session, config, items):
  """Puts the Airflow tests last (with pytest-xdist, every worker collects the same order)."""
  items.sort(key=lambda item: item.fspath.basename == _AIRFLOW_TESTS)  # stable: the rest keep their order


def _selects_airflow_tests(args) -> bool:
  """Whether the command line names test_airflow.py or a folder holding it (``pytest tests``)."""
  for arg in args or ["."]:
    path = os.path.abspath(arg.split("::", 1)[0])
    if os.path.basename(path) == _AIRFLOW_TESTS or os.path.isfile(os.path.join(path, _AIRFLOW_TESTS)):
      return True
  return False


def pytest_sessionstart(session):
  """When the Airflow tests will run and their virtualenv is missing or out of date, starts installing it now
  (pip, a minute or more on a fresh clone), once, in the main process (not in pytest-xdist's workers), so that
  it overlaps the other tests instead of adding to them; the tests' own ``airflow_venv.ensure`` waits on the
  same lock."""
  global _airflow_install  # pylint: disable=global-statement
  config = session.config
  if hasattr(config, "workerinput") or not _selects_airflow_tests(config.args):
    return
  from tests import airflow_venv  # pylint: disable=import-outside-toplevel  # (no TensorFlow: fast)
  if airflow_venv.ready():
    return
  log = os.path.join(_ROOT, ".venv-airflow.log")
  with open(log, "w", encoding="utf-8") as out:
    _airflow_install = subprocess.Popen(
        [sys.executable, "-c", "from tests import airflow_venv; airflow_venv.ensure()"],
        cwd=_ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
  reporter = config.pluginmanager.get_plugin("terminalreporter")
  if reporter is not None:
    reporter.write_line(f"installing Airflow's test virtualenv in the background (pid {_airflow_install.pid}, "
                        f"log {log}); its tests run last")


def pytest_sessionfinish(session, exitstatus):
  """Never leaves the installer behind: stopped by its pid (its process group) if it is still running."""
  if _airflow_install is not None and _airflow_install.poll() is None:
    os.killpg(_airflow_install.pid, 15)
    _airflow_install.wait(timeout=60)

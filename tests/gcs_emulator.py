"""A Google Cloud Storage server on loopback for tests: gcp-storage-emulator in a subprocess, in memory.

google-cloud-storage (and so Beam's ``gcsio``) talks to it when ``STORAGE_EMULATOR_HOST`` names it. Beam still
asks google-auth for credentials first, and without any it probes the GCE metadata server with retries for
about 20 s before going anonymous; a fake ``authorized_user`` file whose token never expires answers at once and
never needs a refresh, so no request leaves the machine.

The emulator is not GCS. What it does differently, as measured with Beam 2.77 (tests/test_gcs.py checks each
point): by itself it ignores every generation precondition (``ifGenerationMatch`` and friends), so by default
it runs through tests/gcs_emulator_server.py, which enforces them on single requests (not in batches); it
answers DELETE of a resumable upload session (how ``BlobWriter.terminate`` cancels an upload) with 501 and
never commits that session; its server handles one request at a time.
"""

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Dict, Iterator, Optional

PROJECT = "test-project"
_READY_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0

# Token and expiry make google-auth use the credentials as they are; the refresh token is never used.
_FAKE_CREDENTIALS = {
    "type": "authorized_user",
    "client_id": "fake-client-id.apps.googleusercontent.com",
    "client_secret": "fake-client-secret",
    "refresh_token": "fake-refresh-token",
    "token": "fake-access-token",
    "expiry": "2999-01-01T00:00:00Z",
    "quota_project_id": PROJECT,
}


def write_fake_credentials(path: str) -> str:
  """Writes an ``authorized_user`` credentials file that google-auth accepts without any network call."""
  with open(path, "w", encoding="utf-8") as f:
    json.dump(_FAKE_CREDENTIALS, f)
  return path


def free_port() -> int:
  """A port nothing listens on right now (another process may take it before the emulator does; start()
  retries with a new one then)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def reset_beam_credentials() -> None:
  """Forgets the credentials Beam caches per process, so the next GCS call looks them up in the current
  environment (Beam keeps the first answer for the life of the process)."""
  from apache_beam.internal.gcp import auth
  with auth._Credentials._credentials_lock:  # pylint: disable=protected-access
    auth._Credentials._credentials_init = False  # pylint: disable=protected-access
    auth._Credentials._credentials = None  # pylint: disable=protected-access


class Emulator:
  """One running emulator process; ``stop()`` ends it by its pid."""

  def __init__(self, process: subprocess.Popen, port: int, log_path: str, credentials_path: str):
    self.process = process
    self.port = port
    self.log_path = log_path
    self.credentials_path = credentials_path
    self.bucket: Optional[str] = None  # the bucket the session fixture creates

  @property
  def host(self) -> str:
    """The value of ``STORAGE_EMULATOR_HOST`` (it includes the scheme)."""
    return f"http://127.0.0.1:{self.port}"

  def environ(self) -> Dict[str, str]:
    """What a process needs in its environment to use this emulator through Beam or google-cloud-storage."""
    return {"STORAGE_EMULATOR_HOST": self.host, "GOOGLE_APPLICATION_CREDENTIALS": self.credentials_path,
            "GOOGLE_CLOUD_PROJECT": PROJECT}

  def alive(self) -> bool:
    return self.process.poll() is None

  def answers(self) -> bool:
    try:
      with urllib.request.urlopen(self.host + "/", timeout=2) as response:
        return response.status == 200
    except (OSError, urllib.error.URLError):
      return False

  def log_tail(self, lines: int = 20) -> str:
    try:
      with open(self.log_path, encoding="utf-8", errors="replace") as f:
        return "".join(f.readlines()[-lines:])
    except OSError:
      return ""

  def create_bucket(self, name: Optional[str] = None) -> str:
    """Creates a bucket (no soft delete, so a deleted object is gone) and returns its name."""
    name = name or f"bucket-{uuid.uuid4().hex[:12]}"
    body = json.dumps({"name": name, "softDeletePolicy": {"retentionDurationSeconds": 0}}).encode()
    request = urllib.request.Request(f"{self.host}/storage/v1/b?project={PROJECT}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
      if response.status != 200:
        raise RuntimeError(f"creating bucket {name!r} answered {response.status}")
    return name

  def fail_listings(self, prefix: str, status: int = 403, times: int = 100) -> None:
    """Makes the next ``times`` listings whose prefix starts with ``prefix`` (an object name, no bucket) answer
    ``status`` (tests/gcs_emulator_server.py's fault switch); ``fail_listings("", times=0)`` disarms it."""
    body = json.dumps({"prefix": prefix, "status": status, "times": times}).encode()
    request = urllib.request.Request(f"{self.host}/_test/list_fault", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
      if response.status != 200:
        raise RuntimeError(f"arming the listing fault answered {response.status}")

  def client(self):
    """A google-cloud-storage client for this emulator (anonymous: the emulator checks nothing)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    return storage.Client(project=PROJECT, credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": self.host})

  def stop(self) -> None:
    """Ends the emulator by its pid: SIGTERM, then SIGKILL if it has not exited in time."""
    if self.process.poll() is None:
      self.process.terminate()
      try:
        self.process.wait(_STOP_TIMEOUT_S)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait(_STOP_TIMEOUT_S)


_WITH_PRECONDITIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcs_emulator_server.py")


def _launch(folder: str, port: int, credentials_path: str, preconditions: bool) -> Emulator:
  log_path = os.path.join(folder, f"emulator-{port}.log")
  program = [_WITH_PRECONDITIONS] if preconditions else ["-m", "gcp_storage_emulator"]
  with open(log_path, "wb") as log:
    process = subprocess.Popen(
        [sys.executable, *program, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
  return Emulator(process, port, log_path, credentials_path)


def start(folder: str, preconditions: bool = True, attempts: int = 3) -> Emulator:
  """Starts an emulator on 127.0.0.1 and a free port and waits (bounded) until it answers.

  ``folder`` receives its log and the fake credentials file. ``preconditions``: answer 412 as GCS does when
  a generation precondition does not hold (tests/gcs_emulator_server.py); False runs the emulator as it is.
  Raises RuntimeError with the log's tail if it does not come up.
  """
  credentials_path = write_fake_credentials(os.path.join(folder, "fake-adc.json"))
  problem = ""
  for _ in range(attempts):
    emulator = _launch(folder, free_port(), credentials_path, preconditions)
    deadline = time.monotonic() + _READY_TIMEOUT_S
    while time.monotonic() < deadline and emulator.alive():
      if emulator.answers():
        return emulator
      time.sleep(0.1)
    emulator.stop()
    problem = f"exit status {emulator.process.returncode}; log:\n{emulator.log_tail()}"
  raise RuntimeError(f"the GCS emulator did not answer on 127.0.0.1 after {attempts} attempt(s): {problem}")


@contextlib.contextmanager
def running(folder: str, preconditions: bool = True) -> Iterator[Emulator]:
  """``start()`` and, whatever happens, ``stop()``."""
  emulator = start(folder, preconditions)
  try:
    yield emulator
  finally:
    emulator.stop()

"""Multi-processing runs and their SDK worker processes (``beam_job.workers``), end to end with kill -9.

(1) One worker killed in the middle of a run: the CLI fails within a bounded time, with one line naming the
worker, exit status 1, and leaves nothing under the prefix (no shard, summary, lease or temporary folder).
(2) The CLI killed in the middle of a run: every worker it started is gone soon after.

Each job runs in its own session, killed with its process group if a test fails, so a hang fails the test
instead of the session. Workers are found by the variable the CLI names itself in (``workers.RUN_BY``).
"""

import os
import signal
import subprocess
import sys
import threading
import time

from beam_job import workers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.join(os.path.dirname(ROOT), "shared", "realdata")
# 5,012 x 100 records: 501,200 pairs, about 8 s of work for two workers on an idle 2-core machine.
_JOB = ["--left", os.path.join(REAL, "taxi_external", "data_tfrecord-00001-of-00002.gz"),
        "--right", os.path.join(REAL, "penguin_eval", "data_tfrecord-00000-of-00001.gz"), "--collision", "prefix",
        "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
_TIMEOUT = 60


def _read(path: str) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError:
    return b""


def _alive(pid: int) -> bool:
  stat = _read(f"/proc/{pid}/stat")
  return bool(stat) and stat.rsplit(b")", 1)[1].split()[0] != b"Z"


def _workers_of(cli_pid: int) -> dict:
  """{pid: True if it has imported beam_job} of the SDK worker processes (python and their ``sh -c``)."""
  mark = f"{workers.RUN_BY}={cli_pid}:".encode()
  found = {}
  for entry in filter(str.isdigit, os.listdir("/proc")):
    if b"sdk_worker_main" in _read(f"/proc/{entry}/cmdline") and any(
        item.startswith(mark) for item in _read(f"/proc/{entry}/environ").split(b"\0")):
      found[int(entry)] = b"_fastframes" in _read(f"/proc/{entry}/maps")
  return found


def _start(output: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "beam_job", *_JOB, "--output", output], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _running_workers(job: subprocess.Popen) -> list:
  """The python worker processes, once both run beam_job code (the run is under way)."""
  deadline = time.monotonic() + _TIMEOUT
  while time.monotonic() < deadline and job.poll() is None:
    found = _workers_of(job.pid)
    python = [pid for pid in found if not _read(f"/proc/{pid}/cmdline").startswith(b"/bin/sh")]
    if len(python) == 2 and all(found[pid] for pid in python):
      return sorted(python)
    time.sleep(0.1)
  raise AssertionError(f"the workers did not start: {job.poll()}")


def _kill_group(job: subprocess.Popen) -> None:
  if job.poll() is None:
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()


def test_a_killed_worker_fails_the_run_with_one_line_and_nothing_published(tmp_path):
  output = tmp_path / "out" / "pairs"
  output.parent.mkdir()
  job = _start(str(output))
  try:
    victim = _running_workers(job)[0]
    started = set(_workers_of(job.pid))
    os.kill(victim, signal.SIGKILL)
    _, err = job.communicate(timeout=_TIMEOUT)
  finally:
    _kill_group(job)
  assert job.returncode == 1, err[-3000:]
  line = (f"error: SDK worker process {victim} of the multi-processing run died (exit status 137: killed by "
          "SIGKILL); the run was abandoned")
  assert [x for x in err.splitlines() if x.startswith("error:")] == [line]
  assert err.splitlines()[-1] == line and "Traceback" not in err, err[-3000:]
  assert sorted(os.listdir(output.parent)) == []  # no shard, summary, lease or temporary folder
  assert [pid for pid in started if _alive(pid)] == []


def test_killing_the_cli_ends_every_worker(tmp_path):
  job = _start(str(tmp_path / "pairs"))
  started = set()
  try:
    _running_workers(job)
    started = set(_workers_of(job.pid))
    os.kill(job.pid, signal.SIGKILL)
    job.communicate(timeout=_TIMEOUT)
    deadline = time.monotonic() + 10  # each worker checks every second that the CLI lives
    while time.monotonic() < deadline and any(_alive(pid) for pid in started):
      time.sleep(0.1)
    left = [pid for pid in started if _alive(pid)]
  finally:
    _kill_group(job)
    for pid in started:
      if _alive(pid):
        os.kill(pid, signal.SIGKILL)
  assert len(started) == 4 and left == []  # two workers and the sh -c above each


def test_exit_statuses_are_told_as_signals_when_they_are():
  assert workers._how(137) == "exit status 137: killed by SIGKILL"  # pylint: disable=protected-access
  assert workers._how(-15) == "exit status -15: killed by SIGTERM"  # pylint: disable=protected-access
  assert workers._how(1) == "exit status 1"  # pylint: disable=protected-access


def test_the_plugin_is_added_once_to_beams_options():
  assert workers.with_plugin({"beam_plugins": None})["beam_plugins"] == ["beam_job.workers"]
  assert workers.with_plugin({"beam_plugins": ["x", "beam_job.workers"]})["beam_plugins"] == ["x", "beam_job.workers"]


def test_a_dead_process_not_yet_reaped_is_not_alive():
  """A killed CLI stays a zombie until its parent reaps it: its workers and its lease must take it for dead
  (else a parent that waits for the workers' output before reaping would wait forever)."""
  from beam_job import lease  # pylint: disable=import-outside-toplevel
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  deadline = time.monotonic() + 30
  while time.monotonic() < deadline and _read(f"/proc/{child.pid}/stat").rsplit(b")", 1)[1].split()[0] != b"Z":
    time.sleep(0.05)
  try:
    assert lease.process_start(child.pid) is None
    assert lease.process_start(os.getpid()) is not None
  finally:
    child.wait()


def test_a_worker_that_connects_after_the_runner_closed_its_connection_is_ended():
  """Beam's runner ends a worker's control stream only once the worker has connected, then waits for the worker
  to exit. A worker connecting after that (still starting when a failed run closed) waits for a request forever,
  and so did the runner: ``join_ending_late`` closes the connection again while the worker lives. Beam's own
  ControlConnection, and a worker thread that does what an SDK worker does with its control stream."""
  import queue  # pylint: disable=import-outside-toplevel
  from apache_beam.runners.portability.fn_api_runner import worker_handlers  # pylint: disable=import-outside-toplevel
  control = worker_handlers.ControlConnection()
  control.close()  # the run ended before the worker connected: nothing is sent to it
  responses = queue.Queue()

  def stream():  # the worker's responses, until it ends its side of the stream
    while True:
      response = responses.get()
      if response is None:
        return
      yield response

  def worker():
    control.set_input(stream())  # connects, late
    while control.get_req() is not worker_handlers.BeamFnControlServicer._DONE_MARKER:  # pylint: disable=protected-access
      pass
    responses.put(None)  # the end of its stream: the worker exits

  thread = threading.Thread(target=worker, daemon=True)
  thread.start()
  thread.join(2 * workers.CHECK_SECONDS)
  assert thread.is_alive()  # what Beam's stop_worker (a plain join) would wait for forever
  waiter = threading.Thread(target=workers.join_ending_late, args=(thread, control), daemon=True)
  waiter.start()
  waiter.join(10 * workers.CHECK_SECONDS)
  assert not waiter.is_alive() and not thread.is_alive()


def test_multi_processing_runs_stop_their_workers_with_the_bounded_stop():
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=import-outside-toplevel
  from apache_beam.portability import python_urns  # pylint: disable=import-outside-toplevel
  from apache_beam.runners.portability.fn_api_runner import worker_handlers  # pylint: disable=import-outside-toplevel
  from beam_job import cli  # pylint: disable=import-outside-toplevel
  cli.local_runner(PipelineOptions(["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"]))
  handler, _ = worker_handlers.WorkerHandler._registered_environments[python_urns.SUBPROCESS_SDK]  # pylint: disable=protected-access
  assert issubclass(handler, worker_handlers.SubprocessSdkWorkerHandler)
  assert handler.stop_worker is not worker_handlers.SubprocessSdkWorkerHandler.stop_worker

"""Multi-processing local runs: a dead SDK worker fails the run, and no worker outlives the process it serves.

With ``--direct_running_mode=multi_processing`` Beam's FnApiRunner starts each SDK worker as ``sh -c 'python -m
apache_beam.runners.worker.sdk_worker_main'`` from a thread (``local_job_service.SubprocessSdkWorker.run``). When
a worker dies, that thread raises ``RuntimeError('Worker subprocess exited with return code N')`` that nobody
reads, and the runner either fails with a traceback ("Channel closed prematurely") or waits forever for a bundle
the worker will never answer. When the runner's process dies (kill -9), a worker in the middle of a bundle, or
one still starting, keeps running. Two guards, both local to this machine:

- The CLI runs the pipeline ``supervised``: it names itself (pid and start time, so a reused pid is not taken for
  it) in ``RUN_BY``, which every worker inherits, and watches Beam's worker threads. A worker that ends with a
  non-zero status while the run is in progress (a normal shutdown exits 0, inside the runner's ``close_all``)
  fails the run: the other workers are killed, the main thread is interrupted, and the run ends with
  ``WorkerLost``, one line naming the worker. Should Beam's unwinding hang, the process cleans up, prints the
  line and exits 1 after ``UNWIND_SECONDS``.
- Each worker imports this module at startup (``--beam_plugins``, which ``sdk_worker_main`` imports before it
  connects) and then ends itself within ``CHECK_SECONDS`` of the process named in ``RUN_BY`` going away.
- A worker that connects late is ended too (``ending_late_workers``). When a run ends, Beam's ``close_all``
  ends each worker's control stream, then waits for the worker process to exit; but it ends the stream only of
  a worker that has connected. A worker still starting when a failed run closes connects afterwards and waits
  for a request forever, and the runner waits for it forever: a failing run printed nothing and never exited
  (2 of 270 failing multi-processing runs on a loaded machine, and once in CI; its stacks showed every worker
  waiting for a request and the runner in ``stop_worker``). While the worker lives, its connection is closed again: a no-op, or the
  end of a late worker's stream, after which it exits as any other does.
"""

import contextlib
import functools
import logging
import os
import re
import signal
import threading
import time
from typing import Callable, Iterator, Optional, Set

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from beam_job import lease, quiet

_LOG = logging.getLogger(__name__)

RUN_BY = "BEAM_JOB_RUN_BY"  # "<pid>:<start time>" of the process that runs the pipeline
PLUGIN = __name__
CHECK_SECONDS = 1.0  # how often a worker checks that its runner lives
SCAN_SECONDS = 0.5  # how often the runner lists its workers (to name a dead one by its pid)
UNWIND_SECONDS = 10.0  # how long the runner's own unwinding may take before the process exits anyway
_WORKER_MODULE = b"apache_beam.runners.worker.sdk_worker_main"
_BEAM_THREAD = "run_worker"  # local_job_service's thread that waits for one worker process
_EXIT_CODE = re.compile(r"exited with return code (-?\d+)")


class WorkerLost(RuntimeError):
  """An SDK worker process of a multi-processing run died before the run ended."""


def multi_processing(options: PipelineOptions) -> bool:
  return options.view_as(DirectOptions).direct_running_mode == "multi_processing"


def with_plugin(all_options: dict) -> dict:
  """``all_options`` (``PipelineOptions.get_all_options()``) with this module in ``beam_plugins``, so that each
  SDK worker imports it first thing."""
  plugins = list(all_options.get("beam_plugins") or [])
  return {**all_options, "beam_plugins": plugins + [PLUGIN] if PLUGIN not in plugins else plugins}


def _me() -> str:
  return f"{os.getpid()}:{lease.process_start(os.getpid())}"


def _is_alive(named: str) -> bool:
  pid, start = named.split(":", 1)
  return lease.process_start(int(pid)) == start


def _end_with_runner(named: str) -> None:
  while _is_alive(named):
    time.sleep(CHECK_SECONDS)
  os._exit(1)  # pylint: disable=protected-access  # the runner is gone: nobody will read what this worker does


def _watch_runner() -> None:
  """In an SDK worker started by a supervised run: a daemon thread that ends the worker with its runner."""
  named = os.environ.get(RUN_BY, "")
  if re.fullmatch(r"\d+:\d+", named) and not named.startswith(f"{os.getpid()}:"):
    threading.Thread(target=_end_with_runner, args=(named,), name="beam_job-runner-watch", daemon=True).start()


def _workers(named: str) -> Set[int]:
  """Live SDK worker processes (the Python ones, not their ``sh -c``) whose environment names ``named``."""
  mark = f"{RUN_BY}={named}".encode()
  found = set()
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/cmdline", "rb") as f:
        if _WORKER_MODULE not in f.read().split(b"\0"):
          continue
      with open(f"/proc/{entry}/environ", "rb") as f:
        if mark not in f.read().split(b"\0"):
          continue
      with open(f"/proc/{entry}/stat", "rb") as f:
        if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
          continue
    except (OSError, IndexError):
      continue
    found.add(int(entry))
  return found


def _how(code: Optional[int]) -> str:
  """Beam reports the status of ``sh -c``: 128 + N when the worker under it was killed by signal N."""
  if code is None:
    return "status unknown"
  signum = -code if code < 0 else code - 128 if code > 128 else None
  try:
    return f"exit status {code}: killed by {signal.Signals(signum).name}" if signum else f"exit status {code}"
  except ValueError:
    return f"exit status {code}"


class _Supervisor:
  """Watches the SDK workers of one run; see the module docstring."""

  def __init__(self, cleanup: Callable[[], None]):
    self._cleanup = cleanup
    self._named = _me()
    self._seen: Set[int] = set()
    self._lost: Optional[str] = None
    self._died = threading.Event()
    self._ended = threading.Event()
    self._lock = threading.Lock()
    self._main = threading.current_thread() is threading.main_thread()
    self._previous_hook = threading.excepthook
    self._previous_env = os.environ.get(RUN_BY)
    self._thread = threading.Thread(target=self._watch, name="beam_job-workers", daemon=True)

  def __enter__(self):
    os.environ[RUN_BY] = self._named
    threading.excepthook = self._hook
    for handler in logging.getLogger().handlers:
      handler.addFilter(self._quiet_after_loss)
    self._thread.start()
    return self

  def _is_lost(self) -> bool:
    """Whether a worker died: recorded, or about to be (a worker seen earlier is gone)."""
    with self._lock:
      return self._lost is not None or bool(self._seen - _workers(self._named))

  def _quiet_after_loss(self, record: logging.LogRecord) -> bool:
    """Drops the tracebacks Beam logs because a worker's connections broke: the one line says it all."""
    return not (record.exc_info and self._is_lost())

  def _hook(self, args) -> None:
    if args.thread is None or args.thread.name != _BEAM_THREAD or not isinstance(args.exc_value, RuntimeError):
      if not self._is_lost():  # else Beam's threads reading from the dead worker's connections
        self._previous_hook(args)
      return
    match = _EXIT_CODE.search(str(args.exc_value))
    code = int(match.group(1)) if match else None
    with self._lock:
      if self._lost is None and not self._ended.is_set():
        gone = sorted(self._seen - _workers(self._named))
        who = f"SDK worker process {gone[0]}" if gone else "an SDK worker process"
        self._lost = f"{who} of the multi-processing run died ({_how(code)}); the run was abandoned"
        self._died.set()

  def _watch(self) -> None:
    while not self._died.wait(SCAN_SECONDS):
      if self._ended.is_set():
        return
      found = _workers(self._named)
      with self._lock:
        self._seen |= found
    for pid in _workers(self._named):  # the others would finish their bundles for nothing
      with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with self._lock:
      if self._ended.is_set():
        return
      if self._main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # the runner waits in the main thread
    if self._ended.wait(UNWIND_SECONDS):
      return
    self._give_up()

  def _give_up(self) -> None:
    """Beam did not unwind (or could not be interrupted): clean up and end the process with the one line."""
    try:
      self._cleanup()
    finally:
      stream = quiet.terminal()
      stream.write(f"error: {self._lost}\n")
      stream.flush()
      os._exit(1)  # pylint: disable=protected-access

  def __exit__(self, exc_type, exc, tb):
    with self._lock:
      self._ended.set()
    threading.excepthook = self._previous_hook
    for handler in logging.getLogger().handlers:
      handler.removeFilter(self._quiet_after_loss)
    if self._previous_env is None:
      os.environ.pop(RUN_BY, None)
    else:
      os.environ[RUN_BY] = self._previous_env
    if self._lost is not None and exc is not None:
      raise WorkerLost(self._lost) from exc
    if self._lost is not None:
      _LOG.warning("%s after the run had finished", self._lost)
    return False


def join_ending_late(worker_thread: threading.Thread, control) -> None:
  """Waits for a worker's thread (``SubprocessSdkWorker.run``, which waits for its process) after the runner has
  closed the worker's ``control`` connection, closing it again while the worker lives: a worker that connected
  after the first close gets the end of its stream then (``ControlConnection.close`` ends a started stream and
  does nothing to a closed one)."""
  worker_thread.join(CHECK_SECONDS)
  while worker_thread.is_alive():
    control.close()
    worker_thread.join(CHECK_SECONDS)


@functools.lru_cache(maxsize=None)  # once per process
def ending_late_workers() -> None:
  """Makes the local runner start multi-processing workers with Beam's own handler whose stop also ends a worker
  that connected late (``join_ending_late``), registered as Beam registers its handlers. (Imported here, not by
  the SDK workers, which import this module too.)"""
  from apache_beam.portability import python_urns  # pylint: disable=import-outside-toplevel
  from apache_beam.runners.portability.fn_api_runner import worker_handlers  # pylint: disable=import-outside-toplevel

  class SubprocessWorkerHandler(worker_handlers.SubprocessSdkWorkerHandler):
    def stop_worker(self) -> None:
      join_ending_late(self.worker_thread, self.control_conn)

  worker_handlers.WorkerHandler.register_environment(python_urns.SUBPROCESS_SDK, bytes)(SubprocessWorkerHandler)


@contextlib.contextmanager
def supervised(cleanup: Callable[[], None], active: bool = True) -> Iterator[None]:
  """Runs the block (the local runner running a pipeline, in this process) with its SDK workers watched: if one
  dies, the block raises ``WorkerLost``, or, if the runner cannot be interrupted, ``cleanup`` runs and the
  process exits 1 after printing one line. ``active=False``: no workers to watch (another running mode). Needs
  Linux's ``/proc``; elsewhere the block runs unwatched."""
  if not active or not os.path.isdir("/proc/self"):
    yield
    return
  with _Supervisor(cleanup):
    yield


_watch_runner()

"""Keeps Beam's reports of user errors off the terminal: the CLI's one mechanism for it, ``quieted()``.

When a DoFn raises ``JobError``, the CLI prints its one-line message, and nothing else should show. Beam
reports the failure in two ways, both covered here with one rule (``errors.mentions_job_error``): the
in-process runner logs it with its traceback (a logging filter drops that record), and SDK workers in other
processes (multi-processing DirectRunner) or threads (PortableRunner) print the traceback straight to file
descriptor 2 (a pipe on descriptor 2 forwards everything but traceback blocks about a JobError).

``_WorkerStartupNoise`` drops the warnings every SDK worker of a multi-processing run logs as it starts, which
Beam relays to the runner's log: they say nothing about the job, and a worker that starts late (a loaded
machine) would print them after the run's ``error:`` line.
"""

import contextlib
import logging
import os
import sys
import threading
from typing import Iterator, List, Optional, TextIO

from beam_job import errors

_CHAIN_LINES = ("During handling of the above exception", "The above exception was the direct cause")
_terminal: Optional[TextIO] = None  # the real stderr while descriptor 2 is filtered


def _forward(reader: TextIO, out: TextIO) -> None:
  block: List[str] = []  # an open traceback block, held until its exception line tells what it is about
  dropping = False  # the last block was about a JobError: drop the chain lines that follow it
  for line in reader:
    stripped = line.strip()
    if line.startswith("Traceback (most recent call last)"):
      block = [line]
      continue
    if block:
      block.append(line)
      if stripped and not line[0].isspace():  # the exception line closes the block
        dropping = errors.mentions_job_error("".join(block))
        if not dropping:
          out.write("".join(block))
          out.flush()
        block = []
      continue
    if dropping and (not stripped or stripped.startswith(_CHAIN_LINES)):
      continue
    dropping = False
    out.write(line)
    out.flush()
  if block:
    out.write("".join(block))
    out.flush()


@contextlib.contextmanager
def quieted() -> Iterator[TextIO]:
  """For a run: user errors and worker startup noise left out of the log and of descriptor 2. Yields a text
  stream on the real stderr (for progress displays)."""
  handlers = logging.getLogger().handlers
  dropped = (_UserErrors(), _WorkerStartupNoise())
  for handler in handlers:
    for log_filter in dropped:
      handler.addFilter(log_filter)
  try:
    with _filtered_stderr() as terminal:
      yield terminal
  finally:
    for handler in handlers:
      for log_filter in dropped:
        handler.removeFilter(log_filter)


class _UserErrors(logging.Filter):
  """Beam logs a failing DoFn's exception with its traceback before re-raising it; the CLI prints the JobError's
  one-line message itself, so the log record is dropped."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not (exc is not None and errors.find_job_error(exc)) and not errors.mentions_job_error(record.getMessage())


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[TextIO]:
  """Yields a text stream on the real stderr (for progress displays) while descriptor 2 is filtered."""
  saved = os.dup(2)
  read_fd, write_fd = os.pipe()
  os.dup2(write_fd, 2)
  os.close(write_fd)
  real = os.fdopen(os.dup(saved), "w", buffering=1)
  thread = threading.Thread(target=_forward, args=(os.fdopen(read_fd, "r", errors="replace"), real), daemon=True)
  thread.start()
  global _terminal  # pylint: disable=global-statement
  _terminal = real
  try:
    yield real
  finally:
    _terminal = None
    os.dup2(saved, 2)  # closes this process's last write end of the pipe: the thread sees its end
    os.close(saved)
    thread.join(timeout=5)  # a worker process still holding the pipe must not hold up the exit


def terminal() -> TextIO:
  """The real stderr, for a last line written just before the process ends (``os._exit`` leaves no time for the
  filter's thread to forward it)."""
  return _terminal or sys.stderr


# Logged by Beam itself in every local SDK worker (sdk_worker_main, and PipelineOptions when it meets the
# DirectRunner's own flags), relayed by local_job_service as "Worker: ... message: "<text>" ...".
_RELAY_LOGGER = "apache_beam.runners.portability.local_job_service"
_STARTUP_MESSAGES = ('message: "No semi_persistent_directory found', 'message: "Discarding unparseable args')


class _WorkerStartupNoise(logging.Filter):
  """Drops the relayed startup warnings of Beam's local SDK workers (see the module docstring)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.name == _RELAY_LOGGER and any(text in record.getMessage() for text in _STARTUP_MESSAGES))

"""A progress display for local runs in a terminal: pairs written of the planned total, MB/s, ETA.

The local runner runs the whole pipeline inside ``pipeline.run()``, so progress is read from the outside: a
thread watches the job's temporary folder, where the plan step leaves ``plan.json`` and each cell grows its
shard. Pairs are counted from bytes (exact on average for uncompressed output; gzip output shows MB only).
On Dataflow and Flink, the Beam counters (``beam_job:pairs_written``, ``bytes_written``) play this role.
"""

import json
import os
import threading
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn, \
    TransferSpeedColumn

# How often the folder is read and the display redrawn, in seconds (BEAM_JOB_PROGRESS_SECONDS: a slow terminal
# or a recording may want it otherwise).
_POLL_SECONDS = float(os.environ.get("BEAM_JOB_PROGRESS_SECONDS", "1.0"))


class FolderProgress:
  """Context manager showing progress while a local job writes into ``folder``; silent off a terminal."""

  def __init__(self, folder: str, stream=None):
    """``stream``: the terminal to draw on; None (not a terminal) shows nothing."""
    self._folder = folder
    self._stream = stream
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def __enter__(self):
    if self._stream is not None and "://" not in self._folder:
      self._thread = threading.Thread(target=self._run, daemon=True)
      self._thread.start()
    return self

  def __exit__(self, *exc_info):
    self._stop.set()
    if self._thread:
      self._thread.join()

  def _written(self) -> int:
    try:
      return sum(entry.stat().st_size for entry in os.scandir(self._folder) if entry.name.startswith("shard-"))
    except OSError:
      return 0

  def _run(self):
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[pairs]}"),
               TransferSpeedColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    console = Console(file=self._stream, force_terminal=True)
    with Progress(*columns, transient=True, console=console, refresh_per_second=2 / _POLL_SECONDS) as progress:
      task = progress.add_task("reading inputs", total=None, pairs="")
      plan = None
      while not self._stop.wait(_POLL_SECONDS):
        if plan is None:
          try:
            with open(os.path.join(self._folder, "plan.json"), encoding="utf-8") as f:
              plan = json.load(f)
          except (OSError, ValueError):
            continue
          progress.update(task, description="writing pairs", total=plan["estimated_bytes"] or None)
        written = self._written()
        pairs = (f"~{min(plan['pairs'], int(plan['pairs'] * written / plan['estimated_bytes'])):,}"
                 f" of {plan['pairs']:,} pairs" if plan["estimated_bytes"] and not plan["gzip"] else "")
        progress.update(task, completed=written, pairs=pairs)

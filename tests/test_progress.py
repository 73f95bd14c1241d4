"""The progress display reads the plan and the growing shards of the temporary folder."""

import io
import json
import time

from beam_job import progress


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def test_progress_shows_pairs_of_the_planned_total(tmp_path, monkeypatch):
  monkeypatch.setattr(progress, "_POLL_SECONDS", 0.05)
  (tmp_path / "plan.json").write_text(json.dumps({"pairs": 1000, "estimated_bytes": 100_000, "gzip": False}))
  (tmp_path / "shard-00000").write_bytes(b"x" * 25_000)
  terminal = _Terminal()
  with progress.FolderProgress(str(tmp_path), terminal):
    deadline = time.monotonic() + 30
    while "of 1,000 pairs" not in terminal.getvalue() and time.monotonic() < deadline:
      time.sleep(0.05)
  assert "~250 of 1,000 pairs" in terminal.getvalue()
  assert "writing pairs" in terminal.getvalue()


def test_progress_is_silent_without_a_terminal(tmp_path):
  (tmp_path / "plan.json").write_text(json.dumps({"pairs": 10, "estimated_bytes": 10, "gzip": False}))
  with progress.FolderProgress(str(tmp_path), None) as shown:
    assert shown._thread is None  # pylint: disable=protected-access


def test_the_cli_shows_progress_on_a_terminal_and_nothing_otherwise(tmp_path):
  import os
  import pty
  import subprocess
  import sys
  import threading
  from beam_job import tfrecord
  from tests.helpers import make_example
  for side in ("left", "right"):
    with open(tmp_path / f"{side}.tfrecord", "wb") as f:
      for i in range(600):
        f.write(tfrecord.frame(make_example({f"{side}_id": [i], f"{side}_v": [0.5] * 16})))
  env = dict(os.environ, BEAM_JOB_PROGRESS_SECONDS="0.02")
  argv = [sys.executable, "-m", "beam_job", "--left", str(tmp_path / "left.tfrecord"), "--right",
          str(tmp_path / "right.tfrecord")]

  controller, terminal = pty.openpty()
  seen = bytearray()

  def drain():  # read while the job runs, so that a full terminal buffer never blocks it
    while True:
      try:
        chunk = os.read(controller, 1 << 16)
      except OSError:
        return
      if not chunk:
        return
      seen.extend(chunk)

  reader = threading.Thread(target=drain)
  reader.start()
  try:
    done = subprocess.run(argv + ["--output", str(tmp_path / "tty" / "pairs")], stdout=subprocess.DEVNULL,
                          stderr=terminal, env=env, timeout=300, check=False)
  finally:
    os.close(terminal)
    reader.join(timeout=30)
    os.close(controller)
  assert done.returncode == 0, bytes(seen)[-2000:]
  assert b"of 360,000 pairs" in seen
  piped = subprocess.run(argv + ["--output", str(tmp_path / "pipe" / "pairs")], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, env=env, timeout=300, check=True)
  assert b"of 360,000 pairs" not in piped.stderr

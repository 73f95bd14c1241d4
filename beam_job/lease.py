"""One run per output prefix: a lease object, ``PREFIX-lease.json``, taken at the start and given up at the end.

Two runs on one prefix at once (a scheduler's retry while the first still runs) would publish into each
other. The first run creates the lease only if none exists, atomically where the filesystem can (a hard link
locally; ``ifGenerationMatch=0`` on GCS); a second run sees it and is refused with the holder named. A lease
names its run (a token), the host, process and start time, and an expiry that the run pushes forward while
it writes cells. A crashed run's lease is stale when its expiry passed, or at once when it was taken on this
host by a process that is gone; a new run then takes it over. Publishing checks the lease is still its own
right before it changes anything under the prefix.
"""

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Iterator, Optional

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_job import outputs
from beam_job.errors import JobError

# How long a lease outlives its last renewal. The CLI renews it every KEEP_SECONDS while it waits for the run,
# cells at most every RENEW_SECONDS per process; a run that crashed elsewhere than on this machine holds the
# prefix this long after its last renewal (or until the lease file is deleted).
EXPIRY_SECONDS = 600
KEEP_SECONDS = 60
RENEW_SECONDS = 300
# A run submitted without waiting (no process watches it): its lease lasts this long unless it publishes.
SUBMITTED_EXPIRY_SECONDS = 24 * 3600


def _boot_id() -> str:
  try:
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
      return f.read().strip()
  except OSError:
    return ""


def process_start(pid: int) -> Optional[str]:
  """The start time of ``pid`` in clock ticks since boot, so a reused pid is not taken for the holder; None
  when no such process runs. A zombie (dead, not yet reaped by its parent) does not run."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
      fields = f.read().rsplit(")", 1)[1].split()
  except OSError:
    return None
  if len(fields) < 20 or fields[0] == "Z":
    return None
  return fields[19]


def _holder(token: str, now: float, watched: bool) -> dict:
  """The lease's content. ``watched``: this process lives as long as the run (the CLI waiting for it, or the
  process running the pipeline in memory), so its death on this machine frees the prefix at once."""
  pid = os.getpid() if watched else None
  return {"token": token, "host": socket.gethostname(), "boot": _boot_id(), "pid": pid,
          "pid_start": process_start(pid) if pid else None, "taken": now,
          "expires": now + (EXPIRY_SECONDS if watched else SUBMITTED_EXPIRY_SECONDS)}


def is_live(holder: dict, now: float) -> bool:
  """A lease holds until it expires, unless its process ran on this machine and is gone."""
  if holder.get("expires", 0) <= now:
    return False
  if holder.get("host") == socket.gethostname() and holder.get("boot") == _boot_id() and holder.get("pid"):
    return process_start(int(holder["pid"])) == holder.get("pid_start")
  return True


def describe(holder: dict) -> str:
  expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder.get("expires", 0)))
  return f"run {holder.get('token')} (host {holder.get('host')}, pid {holder.get('pid')}, lease until {expires})"


def read(path: str) -> Optional[dict]:
  if FileSystems.get_scheme(path) is None and os.path.isdir(path):
    raise JobError(f"the lease file {path} is a directory, not a lease; move it away")
  try:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
      text = f.read()
  except Exception:  # pylint: disable=broad-except  # gone between listing and reading
    if FileSystems.exists(path):
      raise
    return None
  try:
    holder = json.loads(text)
  except ValueError:
    holder = None
  if not isinstance(holder, dict):  # leases are written whole (a link, a rename, one upload): this is damage
    raise JobError(f"the lease file {path} is damaged (not a JSON object); if no run on this prefix is alive, "
                   "delete it")
  return holder


def _in_use(output: str, holder: dict, path: str) -> JobError:
  return JobError(f"output prefix {output!r} is in use by {describe(holder)}; wait for it to end, or if no such run "
                  f"is alive, delete {path}")


def _staged(path: str, text: str) -> str:
  """A local file beside ``path`` holding all of ``text``, to link or rename into place whole."""
  staging = f"{path}.{uuid.uuid4().hex}"
  with open(staging, "w", encoding="utf-8") as f:
    f.write(text)
  return staging


def _gcs_blob(path: str):
  from apache_beam.io.gcp import gcsio  # pylint: disable=import-outside-toplevel
  bucket, name = gcsio.parse_gcs_path(path)
  return gcsio.GcsIO().client.bucket(bucket).blob(name)


def _create_if_absent(path: str, text: str) -> bool:
  """Creates ``path`` holding ``text`` unless it exists; True when this call created it."""
  scheme = FileSystems.get_scheme(path)
  if scheme is None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    staging = _staged(path, text)
    try:
      os.link(staging, path)  # fails when the lease exists: atomic on every local filesystem
      return True
    except FileExistsError:
      return False
    finally:
      os.remove(staging)
  if scheme == "gs":
    from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
    try:
      _gcs_blob(path).upload_from_string(text, content_type="application/json", if_generation_match=0)
      return True
    except exceptions.PreconditionFailed:
      return False
  if FileSystems.exists(path):  # other filesystems: no conditional create, so write and read back
    return False
  with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
    f.write(text.encode("utf-8"))
  time.sleep(1)
  return (read(path) or {}).get("token") == json.loads(text)["token"]


def _remove_stale(path: str, holder: dict) -> None:
  """Removes a crashed run's lease, as read in ``holder``. Two runs may find the same stale lease; the second
  to remove it must not remove the lease the first has just created in its place, so on GCS the delete holds
  only for the generation whose content is ``holder``; locally the lease is moved aside atomically and put back
  when it is not the one read. On other filesystems the read and the delete are not atomic."""
  scheme = FileSystems.get_scheme(path)
  if scheme is None:  # move it aside atomically, then look at what was moved
    aside = f"{path}.{uuid.uuid4().hex}"
    try:
      os.rename(path, aside)
    except FileNotFoundError:
      return
    try:
      with open(aside, encoding="utf-8") as f:
        moved = json.load(f)
    except ValueError:
      moved = None
    if moved != holder:  # another run's fresh lease: put it back
      try:
        os.link(aside, path)
      except FileExistsError:
        pass
    os.remove(aside)
    return
  if scheme != "gs":
    outputs.remove(path)
    return
  from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
  blob = _gcs_blob(path)
  try:
    blob.reload()
    if json.loads(blob.download_as_bytes(if_generation_match=blob.generation)) == holder:
      blob.delete(if_generation_match=blob.generation)
  except (exceptions.NotFound, exceptions.PreconditionFailed, ValueError):
    pass  # gone or replaced since it was read: the caller reads it again


def acquire(output: str, token: str, watched: bool = True) -> None:
  """Takes the prefix's lease for run ``token``, or raises JobError naming the run that holds it.

  Idempotent: a retry of the same run (or the pipeline of a CLI that took it first) finds its own lease.
  """
  path = outputs.lease_path(output)
  for _ in range(3):
    now = time.time()
    if _create_if_absent(path, json.dumps(_holder(token, now, watched))):
      return
    holder = read(path)
    if holder is None:
      continue  # released between the two calls
    if holder.get("token") == token:
      return
    if is_live(holder, now):
      raise _in_use(output, holder, path)
    _remove_stale(path, holder)
  raise JobError(f"could not take the lease {path}: other runs keep taking it")


def check(output: str, token: str) -> None:
  """Raises unless run ``token`` still holds the lease: called before anything under the prefix changes."""
  holder = read(outputs.lease_path(output))
  if holder is None or holder.get("token") != token:
    raise JobError(f"run {token} lost its lease on output prefix {output!r} "
                   f"({'now held by ' + describe(holder) if holder else 'no lease'}); nothing was published")


def renew(output: str, token: str) -> None:
  """Pushes the lease's expiry forward while the run is still its holder."""
  path = outputs.lease_path(output)
  holder = read(path)
  if holder and holder.get("token") == token:
    holder["expires"] = max(holder.get("expires", 0), time.time() + EXPIRY_SECONDS)
    text = json.dumps(holder)
    if FileSystems.get_scheme(path) is None:  # never a half-written lease: write aside, then rename over it
      os.replace(_staged(path, text), path)
      return
    with FileSystems.create(path, mime_type="application/json", compression_type=CompressionTypes.UNCOMPRESSED) as f:
      f.write(text.encode("utf-8"))  # an object store's upload appears whole on close


def release(output: str, token: str) -> None:
  path = outputs.lease_path(output)
  holder = read(path)
  if holder and holder.get("token") == token:
    outputs.remove(path)


def refuse_if_held(output: str) -> None:
  """Before a run reads anything: another live run on the prefix stops it at once."""
  path = outputs.lease_path(output)
  holder = read(path) if FileSystems.exists(path) else None
  if holder and is_live(holder, time.time()):
    raise _in_use(output, holder, path)


@contextlib.contextmanager
def kept(output: str, token: str) -> Iterator[None]:
  """Renews run ``token``'s lease every KEEP_SECONDS while the block runs (the CLI waiting for its run)."""
  stop = threading.Event()

  def keep():
    while not stop.wait(KEEP_SECONDS):
      try:
        renew(output, token)
      except Exception:  # pylint: disable=broad-except  # a missed renewal only shortens the lease
        pass

  thread = threading.Thread(target=keep, name="beam_job-lease", daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join(timeout=5)

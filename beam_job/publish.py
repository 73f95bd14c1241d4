"""Publishing a run's output so that a reader who trusts the summary never sees a partial or mixed output.

Cells write uniquely named temporary objects into ``PREFIX-temp-<run>/`` and report each one's size. Publishing
then follows a manifest, written into that folder before anything under the prefix changes:

1. check every reported object against one listing of the folder (a failed or duplicate attempt's object is
   never reported, and a short one is caught by its size);
2. with ``--overwrite``, delete the old summary first, then the old shards, schema and dead letters;
3. rename the temporary shards to their final names (an object store's rename is a copy and a delete; a move
   whose source is gone and whose destination has the reported size was done by an earlier attempt);
4. write the schema and dead letters, then the summary, last;
5. remove the temporary folder, then the lease.

Every step is idempotent, so a retry of the same run carries an interrupted publish to the end. A run that
died for good is rolled back by the next run on the prefix (``recover``): without a summary of its own, the
files its manifest names are removed, then its folder. At no instant does a summary name a shard that is
missing or that another run wrote.
"""

import concurrent.futures
import json
import os
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_job import lease, outputs

MANIFEST = "manifest.json"
_BATCH = 100  # paths per rename or delete request on an object store (Beam's GCS batch size)
_RAW = CompressionTypes.UNCOMPRESSED


def _local(path: str) -> bool:
  return FileSystems.get_scheme(path) is None


def _batches(items: Sequence, size: int = _BATCH) -> List[Sequence]:
  return [items[i:i + size] for i in range(0, len(items), size)]


def _in_parallel(function: Callable, batches: List[Sequence], local: bool) -> None:
  """Runs ``function`` on each batch; concurrently on object stores, where each call is a round trip."""
  if local or len(batches) <= 1:
    for batch in batches:
      function(batch)
    return
  with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
    for future in [pool.submit(function, batch) for batch in batches]:
      future.result()


def delete(paths: Iterable[str]) -> None:
  """Deletes the paths literally, in batches (concurrently on object stores); one already gone is fine."""
  paths = sorted(set(paths))
  if paths:
    _in_parallel(outputs.remove_all, _batches(paths), _local(paths[0]))


def write_text(path: str, text: str, staging: str) -> None:
  """Writes ``text`` to ``staging`` and renames it to ``path``: readers never see half a file."""
  with FileSystems.create(staging, mime_type="text/plain", compression_type=_RAW) as f:
    f.write(text.encode("utf-8"))
  FileSystems.rename([staging], [path])  # replaces: os.rename locally, a copy over the old object elsewhere


def read_text(path: str) -> Optional[str]:
  try:
    with FileSystems.open(path, compression_type=_RAW) as f:
      return f.read().decode("utf-8")
  except Exception:  # pylint: disable=broad-except
    if FileSystems.exists(path):
      raise
    return None


def check_reported(snapshot: outputs.Snapshot, token: str, reported: Sequence[Tuple[str, int]]) -> None:
  """Every reported temporary object exists with the size its cell wrote, in one listing of the prefix."""
  listed = {o.path: o.size for o in snapshot.temps.get(token, ())}
  for path, size in reported:
    if listed.get(path) != size:
      found = "is missing" if path not in listed else f"has {listed[path]} bytes"
      raise RuntimeError(f"temporary shard {path} {found}, but its cell reported {size} bytes; nothing was "
                         "published")


def make_manifest(output: str, token: str, moves: Sequence[Tuple[str, str, int]], texts: Dict[str, str],
                  summary: str, overwrite: bool) -> dict:
  """What run ``token`` publishes: (temp, final, size) moves, small files by final path, and what it deletes.

  Checks first that every temporary object exists with the size its cell reported.
  """
  snapshot = outputs.Snapshot.take(output)
  check_reported(snapshot, token, [(temp, size) for temp, _, size in moves])
  old = [o.path for o in snapshot.published]
  if not overwrite:
    outputs.refuse_existing(output, old)
  return {"run": token, "moves": [list(m) for m in moves], "texts": texts, "summary": summary, "delete": old}


def read_summary(output: str) -> Optional[dict]:
  """The summary under ``output`` as a dict; None when there is none or it is not a JSON object."""
  path = outputs.summary_path(output)
  if _local(path) and os.path.isdir(path):
    return None
  text = read_text(path)
  try:
    summary = json.loads(text) if text else None
  except ValueError:
    return None
  return summary if isinstance(summary, dict) else None


def _summary_run(output: str) -> Optional[str]:
  return (read_summary(output) or {}).get("run")


def _rename(pairs: Sequence[Tuple[str, str]]) -> None:
  if pairs:
    _in_parallel(lambda batch: FileSystems.rename([s for s, _ in batch], [d for _, d in batch]), _batches(pairs),
                 _local(pairs[0][0]))


def apply(output: str, manifest: dict) -> None:
  """Carries out a manifest from wherever an earlier attempt stopped."""
  token = manifest["run"]
  folder = outputs.temp_dir(output, token)
  summary = outputs.summary_path(output)
  if _summary_run(output) != token:
    lease.check(output, token)
    present = {o.path: o.size for o in outputs.list_owned(output)}
    # A retry: shards this run already moved may bear an old file's name; they are done, not old.
    moved = {final for temp, final, size in manifest["moves"] if temp not in present and present.get(final) == size}
    old = set(manifest["delete"]) - moved
    if summary in old:
      delete([summary])  # first: from here on no summary describes what is being replaced
    delete(old - {summary})
    present = {o.path: o.size for o in outputs.list_owned(output)}
    pending = []
    for temp, final, size in manifest["moves"]:
      if temp in present:
        pending.append((temp, final))
      elif present.get(final) != size:
        raise RuntimeError(f"cannot publish {final}: its temporary shard {temp} is gone and the final name "
                           f"{'is missing' if final not in present else 'has another size'}")
    _rename(pending)
    for number, (path, text) in enumerate(sorted(manifest["texts"].items())):
      write_text(path, text, f"{folder}/text-{number}.tmp")
    lease.check(output, token)
    write_text(summary, manifest["summary"], f"{folder}/summary.tmp")
  remove_temp(output, token)
  lease.release(output, token)


def publish(output: str, token: str, build: Callable[[], dict]) -> str:
  """Publishes run ``token`` and returns its summary text: by the manifest already in its folder (a retry), or
  by the one ``build`` makes. A retry after the publish completed only finishes the cleanup."""
  if _summary_run(output) == token:
    remove_temp(output, token)
    lease.release(output, token)
    return read_text(outputs.summary_path(output))
  lease.check(output, token)
  path = f"{outputs.temp_dir(output, token)}/{MANIFEST}"
  text = read_text(path)
  if text is None:
    manifest = build()
    write_text(path, json.dumps(manifest), path + ".tmp")
  else:
    manifest = json.loads(text)
  apply(output, manifest)
  return manifest["summary"]


def remove_temp(output: str, token: str, snapshot: Optional[outputs.Snapshot] = None) -> None:
  """Deletes run ``token``'s temporary files (as ``snapshot`` lists them, else as listed now), then its folder
  if nothing else is in it (a user's file that happens to sit in a folder of that name is never the job's)."""
  folder = outputs.temp_dir(output, token)
  snapshot = snapshot or outputs.Snapshot.take(output)
  delete([o.path for o in snapshot.temps.get(token, ()) if o.path != folder])
  if _local(folder):
    try:
      os.rmdir(folder)
    except OSError:
      pass  # gone already, or not empty: not the job's


def stale_files(snapshot: outputs.Snapshot, token: str) -> List[str]:
  """Published files that run ``token``'s interrupted publish left without a summary of its own."""
  text = read_text(f"{outputs.temp_dir(snapshot.output, token)}/{MANIFEST}")
  if text is None or snapshot.has_summary():
    return []  # nothing published yet; or a summary stands, which a later publish wrote over these names
  manifest = json.loads(text)
  return [final for _, final, _ in manifest["moves"]] + list(manifest["texts"]) + list(manifest["delete"])


def recover(output: str, keep: Optional[str] = None) -> List[str]:
  """Rolls back every run's leftovers except ``keep``'s: interrupted publishes, then temporary folders.

  Call only while holding the lease (no other run is live). Returns the tokens of the runs cleaned up.
  """
  snapshot = outputs.Snapshot.take(output)
  present = {o.path for o in snapshot.published}
  cleaned = []
  for token in sorted(snapshot.temps):
    if token == keep:
      continue
    delete([path for path in stale_files(snapshot, token) if path in present])
    remove_temp(output, token, snapshot)
    cleaned.append(token)
  return cleaned


def surviving(output: str) -> List[str]:
  """The published files that recovery would leave: an earlier run's output, which only --overwrite replaces."""
  snapshot = outputs.Snapshot.take(output)
  stale = set()
  for token in snapshot.temps:
    stale.update(stale_files(snapshot, token))
  return [o.path for o in snapshot.published if o.path not in stale]


def died_after_publishing(output: str, options: dict, inputs: Optional[dict] = None) -> bool:
  """Whether the output under ``output`` is complete but its run died before its cleanup (its temporary folder
  or lease is still there), and was made with ``options`` from ``inputs``: the same command run again on the
  same files, not another job."""
  summary = read_summary(output)
  if not summary or not summary.get("run") or summary.get("options") != options or summary.get("inputs") != inputs:
    return False
  snapshot = outputs.Snapshot.take(output)
  holder = lease.read(snapshot.lease.path) if snapshot.lease else None
  return summary["run"] in snapshot.temps or (holder or {}).get("token") == summary["run"]


def begin(output: str, token: str, overwrite: bool) -> str:
  """Starts run ``token`` on ``output``: takes the lease, rolls back dead runs, refuses an earlier output."""
  lease.acquire(output, token)
  recover(output, keep=token)
  if not overwrite:
    outputs.refuse_existing(output, surviving(output))
  return token


def abandon(output: str, token: str) -> None:
  """After run ``token`` failed: rolls back what it started (never a complete publish) and frees the prefix."""
  holder = lease.read(outputs.lease_path(output))
  if holder is not None and holder.get("token") not in (token, None) and lease.is_live(holder, time.time()):
    return  # another run owns the prefix now; our folder is its to clean
  try:
    snapshot = outputs.Snapshot.take(output)
    if _summary_run(output) != token:
      present = {o.path for o in snapshot.published}
      delete([path for path in stale_files(snapshot, token) if path in present])
    remove_temp(output, token, snapshot)
  finally:
    # Even when the cleanup failed (a listing error): the next run on the prefix rolls back what is left (the
    # files a manifest names go before the manifest), while a lease kept here would refuse every run from
    # another machine until it expires.
    lease.release(output, token)

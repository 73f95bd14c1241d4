"""The files a job owns under its output prefix: their names, and one listing that finds and sorts them.

The prefix is a literal path, never a pattern: ``--output '/d/u*'`` owns ``/d/u*-00000-of-00001.tfrecord``
and nothing of ``/d/users-...``. Every place that looks for the job's files (the refusal of an earlier run,
``--overwrite``, cleanup of failed runs, ``verify``) lists the prefix once and classifies each name with
``classify``, the inverse of the naming functions below, so names and matcher cannot drift apart.
"""

import dataclasses
import os
import re
import shutil
from typing import Dict, List, Optional, Tuple

from apache_beam.io.filesystems import FileSystems

from beam_job.errors import JobError

SUMMARY, SCHEMA, DEAD_LETTERS, LEASE = "summary.json", "schema.pbtxt", "corrupt.jsonl", "lease.json"
# A shard is ``{output}-{shard}-of-{count}{suffix}``: ``shard_name`` writes it and ``_SHARD`` reads it back.
_SUFFIXES = {"uncompressed": ".tfrecord", "gzip": ".tfrecord.gz"}
_SHARD = re.compile(r"(\d{5,})-of-(\d{5,})(" + "|".join(map(re.escape, _SUFFIXES.values())) + ")")
_TEMP = re.compile(r"temp-([0-9a-f]{12})")
# What a run writes in its temporary folder; anything else there is not the job's and is never deleted.
_TEMP_FILES = re.compile(r"shard-\d{5,}-[0-9a-f]{32}|manifest\.json(\.tmp)?|plan\.(json|tmp)|text-\d+\.tmp|summary\.tmp|"
                         r"probe")
_GLOB = re.compile(r"([*?\[])")


def shard_width(count: int) -> int:
  """Digits of a shard number: at least 5, more when the count needs them, so names sort in shard order."""
  return max(5, len(str(count)))


def shard_name(output: str, shard: int, count: int, compression: str) -> str:
  width = shard_width(count)
  return f"{output}-{shard:0{width}d}-of-{count:0{width}d}{_SUFFIXES[compression]}"


def summary_path(output: str) -> str:
  return f"{output}-{SUMMARY}"


def schema_path(output: str) -> str:
  return f"{output}-{SCHEMA}"


def dead_letter_path(output: str) -> str:
  return f"{output}-{DEAD_LETTERS}"


def lease_path(output: str) -> str:
  return f"{output}-{LEASE}"


def temp_dir(output: str, token: str) -> str:
  return f"{output}-temp-{token}"


def escape_glob(path: str) -> str:
  """``path`` as a Beam match pattern that matches only itself (Beam's glob has no quoting: ``[*]`` does it)."""
  return _GLOB.sub(r"[\1]", path)


@dataclasses.dataclass(frozen=True)
class Owned:
  """One file under the prefix that the job's naming produced."""
  path: str
  size: int
  kind: str  # "shard", "summary", "schema", "dead_letters", "lease" or "temp"
  shard: Optional[Tuple[int, int]] = None  # (number, count) of a shard
  token: Optional[str] = None  # the run of a temporary file


def classify(output: str, path: str, size: int = -1) -> Optional[Owned]:
  """What ``path`` is to the job writing ``output``, or None when the job did not name it."""
  if not path.startswith(output + "-"):
    return None
  rest = path[len(output) + 1:]
  shard = _SHARD.fullmatch(rest)
  if shard:
    number, count = int(shard.group(1)), int(shard.group(2))
    if len(shard.group(1)) == len(shard.group(2)) == shard_width(count) and number < count:
      return Owned(path, size, "shard", (number, count))
    return None
  named = {SUMMARY: "summary", SCHEMA: "schema", DEAD_LETTERS: "dead_letters", LEASE: "lease"}.get(rest)
  if named:
    return Owned(path, size, named)
  folder, _, name = rest.partition("/")
  temp = _TEMP.fullmatch(folder)
  if temp and (not name or _TEMP_FILES.fullmatch(name)):
    return Owned(path, size, "temp", token=temp.group(1))
  return None


def remove(path: str) -> None:
  """Deletes one file (locally a folder too, with what it holds); one already gone is fine."""
  remove_all([path])


def remove_all(paths) -> None:
  """Deletes the paths literally: Beam's ``FileSystems.delete`` expands glob characters in names, locally and
  on GCS, so a prefix with ``[`` would delete another file. A path already gone is fine (a retry)."""
  paths = list(paths)
  if not paths:
    return
  scheme = FileSystems.get_scheme(paths[0])
  if scheme is None:
    for path in paths:
      try:
        if os.path.isdir(path) and not os.path.islink(path):
          shutil.rmtree(path)
        else:
          os.remove(path)
      except FileNotFoundError:
        pass
  elif scheme == "gs":
    from apache_beam.io.gcp import gcsio  # pylint: disable=import-outside-toplevel
    failed = [(path, code) for path, code in gcsio.GcsIO().delete_batch(paths) if code is not None]
    if failed:
      raise IOError(f"could not delete {failed[0][0]} (HTTP {failed[0][1]}) and {len(failed) - 1} more")
  else:
    try:
      FileSystems.delete(paths)
    except Exception:  # pylint: disable=broad-except  # Beam reports a missing object as a failure too
      left = [path for path in paths if FileSystems.exists(path)]
      if left:
        FileSystems.delete(left)


def _list_local(output: str) -> List[Tuple[str, int]]:
  """Files under a local prefix, from the prefix's folder only (a recursive walk of a big folder is waste)."""
  folder, base = os.path.split(output)
  found = []
  try:
    with os.scandir(folder or ".") as entries:
      for entry in entries:
        if not entry.name.startswith(base + "-"):
          continue
        path = os.path.join(folder, entry.name)
        if entry.is_dir(follow_symlinks=False):
          if _TEMP.fullmatch(entry.name[len(base) + 1:]):  # only a run's temporary folder is looked into
            with os.scandir(path) as files:
              found.extend((os.path.join(path, f.name), f.stat(follow_symlinks=False).st_size) for f in files
                           if f.is_file(follow_symlinks=False))
            found.append((path, 0))
        elif entry.is_file(follow_symlinks=False):
          found.append((path, entry.stat(follow_symlinks=False).st_size))
  except FileNotFoundError:
    return []
  except OSError as e:
    raise JobError(f"cannot list the files under --output {output!r}: {e.strerror or e}") from None
  return found


def _list_gcs(output: str) -> List[Tuple[str, int]]:
  """Objects under a gs:// prefix, by the literal name prefix: no pattern, so no glob character to escape (the
  escape of '[' is a regex set Python already warns about)."""
  from apache_beam.io.gcp import gcsio  # pylint: disable=import-outside-toplevel
  from google.api_core import exceptions  # pylint: disable=import-outside-toplevel
  try:
    return list(gcsio.GcsIO().list_files(output + "-"))
  except exceptions.NotFound:
    return []  # no such bucket


def list_owned(output: str) -> List[Owned]:
  """Every file the job's naming produced under ``output`` (any run's), with sizes, from one listing.

  A missing folder or bucket prefix is simply empty; any other listing error fails with a one-line message
  naming the path, since acting on a partial listing could leave an earlier run's shards beside new ones.
  """
  scheme = FileSystems.get_scheme(output)
  if scheme is None:
    listed = _list_local(output)
  else:
    try:
      if scheme == "gs":
        listed = _list_gcs(output)
      else:
        listed = [(m.path, m.size_in_bytes) for m in FileSystems.match([escape_glob(output) + "-**"])[0].metadata_list]
    except Exception as e:  # pylint: disable=broad-except  # Beam wraps every cause in BeamIOError, twice on GCS
      cause = e
      while getattr(cause, "exception_details", None):
        cause = next(iter(cause.exception_details.values()))
      raise JobError(f"cannot list the files under --output {output!r}: {str(cause).splitlines()[0]}") from None
  owned = (classify(output, path, size) for path, size in listed)
  return sorted((o for o in owned if o is not None), key=lambda o: o.path)


@dataclasses.dataclass(frozen=True)
class Snapshot:
  """The job's files under a prefix at one moment, grouped: published output, lease, temp folders by run."""
  output: str
  published: Tuple[Owned, ...]  # shards, schema, dead letters, summary
  lease: Optional[Owned]
  temps: Dict[str, Tuple[Owned, ...]]  # run token -> its temporary files

  @classmethod
  def take(cls, output: str) -> "Snapshot":
    owned = list_owned(output)
    temps: Dict[str, List[Owned]] = {}
    for o in owned:
      if o.kind == "temp":
        temps.setdefault(o.token, []).append(o)
    lease = next((o for o in owned if o.kind == "lease"), None)
    return cls(output, tuple(o for o in owned if o.kind not in ("temp", "lease")), lease,
               {token: tuple(files) for token, files in temps.items()})

  def has_summary(self) -> bool:
    return any(o.kind == "summary" for o in self.published)


def refuse_existing(output: str, paths: List[str]) -> None:
  """Without --overwrite, an earlier run's files under the prefix stop the job."""
  if paths:
    raise JobError(f"output prefix {output!r} already holds {len(paths)} file(s) of an earlier run "
                   f"(e.g. {paths[0]}); pass --overwrite to replace them")


def normalize(output: str) -> str:
  """A local prefix with repeated slashes collapsed (``$OUT/pairs`` with ``OUT=/data/``): the listing names
  files with single slashes, so the prefix must too. URLs are left as given (``//`` is part of an object name)."""
  if FileSystems.get_scheme(output) is not None:
    return output
  return re.sub(r"/{2,}", "/", output)


def resolve(path: str, follow: bool = False) -> str:
  """The path as the filesystem sees it: the folder's symlinks (the file's too with ``follow``) and ``//``
  resolved locally; URLs as given."""
  if FileSystems.get_scheme(path) is not None:
    return path
  if follow:
    real = os.path.realpath(path)
  else:
    folder, base = os.path.split(os.path.abspath(path))
    real = os.path.join(os.path.realpath(folder), base)
  return "/" + real.lstrip("/")  # POSIX keeps a leading '//' as it is; on Linux it is '/'

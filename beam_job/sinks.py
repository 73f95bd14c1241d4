"""Writing shards to a temporary place and publishing them atomically, on any Beam filesystem.

Beam's ``WriteToTFRecord`` names shards by bundle and, on finalize, deletes whatever matches the output glob
without asking. Here each cell writes one shard whose name and bytes the plan fixes, into a temporary folder
next to the output; only when every cell is done are the shards renamed to their final names, and the
summary is written last, so a reader that sees the summary sees the whole output.
"""

import contextlib
import gzip
from typing import BinaryIO, Iterator, List

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_job.errors import JobError

_RAW = CompressionTypes.UNCOMPRESSED


def summary_path(output: str) -> str:
  return f"{output}-summary.json"


def schema_path(output: str) -> str:
  return f"{output}-schema.pbtxt"


def dead_letter_path(output: str) -> str:
  return f"{output}-corrupt.jsonl"


def temp_dir(output: str, token: str) -> str:
  return f"{output}-temp-{token}"


def final_shard_pattern(output: str) -> str:
  return f"{output}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].tfrecord*"


def existing_outputs(output: str) -> List[str]:
  """Final shards and summary of an earlier run under the same prefix (temporary files do not count)."""
  found = []
  for pattern in (final_shard_pattern(output), summary_path(output), dead_letter_path(output),
                  schema_path(output)):
    try:
      found.extend(meta.path for meta in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # a missing folder matches nothing
      pass
  return sorted(found)


def refuse_existing(output: str, existing: List[str]) -> None:
  """Without --overwrite, an earlier run's files under the prefix stop the job."""
  if existing:
    raise JobError(f"output prefix {output!r} already holds {len(existing)} file(s) of an earlier run "
                   f"(e.g. {existing[0]}); pass --overwrite to replace them")


@contextlib.contextmanager
def open_shard(path: str, compression: str) -> Iterator[BinaryIO]:
  """A shard for writing; gzip with no name and no time in its header, so equal records give equal bytes."""
  raw = FileSystems.create(path, mime_type="application/octet-stream", compression_type=_RAW)
  try:
    if compression == "gzip":
      with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as stream:
        yield stream
    else:
      yield raw
  finally:
    raw.close()


def size_of(path: str) -> int:
  return FileSystems.match([path])[0].metadata_list[0].size_in_bytes


def publish(moves: List[tuple], output: str, overwrite: bool) -> None:
  """Renames temporary shards to their final names, after removing an earlier run's output if allowed.

  Safe to retry: a move whose source is gone and whose destination exists was done by an earlier attempt.
  """
  pending = [(src, dst) for src, dst in moves if FileSystems.exists(src)]
  if not pending:
    return
  moved = {dst for src, dst in moves if (src, dst) not in pending}
  stale = [path for path in existing_outputs(output) if path not in moved]
  if not overwrite:
    refuse_existing(output, stale)
  if stale:
    FileSystems.delete(stale)
  FileSystems.rename([src for src, _ in pending], [dst for _, dst in pending])


def check_writable(output: str, token: str) -> None:
  """Writes and removes a small file under the prefix, so a bad output location fails before any reading."""
  probe = f"{output}-temp-{token}-probe"
  try:
    with FileSystems.create(probe, compression_type=_RAW) as f:
      f.write(b"probe")
    FileSystems.delete([probe])
  except Exception as e:  # pylint: disable=broad-except
    raise JobError(f"cannot write under --output {output!r}: {str(e).splitlines()[0]}") from None


def write_text(path: str, text: str, staging: str) -> None:
  """Writes ``text`` to ``staging`` and renames it to ``path``: readers never see half a file."""
  with FileSystems.create(staging, mime_type="text/plain", compression_type=_RAW) as f:
    f.write(text.encode("utf-8"))
  if FileSystems.exists(path):
    FileSystems.delete([path])
  FileSystems.rename([staging], [path])


def remove_dir(path: str) -> None:
  try:
    leftovers = [m.path for m in FileSystems.match([path + "/*"])[0].metadata_list]
    if leftovers:
      FileSystems.delete(leftovers)
    if FileSystems.exists(path):
      FileSystems.delete([path])
  except Exception:  # pylint: disable=broad-except
    pass  # a leftover temporary folder is never read as output

"""Read: TFRecord files into ``(path, index, payload)`` records, the input of ``CrossProduct``."""

import logging
from typing import Iterable, List, NamedTuple, Optional, Tuple, Union

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from beam_job import sources
from beam_job.errors import JobError
from beam_job.flags import ON_CORRUPT

_LOG = logging.getLogger(__name__)


class Corrupt(NamedTuple):
  """A record left out under ``--on_corrupt skip``, in place of its payload."""
  offset: int
  problem: str
  rest_lost: bool = False
  missing_group: bool = False  # a good Example left out under --missing_group skip: it has no group key


# A record as read: ``(source, index, payload)``, the payload a ``Corrupt`` when the frame could not be read.
Record = Tuple[str, int, Union[bytes, Corrupt]]


class _ReadFileFn(beam.DoFn):

  def __init__(self, compression: str, on_corrupt: str):
    self._compression = compression
    self._on_corrupt = on_corrupt

  def process(self, path: str) -> Iterable[Record]:
    if FileSystems.get_scheme(path) is None:
      problem = sources.file_problem(path)
      if problem:  # Beam's match may list a FIFO or skip nothing: never block on one or read a folder
        raise JobError(f"input {path} {problem}")
    try:
      yield from self._read(path)
    except FileNotFoundError:
      # The CLI passes the files it matched at start (no second match): one removed since then is a plain error.
      raise JobError(f"input {path} was matched when the job started but no longer exists (removed or renamed "
                     "while the job ran); rerun the job") from None

  def _read(self, path: str) -> Iterable[Record]:
    for record in sources.read_file(path, self._compression):
      if record.payload is not None:
        yield path, record.index, record.payload
        continue
      corrupt = Corrupt(record.offset, record.problem, record.rest_lost)
      where = (path, record.index, record.offset, record.problem, record.rest_lost,
               sources.detect_compression(path, self._compression))
      if self._on_corrupt == "fail":
        raise JobError(sources.corrupt_input(*where))
      _LOG.warning("skipping corrupt input %s", sources.describe_record(*where))
      yield path, record.index, corrupt


class ReadExamples(beam.PTransform):
  """Reads TFRecord files into ``(path, index, payload)``; with ``on_corrupt='skip'`` a bad frame becomes
  ``(path, index, Corrupt)`` so that it is counted and reported downstream, never dropped silently.

  ``files``, when given, are the files the patterns matched already (the CLI matches them before building the
  pipeline, for the summary): they are read as they are, without matching the patterns again."""

  def __init__(self, patterns: Iterable[str], compression: str = "auto", on_corrupt: str = "fail",
               files: Optional[Iterable[str]] = None):
    super().__init__()
    if compression not in sources.COMPRESSIONS:
      raise JobError(f"--compression must be one of {', '.join(sources.COMPRESSIONS)}, not {compression!r}")
    if on_corrupt not in ON_CORRUPT:
      raise JobError(f"--on_corrupt must be one of {', '.join(ON_CORRUPT)}, not {on_corrupt!r}")
    self._patterns: List[str] = list(patterns)
    self._files = None if files is None else sorted(set(files))
    self._compression = compression
    self._on_corrupt = on_corrupt

  def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection[Record]:
    if self._files is not None:  # Create spreads several files over workers (it reshuffles them)
      paths = pbegin | "Files" >> beam.Create(self._files)
    else:
      paths = (pbegin
               | "Patterns" >> beam.Create(self._patterns)
               | "Match" >> fileio.MatchAll()
               | "Paths" >> beam.Map(lambda metadata: metadata.path)
               | "Distinct" >> beam.Distinct())
    return paths | "ReadFrames" >> beam.ParDo(_ReadFileFn(self._compression, self._on_corrupt))

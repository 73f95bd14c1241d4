"""The one exception type that means "the user's input or flags are wrong".

The CLI prints such an error as one line and exits non-zero; any other exception is an internal error and
keeps its traceback. Beam re-raises worker exceptions wrapped in its own types (and, with multi-processing,
as text), so the CLI finds the message by the ``JobError: `` marker that Python puts before it.
"""

import re

_MARKER = re.compile(r"JobError: (.+)")
_BEAM_SUFFIX = re.compile(r"\s*\[while running '[^']*'\]\s*$")


class JobError(ValueError):
  """A user-input error: bad flag, bad path, bad record, feature collision."""


def mentions_job_error(text: str) -> bool:
  """Whether a log message or traceback text is about a JobError (what ``beam_job.quiet`` leaves out)."""
  return "JobError: " in text


def find_job_error(exc: BaseException) -> "str | None":
  """Returns the one-line message of a JobError inside ``exc``, or None.

  Looks through the exception chain first, then through the text of the exception, which is all that survives
  when a Beam worker ran in another process.
  """
  seen = set()
  current = exc
  while current is not None and id(current) not in seen:
    seen.add(id(current))
    if isinstance(current, JobError):
      return _BEAM_SUFFIX.sub("", str(current).splitlines()[0])
    current = current.__cause__ or current.__context__
  match = _MARKER.search(str(exc))
  if match:
    return _BEAM_SUFFIX.sub("", match.group(1))
  return None

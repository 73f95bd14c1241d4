"""Every pairwise combination of two TFRecord datasets of tf.train.Example, as an Apache Beam batch job.

``from beam_job import CrossProduct, DescribePairs, ReadExamples`` imports ``beam_job.transforms`` (and Beam)
on first use only, so that ``python -m beam_job.flags`` and ``python -m beam_job.report`` start without it.
"""

from beam_job.errors import JobError

__all__ = ["CrossProduct", "DescribePairs", "ReadExamples", "JobError"]


def __getattr__(name: str):
  if name in ("CrossProduct", "DescribePairs", "ReadExamples"):
    from beam_job import transforms  # pylint: disable=import-outside-toplevel
    return getattr(transforms, name)
  raise AttributeError(f"module 'beam_job' has no attribute {name!r}")

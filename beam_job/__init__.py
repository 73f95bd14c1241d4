"""Every pairwise combination of two TFRecord datasets of tf.train.Example, as an Apache Beam batch job."""

from beam_job.errors import JobError
from beam_job.transforms import CrossProduct, DescribePairs, ReadExamples

__all__ = ["CrossProduct", "DescribePairs", "ReadExamples", "JobError"]

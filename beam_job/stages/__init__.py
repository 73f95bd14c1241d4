"""The Beam stages of the job, one module each, in the order the data flows through them.

``read`` (files to ``(source, index, payload)``) → ``prepare`` (parse, rename and select once per record;
tally each side's stats) → ``plan`` (the two sides' stats to the plan, which starts the run) → ``write``
(route each record to the cells of its row or column, write each cell) → ``finalize`` (check every count,
publish the shards, the schema and the summary). ``beam_job.transforms.CrossProduct`` composes them.
"""

NAMESPACE = "beam_job"  # of the job's Beam counters (``beam_job:pairs_written``, ...)

"""``python -m beam_job``: the job's command line (``beam_job.cli``)."""

import gc
import sys

from beam_job.cli import main

code = main()
# The interpreter's collections at exit walk every object that Beam and its imports (pandas, pyarrow, ...)
# created, about 0.4 s of every run here. Everything the job wrote is closed and published by now (atexit
# handlers and the standard streams still run and flush), so those objects are frozen out of the collections.
gc.freeze()
sys.exit(code)

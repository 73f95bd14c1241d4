import sys

from beam_job.cli import main

sys.exit(main())

"""The floor any Beam job on this machine pays: import Beam, build a two-input pipeline, run it on the same
FnApiRunner the job uses, exit (freezing the objects out of the interpreter's collections at exit, as
``python -m beam_job`` does). ``python trivial_beam.py LEFT RIGHT`` (the paths are only passed through)."""

import gc
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from beam_job import cli  # pylint: disable=wrong-import-position


def main(left, right):
  options = PipelineOptions([])
  with beam.Pipeline(runner=cli.local_runner(options), options=options) as p:
    _ = ((p | "Left" >> beam.Create([left]), p | "Right" >> beam.Create([right]))
         | beam.Flatten() | beam.Map(len))


if __name__ == "__main__":
  main(*sys.argv[1:3])
  gc.freeze()

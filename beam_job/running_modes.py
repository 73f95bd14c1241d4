"""Refuses the local running mode that loses records: ``--direct_running_mode=multi_threading``.

In that mode the FnApiRunner starts its SDK harness in-process with a 1 s time-based output buffer
(``worker_handlers.EmbeddedGrpcWorkerHandler``, ``DATA_BUFFER_TIME_LIMIT_MS``). A timer thread then flushes
each output stream of a running bundle (``data_plane.TimeBasedBufferingClosableOutputStream``) by
``get()``, handing the bytes on, then ``_clear()``, while the bundle thread keeps encoding elements into the
same stream without the flush lock (``bundle_processor.DataOutputOperation.process``). Whatever the bundle
wrote between ``get()`` and ``_clear()`` is discarded, and a flush in the middle of an element cuts it in two,
so a later stage decodes garbage. Any bundle that writes output for more than a second is exposed; a busy
machine widens the window. ``tests/test_beam_threading.py`` reproduces it in plain Beam.

The in-memory mode (the default) buffers by size only, and ``multi_processing``'s SDK harness
(``sdk_worker_main``) turns the time limit off, so both are left alone.
"""

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions

from beam_job.errors import JobError

MESSAGE = ("--direct_running_mode=multi_threading loses records in Beam's FnApiRunner (its timer thread flushes "
           "a bundle's output while the bundle writes to it); use multi_processing or the default in_memory")


def _is_local(runner) -> bool:
  from apache_beam.runners.direct.direct_runner import SwitchingDirectRunner  # pylint: disable=import-outside-toplevel
  from apache_beam.runners.portability.fn_api_runner import fn_runner  # pylint: disable=import-outside-toplevel
  return runner is None or isinstance(runner, (SwitchingDirectRunner, fn_runner.FnApiRunner))


def refuse_lossy_mode(options: PipelineOptions, runner=None) -> None:
  """Raises ``JobError`` when ``options`` would run the local FnApiRunner in its multi-threading mode."""
  if _is_local(runner) and options.view_as(DirectOptions).direct_running_mode == "multi_threading":
    raise JobError(MESSAGE)

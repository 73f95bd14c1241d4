"""Beam's multi-threading FnApiRunner loses elements (issue 10), and the job refuses that mode.

The mechanism, in Beam 2.77: ``--direct_running_mode=multi_threading`` runs the SDK harness in-process with a
1 s time-based output buffer. A timer thread flushes a running bundle's output stream by ``get()``, handing
the bytes to the data channel, then ``_clear()`` (``data_plane.SizeBasedBufferingClosableOutputStream.flush``
under ``TimeBasedBufferingClosableOutputStream._flush_lock``), while the bundle thread encodes more elements
into the same stream without that lock (``bundle_processor.DataOutputOperation.process``). Elements encoded
between ``get()`` and ``_clear()`` are dropped without an error.

The smallest pipeline: one element fanned out by a ``FlatMap`` with a second output, both outputs flattened
(the runner materializes a multi-input Flatten, so every element crosses the data channel), counted. The
race needs the bundle thread to run while the timer thread is between ``get()`` and ``_clear()``; on an idle
machine that is rare, so the test makes it certain without changing what Beam does: the timer thread's
hand-over of the flushed bytes (the flush callback, which in Beam can block on a full send queue) waits until
the bundle has written more, and the bundle keeps writing until that happened.
"""

import threading
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import fn_runner
from apache_beam.runners.worker import data_plane, sdk_worker_main

from beam_job import cli, running_modes
from beam_job.errors import JobError
from tests.helpers import make_example, write_tfrecord

_MULTI_THREADING = ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]
_TIMER_FLUSHED = threading.Event()  # set once a timer-thread flush has lost the bytes written meanwhile
_CAP_SECONDS = 60  # the bundle stops writing after this long even if no timer flush came


def _slow_timer_flushes(monkeypatch):
  """Makes the timer thread's flush callback return only after the bundle wrote more to the same stream."""
  original = data_plane.TimeBasedBufferingClosableOutputStream.__init__

  def init(stream, close_callback=None, flush_callback=None, *args, **kwargs):
    def callback(data):
      flush_callback(data)
      timer = isinstance(threading.current_thread(), data_plane.PeriodicThread)
      if data and timer and not _TIMER_FLUSHED.is_set():
        deadline = time.monotonic() + _CAP_SECONDS
        while stream.size() <= len(data) and time.monotonic() < deadline:
          time.sleep(0.001)  # the bundle thread runs meanwhile, as when the send queue is full
        _TIMER_FLUSHED.set()  # Beam's flush now calls _clear(): the bytes beyond len(data) are gone

    original(stream, close_callback, callback if flush_callback else None, *args, **kwargs)

  monkeypatch.setattr(data_plane.TimeBasedBufferingClosableOutputStream, "__init__", init)


class _EmitUntilTimerFlush(beam.DoFn):
  """Emits 0, 1, 2, ... until a timer flush happened (at most ``_CAP_SECONDS``), then 1,000 more."""

  def __init__(self):
    self._emitted = beam.metrics.Metrics.counter("repro", "emitted")

  def process(self, unused_element):
    deadline = time.monotonic() + _CAP_SECONDS
    i = 0
    while not _TIMER_FLUSHED.is_set() and time.monotonic() < deadline:
      yield i
      i += 1
    for _ in range(1000):
      yield i
      i += 1
    self._emitted.inc(i)


def _record_count(count):
  beam.metrics.Metrics.counter("repro", "counted").inc(count)


def _run_smallest_pipeline(argv):
  options = PipelineOptions(argv)
  pipeline = beam.Pipeline(runner=fn_runner.FnApiRunner(), options=options)
  outputs = (pipeline | beam.Create([None])
             | beam.ParDo(_EmitUntilTimerFlush()).with_outputs("other", main="main"))
  _ = ((outputs.main, outputs.other) | beam.Flatten() | beam.combiners.Count.Globally() | beam.Map(_record_count))
  result = pipeline.run()
  result.wait_until_finish()
  counters = {c.key.metric.name: c.committed for c in result.metrics().query()["counters"]}
  return counters["emitted"], counters["counted"]


def test_beam_multi_threading_drops_elements_written_during_a_timer_flush(monkeypatch):
  _TIMER_FLUSHED.clear()
  _slow_timer_flushes(monkeypatch)
  emitted, counted = _run_smallest_pipeline(_MULTI_THREADING)
  assert _TIMER_FLUSHED.is_set(), "no timer flush happened within the bundle: the premise changed"
  assert emitted > 1000
  # Beam ended the pipeline as DONE, yet fewer elements reached the Flatten's consumer than were emitted.
  assert counted < emitted, (
      "Beam no longer loses elements in a timer flush: reconsider beam_job.running_modes' refusal")


def test_the_other_local_modes_do_not_flush_on_a_timer():
  """Why only multi_threading is refused: the in-memory data channel and the SDK harness that
  ``multi_processing`` starts (``sdk_worker_main``) buffer output by size only."""
  in_memory = data_plane.InMemoryDataChannel().output_stream("instruction", "transform")
  assert not isinstance(in_memory, data_plane.TimeBasedBufferingClosableOutputStream)
  assert sdk_worker_main._get_data_buffer_time_limit_ms([]) == 0  # pylint: disable=protected-access


def test_cli_refuses_multi_threading(tmp_path, capsys):
  left = tmp_path / "left.tfrecord"
  write_tfrecord(left, [make_example({"id": [i]}) for i in range(3)])
  for extra in ([], ["--dry_run"]):
    code = cli.main(["--left", str(left), "--output", str(tmp_path / "out" / "pairs"), *extra, *_MULTI_THREADING])
    assert code == 2
    assert capsys.readouterr().err.rstrip("\n").splitlines()[-1] == "error: " + running_modes.MESSAGE
  assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_cross_product_refuses_a_local_multi_threading_pipeline(tmp_path):
  from beam_job import CrossProduct  # pylint: disable=import-outside-toplevel
  pipeline = beam.Pipeline(runner=fn_runner.FnApiRunner(), options=PipelineOptions(_MULTI_THREADING))
  records = pipeline | beam.Create([("a", 0, make_example({"id": [0]}))])
  with pytest.raises(JobError) as raised:
    _ = records | CrossProduct(str(tmp_path / "pairs"))
  assert str(raised.value) == running_modes.MESSAGE


def test_multi_threading_on_a_remote_runner_is_not_refused():
  running_modes.refuse_lossy_mode(PipelineOptions(_MULTI_THREADING), runner=object())

"""The gzip shard writer: the bytes of ``gzip.GzipFile(filename="", mode="wb", mtime=0, compresslevel=6)``
whichever thread compresses, errors of its thread raised in the caller, and no trailer after a failure."""

import gzip
import io
import os
import random
import threading

import pytest

from beam_job import sinks

_MB = 1 << 20


def _data(size, seed):
  """Compressible, varied bytes (hex of random bytes, repeated), so deflate finds matches across writes."""
  rng = random.Random(seed)
  return (rng.randbytes(size // 16 + 1).hex().encode() * 8)[:size]


PATTERNS = {
    "nothing": [],
    "empty writes": [b"", b""],
    "one byte": [b"x"],
    "small writes": [_data(n, n) for n in range(1, 3000, 37)],  # under the inline limit: the caller's thread
    "one large write": [_data(3 * _MB, "large")],
    "just under, then over the limit": [_data(_MB - 1, "under"), b"y", _data(5, "over")],
    "many blocks of every kind": [
        kind(_data(size, i)) for i, (kind, size) in enumerate(
            [(bytes, 700_000), (bytearray, 513), (memoryview, 900_000), (bytes, 0), (bytes, 1)] * 4 +
            [(bytes, 2 * _MB + 3)] * 3)],
}


def _reference(writes):
  buffer = io.BytesIO()
  with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=6) as stream:
    for data in writes:
      stream.write(data)
  return buffer.getvalue()


@pytest.mark.parametrize("writes", PATTERNS.values(), ids=PATTERNS.keys())
def test_a_gzip_shard_has_the_bytes_of_gzip_file_and_its_count_is_its_size(tmp_path, writes):
  path = str(tmp_path / "shard")
  with sinks.open_shard(path, "gzip") as out:
    for data in writes:
      assert out.write(data) == len(bytes(data))
  assert open(path, "rb").read() == _reference(writes)
  assert out.count == os.path.getsize(path)
  assert gzip.decompress(_reference(writes)) == b"".join(bytes(data) for data in writes)


class _Recorder:
  """A raw object that keeps what is written and which thread wrote it; it can fail after some bytes."""

  def __init__(self, fail_after=None):
    self.chunks, self.threads = [], set()
    self._fail_after = fail_after
    self.terminated = False
    self.written_after_terminate = False

  def write(self, data):
    self.written_after_terminate |= self.terminated
    if self._fail_after is not None and sum(map(len, self.chunks)) + len(data) > self._fail_after:
      raise OSError(28, "No space left on device")
    self.chunks.append(bytes(data))
    self.threads.add(threading.current_thread().name)

  def terminate(self):
    self.terminated = True

  def close(self):
    raise AssertionError("a failed attempt must never be closed (committed)")


@pytest.mark.parametrize("sizes, compressor", [([1000] * 50, "MainThread"), ([300_000] * 12, "gzip-shard")],
                         ids=["small shard on the caller's thread", "large shard in a thread"])
def test_only_a_shard_past_the_inline_limit_is_compressed_in_a_thread(sizes, compressor):
  raw = _Recorder()
  writer = sinks.GzipWriter(sinks._Counted(raw))  # pylint: disable=protected-access
  writes = [_data(size, i) for i, size in enumerate(sizes)]
  for data in writes:
    writer.write(data)
  writer.close()
  assert b"".join(raw.chunks) == _reference(writes)
  assert raw.threads == {"MainThread", compressor}  # the header and trailer are always the caller's
  assert writer.count == len(b"".join(raw.chunks))


def test_an_error_in_the_compressing_thread_is_raised_by_the_next_write_or_close():
  raw = _Recorder(fail_after=200_000)
  writer = sinks.GzipWriter(sinks._Counted(raw))  # pylint: disable=protected-access
  with pytest.raises(OSError, match="No space left on device"):
    for i in range(40):
      writer.write(_data(_MB, i))
    writer.close()
  written = b"".join(raw.chunks)
  with pytest.raises(OSError, match="No space left on device"):  # again, never a trailer after the failure
    writer.close()
  assert b"".join(raw.chunks) == written
  with pytest.raises(EOFError):
    gzip.decompress(written)


@pytest.mark.parametrize("size", [1000, 5 * _MB], ids=["inline", "threaded"])
def test_a_failed_gzip_attempt_writes_no_trailer_and_nothing_after_it_is_cancelled(monkeypatch, size):
  raw = _Recorder()
  monkeypatch.setattr(sinks.FileSystems, "create", lambda *args, **kwargs: raw)
  with pytest.raises(RuntimeError, match="dies half-way"):
    with sinks.open_shard("gs://bucket/p-temp-0123456789ab/shard-0", "gzip") as out:
      for i in range(0, size, 300_000):
        out.write(_data(min(300_000, size - i), i))
      raise RuntimeError("the attempt dies half-way")
  assert raw.terminated and not raw.written_after_terminate
  written = b"".join(raw.chunks)
  assert written.startswith(b"\x1f\x8b\x08")
  with pytest.raises(EOFError):  # a prefix of a deflate stream, no end marker, no trailer
    gzip.decompress(written)

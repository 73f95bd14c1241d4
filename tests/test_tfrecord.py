"""beam_job.tfrecord: framing against TensorFlow's writer and reader, and the strict frame reader."""

import io
import os
import random
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from beam_job import tfrecord
from beam_job.tfrecord import Record, frame, masked_crc, read_frames
from tests.helpers import read_tfrecords, write_tfrecord

PAYLOADS = [b"", b"a", b"hello world", bytes(range(256)), b"\x00" * 1000]


def frames(*payloads):
  return b"".join(frame(p) for p in payloads)


def read_all(data: bytes):
  return list(read_frames(io.BytesIO(data)))


# --- masked CRC and framing --------------------------------------------------------------------------------


def test_masked_crc_known_values():
  # CRC32C("") = 0, CRC32C("123456789") = 0xE3069283 (the standard check value); masked by TFRecord's rule.
  def mask(crc):
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  assert masked_crc(b"") == 0xA282EAD8
  assert masked_crc(b"123456789") == mask(0xE3069283)
  # frame() of an empty record, byte for byte: length 0, masked CRC of 8 zero bytes, no data, masked CRC("").
  zero_len = b"\x00" * 8
  assert frame(b"") == zero_len + struct.pack("<I", masked_crc(zero_len)) + struct.pack("<I", 0xA282EAD8)


def test_frame_layout():
  data = b"payload!"
  framed = frame(data)
  assert len(framed) == tfrecord.HEADER_BYTES + len(data) + tfrecord.FOOTER_BYTES
  assert framed[:8] == struct.pack("<Q", len(data))
  assert struct.unpack("<I", framed[8:12])[0] == masked_crc(framed[:8])
  assert framed[12:-4] == data
  assert struct.unpack("<I", framed[-4:])[0] == masked_crc(data)


def test_frame_equals_tensorflow_writer(tmp_path):
  path = write_tfrecord(tmp_path / "tf.tfrecord", PAYLOADS)
  with open(path, "rb") as f:
    written = f.read()
  assert written == frames(*PAYLOADS)


def test_tensorflow_reads_frames(tmp_path):
  path = tmp_path / "ours.tfrecord"
  path.write_bytes(frames(*PAYLOADS))
  assert read_tfrecords(path) == PAYLOADS


# --- read_frames: good input -----------------------------------------------------------------------------


def test_read_frames_round_trip_with_indexes_and_offsets():
  records = read_all(frames(*PAYLOADS))
  expected, offset = [], 0
  for i, p in enumerate(PAYLOADS):
    expected.append(Record(i, offset, p, None, False))
    offset += 16 + len(p)
  assert records == expected
  assert [r.offset for r in records] == [0, 16, 33, 60, 332]


def test_read_frames_of_tensorflow_file(tmp_path):
  path = write_tfrecord(tmp_path / "tf.tfrecord", PAYLOADS)
  with open(path, "rb") as f:
    assert [r.payload for r in read_frames(f)] == PAYLOADS


def test_zero_length_stream_yields_nothing():
  assert read_all(b"") == []


# --- read_frames: corrupt input --------------------------------------------------------------------------


def test_bad_data_crc_is_reported_and_reading_continues():
  data = bytearray(frames(b"first", b"second", b"third"))
  data[16 + 5 + 12] ^= 0x01  # first byte of "second"
  assert read_all(bytes(data)) == [
      Record(0, 0, b"first"),
      Record(1, 21, None, "bad data CRC", False),
      Record(2, 43, b"third"),
  ]


def test_bad_data_crc_in_footer():
  data = bytearray(frames(b"first", b"second"))
  data[-1] ^= 0x80
  assert read_all(bytes(data)) == [Record(0, 0, b"first"), Record(1, 21, None, "bad data CRC", False)]


def test_bad_length_crc_loses_the_rest():
  data = bytearray(frames(b"first", b"second", b"third"))
  data[21 + 8] ^= 0xFF  # length CRC of record 1
  assert read_all(bytes(data)) == [Record(0, 0, b"first"), Record(1, 21, None, "bad length CRC", True)]


def test_changed_length_fails_the_length_crc():
  data = bytearray(frames(b"first", b"second"))
  data[21] = 3  # claims 3 bytes, but the CRC covers the real length
  assert read_all(bytes(data)) == [Record(0, 0, b"first"), Record(1, 21, None, "bad length CRC", True)]


@pytest.mark.parametrize("cut", range(1, tfrecord.HEADER_BYTES))
def test_truncated_header(cut):
  data = frames(b"first", b"second")
  records = read_all(data[:21 + cut])
  assert records == [
      Record(0, 0, b"first"),
      Record(1, 21, None, f"truncated header ({cut} of 12 bytes)", True),
  ]


@pytest.mark.parametrize("kept_body", [0, 1, 5, 6, 9])
def test_truncated_body(kept_body):
  # record 1 is "second" (6 bytes) + 4-byte footer; keep its header and ``kept_body`` of the 10 bytes after it.
  data = frames(b"first", b"second")
  records = read_all(data[:21 + 12 + kept_body])
  assert records == [
      Record(0, 0, b"first"),
      Record(1, 21, None, f"record claims 6 bytes but the file ends after {max(0, kept_body - 4)}", True),
  ]


def test_forged_huge_length_allocates_only_what_the_file_holds():
  length = struct.pack("<Q", 2 ** 60)
  forged = length + struct.pack("<I", masked_crc(length)) + b"x" * 100
  data = frame(b"ok") + forged
  tracemalloc.start()
  try:
    records = read_all(data)
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert peak < 1 << 20
  assert records == [
      Record(0, 0, b"ok"),
      Record(1, 18, None, f"record claims {2 ** 60} bytes but the file ends after 96", True),
  ]


def test_forged_max_length_returns_quickly():
  length = struct.pack("<Q", 2 ** 64 - 1)
  forged = length + struct.pack("<I", masked_crc(length))
  assert read_all(forged) == [Record(0, 0, None, f"record claims {2 ** 64 - 1} bytes but the file ends after 0",
                                     True)]


def test_known_size_refuses_a_frame_past_the_end_without_reading_it():
  length = struct.pack("<Q", 2 ** 40)
  data = frame(b"ok") + length + struct.pack("<I", masked_crc(length)) + bytes(3 << 20)
  stream = io.BytesIO(data)
  asked = []
  records = list(read_frames(stream, lambda: asked.append(1) or len(data)))
  problem = f"record claims {2 ** 40} bytes but the file ends after {(3 << 20) - 4}"
  assert records == [Record(0, 0, b"ok"), Record(1, 18, None, problem, True)]
  assert stream.tell() == 18 + 12 and asked == [1]


def test_size_is_asked_once_and_only_for_a_frame_over_one_piece():
  big = bytes(range(256)) * 8192  # 2 MiB
  asked = []
  data = frames(b"a", big, b"b", big)
  assert [r.payload for r in read_frames(io.BytesIO(data), lambda: asked.append(1) or len(data))] == \
      [b"a", big, b"b", big]
  assert asked == [1]
  assert [r.payload for r in read_frames(io.BytesIO(frames(*PAYLOADS)), lambda: pytest.fail("asked"))] == PAYLOADS


@pytest.mark.parametrize("size", [None, lambda: None, lambda: 12 + (5 << 20) + 4 + 100])
def test_large_frame_read_in_pieces_or_at_once(size):
  big = random.Random(1).randbytes(5 << 20)
  data = frame(big) + b"x" * 100
  assert list(read_frames(io.BytesIO(data), size)) == [Record(0, 0, big),
                                                       Record(1, 16 + (5 << 20), None, "bad length CRC", True)]


class _Trickle(io.RawIOBase):
  """A stream that returns at most 3 bytes per read, like a slow pipe."""

  def __init__(self, data):
    self._data = io.BytesIO(data)

  def readable(self):
    return True

  def read(self, size=-1):
    return self._data.read(min(3, size) if size >= 0 else 3)


def test_short_reads_are_completed():
  data = frames(*PAYLOADS)
  assert [r.payload for r in read_frames(_Trickle(data))] == PAYLOADS


def test_reads_in_pieces_for_large_records(monkeypatch):
  monkeypatch.setattr(tfrecord, "_READ_PIECE", 7)
  data = frames(*PAYLOADS)
  assert [r.payload for r in read_all(data)] == PAYLOADS


def test_short_reads_are_completed_when_the_size_is_known(monkeypatch):
  monkeypatch.setattr(tfrecord, "_READ_PIECE", 7)
  data = frames(*PAYLOADS)
  assert [r.payload for r in read_frames(_Trickle(data), lambda: len(data))] == PAYLOADS


# --- property-based ----------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_round_trip_property(tmp_path, payloads):
  data = frames(*payloads)
  records = read_all(data)
  assert [r.payload for r in records] == payloads
  assert all(r.problem is None and not r.rest_lost for r in records)
  assert [r.index for r in records] == list(range(len(payloads)))
  offsets = [0]
  for p in payloads[:-1]:
    offsets.append(offsets[-1] + 16 + len(p))
  assert [r.offset for r in records] == offsets[:len(payloads)]
  path = tmp_path / "prop.tfrecord"
  path.write_bytes(data)
  assert read_tfrecords(path) == payloads


def _check_invariants(data: bytes):
  records = read_all(data)  # must not raise
  offset = 0
  for i, r in enumerate(records):
    assert r.index == i
    assert r.offset == offset
    if r.payload is None:
      assert isinstance(r.problem, str) and r.problem
    else:
      assert r.problem is None and not r.rest_lost
      assert data[r.offset + 12:r.offset + 12 + len(r.payload)] == r.payload
    if r.rest_lost:
      assert i == len(records) - 1
      return records
    length = struct.unpack_from("<Q", data, r.offset)[0]
    offset += 16 + length
  assert offset == len(data)  # without a rest_lost record every byte was read as frames
  return records


# A longer fuzz run: FUZZ_EXAMPLES=200000 .venv/bin/python -m pytest -q tests -k fuzz
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data):
  _check_invariants(data)


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=5), st.data())
def test_fuzz_mutated_frames(payloads, data):
  raw = bytearray(frames(*payloads))
  for _ in range(data.draw(st.integers(0, 3))):
    op = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
    if op == "cut":
      raw = raw[:data.draw(st.integers(0, len(raw)))]
    elif op == "insert":
      at = data.draw(st.integers(0, len(raw)))
      raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    elif raw:
      at = data.draw(st.integers(0, len(raw) - 1))
      if op == "flip":
        raw[at] ^= 1 << data.draw(st.integers(0, 7))
      else:
        del raw[at]
  _check_invariants(bytes(raw))


def test_fuzz_every_single_byte_flip():
  payloads = [b"alpha", b"", b"gamma-delta"]
  clean = frames(*payloads)
  rng = random.Random(1234)
  for at in range(len(clean)):
    raw = bytearray(clean)
    raw[at] ^= 1 << rng.randrange(8)
    records = _check_invariants(bytes(raw))
    # One flipped bit never goes unnoticed: exactly one record is corrupt or the rest is lost.
    assert sum(r.payload is None for r in records) == 1, at
    good = [r.payload for r in records if r.payload is not None]
    assert all(p in payloads for p in good)

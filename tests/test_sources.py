"""beam_job.sources: strict decompression, compression detection and file matching."""

import bz2
import gzip
import json
import lzma
import os
import struct
import subprocess
import sys
import zlib

import pytest

from beam_job import sources, tfrecord
from beam_job.errors import JobError
from beam_job.tfrecord import Record
from tests.helpers import make_example, read_tfrecords, write_tfrecord

PAYLOADS = [make_example({"i": [i], "s": [b"x" * i]}) for i in range(5)]


def offsets(payloads):
  out, offset = [], 0
  for p in payloads:
    out.append(offset)
    offset += 16 + len(p)
  return out


def good_records(payloads):
  return [Record(i, o, p) for i, (p, o) in enumerate(zip(payloads, offsets(payloads)))]


# --- reading TensorFlow's files ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind, name", [("gzip", "d.tfrecord.gz"), ("zlib", "d.tfrecord.zlib"),
                                        (None, "d.tfrecord")])
def test_read_file_of_tensorflow_writer(tmp_path, kind, name):
  path = write_tfrecord(tmp_path / name, PAYLOADS, kind)
  expected = good_records(PAYLOADS)
  assert list(sources.read_file(path, "auto")) == expected
  assert list(sources.read_file(path, kind or "uncompressed")) == expected
  assert read_tfrecords(path, kind) == PAYLOADS


@pytest.mark.parametrize("kind", ["gzip", "zlib"])
def test_read_file_explicit_compression_ignores_extension(tmp_path, kind):
  path = write_tfrecord(tmp_path / "no_extension", PAYLOADS, kind)
  assert list(sources.read_file(path, kind)) == good_records(PAYLOADS)


@pytest.mark.parametrize("kind, ext", [("gzip", ".gz"), ("zlib", ".zlib")])
def test_read_empty_tensorflow_file(tmp_path, kind, ext):
  path = write_tfrecord(tmp_path / ("empty.tfrecord" + ext), [], kind)
  assert list(sources.read_file(path, "auto")) == []


def test_read_file_large_records_gzip(tmp_path):
  payloads = [make_example({"blob": [bytes([i]) * (3 << 20)]}) for i in range(3)]
  path = write_tfrecord(tmp_path / "big.tfrecord.gz", payloads, "gzip")
  assert [r.payload for r in sources.read_file(path, "auto")] == payloads


def test_concatenated_gzip_members_are_all_read(tmp_path):
  a = (tmp_path / "a.gz")
  b = (tmp_path / "b.gz")
  write_tfrecord(a, PAYLOADS[:2], "gzip")
  write_tfrecord(b, PAYLOADS[2:], "gzip")
  both = tmp_path / "both.tfrecord.gz"
  both.write_bytes(a.read_bytes() + b.read_bytes())
  assert list(sources.read_file(str(both), "auto")) == good_records(PAYLOADS)
  assert read_tfrecords(both, "gzip") == PAYLOADS


def test_garbage_after_gzip_stream_is_a_problem(tmp_path):
  path = tmp_path / "junk.tfrecord.gz"
  write_tfrecord(path, PAYLOADS, "gzip")
  path.write_bytes(path.read_bytes() + b"GARBAGE!")
  records = list(sources.read_file(str(path), "auto"))
  assert records[:-1] == good_records(PAYLOADS)
  last = records[-1]
  assert (last.index, last.offset, last.payload, last.rest_lost) == \
      (5, sum(16 + len(p) for p in PAYLOADS), None, True)
  assert last.problem.startswith("cannot decompress gzip data: ")


# --- cut-off compressed files ------------------------------------------------------------------------------


def check_cut(records, expected_count, cut):
  good = [r for r in records if r.payload is not None]
  bad = [r for r in records if r.payload is None]
  # The good records that came out are the file's first ones, unchanged.
  assert good == good_records(PAYLOADS)[:len(good)], cut
  if len(good) < expected_count:
    # never silently fewer records: exactly one last record says the rest is lost
    assert len(bad) == 1, (cut, records)
    assert records[-1] is bad[0] and bad[0].rest_lost, (cut, records)
    assert bad[0].index == len(good), (cut, records)
    assert bad[0].offset == offsets(PAYLOADS + [b""])[len(good)], (cut, records)
  else:
    assert len(good) == expected_count


@pytest.mark.parametrize("kind, ext", [("gzip", ".gz"), ("zlib", ".zlib")])
def test_cut_compressed_file_never_loses_records_silently(tmp_path, kind, ext):
  full = write_tfrecord(tmp_path / ("full.tfrecord" + ext), PAYLOADS, kind)
  with open(full, "rb") as f:
    data = f.read()
  cut_path = tmp_path / ("cut.tfrecord" + ext)
  for cut in range(1, len(data)):
    cut_path.write_bytes(data[:cut])
    records = list(sources.read_file(str(cut_path), "auto"))
    check_cut(records, len(PAYLOADS), cut)
    # a cut-off stream always ends in a problem, even when it had every record already
    assert records and records[-1].payload is None and records[-1].rest_lost, cut
    assert records[-1].problem.startswith(f"cannot decompress {kind} data: "), cut
  cut_path.write_bytes(data)
  assert list(sources.read_file(str(cut_path), "auto")) == good_records(PAYLOADS)


def test_cut_zlib_file_at_zero_bytes(tmp_path):
  path = tmp_path / "empty.tfrecord.zlib"
  path.write_bytes(b"")
  assert list(sources.read_file(str(path), "auto")) == [
      Record(0, 0, None, "cannot decompress zlib data: the file is empty, not even a stream header", True)]


def test_cut_gzip_file_at_zero_bytes(tmp_path):
  path = tmp_path / "empty.tfrecord.gz"
  path.write_bytes(b"")
  records = list(sources.read_file(str(path), "auto"))
  assert len(records) == 1 and records[0].payload is None and records[0].rest_lost


def test_offset_of_decompression_error_after_a_bad_data_crc_record(tmp_path):
  # Frame 0 good, frame 1 has a bad data CRC (its length is fine), then the gzip stream is cut in its trailer.
  # The problem record for the cut must be record 2 at the byte where frame 2 would start.
  frame0 = tfrecord.frame(b"abc")
  frame1 = bytearray(tfrecord.frame(b"defgh"))
  frame1[12] ^= 0x01
  raw = frame0 + bytes(frame1)
  compressed = gzip.compress(raw, mtime=0)
  path = tmp_path / "bad.tfrecord.gz"
  path.write_bytes(compressed[:-4])  # the ISIZE field of the trailer is missing
  records = list(sources.read_file(str(path), "auto"))
  assert records[:2] == [Record(0, 0, b"abc"), Record(1, 19, None, "bad data CRC", False)]
  assert len(records) == 3
  assert (records[2].index, records[2].payload, records[2].rest_lost) == (2, None, True)
  assert records[2].offset == len(raw) == 40  # the byte after frame 1, which is 16 + 5 bytes long


# --- wrong compression -------------------------------------------------------------------------------------


def test_gzip_read_as_uncompressed_suggests_compression_flag(tmp_path):
  path = write_tfrecord(tmp_path / "data.tfrecord.gz", PAYLOADS, "gzip")
  assert list(sources.read_file(path, "uncompressed")) == [
      Record(0, 0, None, "bad length CRC (if the file is compressed, set --compression)", True)]


def test_zlib_read_as_uncompressed_suggests_compression_flag(tmp_path):
  path = write_tfrecord(tmp_path / "data.tfrecord", PAYLOADS, "zlib")
  records = list(sources.read_file(path, "auto"))
  assert len(records) == 1
  assert records[0].payload is None and records[0].rest_lost
  assert "--compression" in records[0].problem


def test_hint_only_for_the_first_record(tmp_path):
  path = tmp_path / "plain.tfrecord"
  data = tfrecord.frame(b"ok") + b"\x01\x02\x03"
  path.write_bytes(data)
  assert list(sources.read_file(str(path), "auto")) == [
      Record(0, 0, b"ok"), Record(1, 18, None, "truncated header (3 of 12 bytes)", True)]


def test_uncompressed_read_as_gzip(tmp_path):
  path = tmp_path / "plain.gz"
  path.write_bytes(tfrecord.frame(b"ok"))
  (record,) = sources.read_file(str(path), "auto")
  assert (record.index, record.offset, record.payload, record.rest_lost) == (0, 0, None, True)
  assert record.problem.startswith("cannot decompress gzip data: Not a gzipped file")


def test_gzip_read_as_zlib(tmp_path):
  path = write_tfrecord(tmp_path / "data.tfrecord.gz", PAYLOADS, "gzip")
  (record,) = sources.read_file(path, "zlib")
  assert (record.index, record.offset, record.payload, record.rest_lost) == (0, 0, None, True)
  assert record.problem.startswith("cannot decompress zlib data: ")


def test_corrupt_deflate_data_is_a_problem(tmp_path):
  path = tmp_path / "flip.tfrecord.zlib"
  data = bytearray(zlib.compress(b"".join(tfrecord.frame(p) for p in PAYLOADS)))
  data[-2] ^= 0xFF  # inside the Adler-32 checksum
  path.write_bytes(bytes(data))
  records = list(sources.read_file(str(path), "auto"))
  assert records[:-1] == good_records(PAYLOADS)[:len(records) - 1]
  assert records[-1].payload is None and records[-1].rest_lost
  assert records[-1].problem.startswith("cannot decompress zlib data: ")


# --- detect_compression and match_files --------------------------------------------------------------------


@pytest.mark.parametrize("path, flag, expected", [
    ("a.tfrecord.gz", "auto", "gzip"),
    ("a.gzip", "auto", "gzip"),
    ("gs://b/a.zlib", "auto", "zlib"),
    ("a.deflate", "auto", "zlib"),
    ("a.tfrecord", "auto", "uncompressed"),
    ("a.gz.tfrecord", "auto", "uncompressed"),
    ("a.GZ", "auto", "uncompressed"),
    ("a", "auto", "uncompressed"),
    ("a.tfrecord.gz", "uncompressed", "uncompressed"),
    ("a.tfrecord", "gzip", "gzip"),
    ("a.tfrecord.gz", "zlib", "zlib"),
])
def test_detect_compression(path, flag, expected):
  assert sources.detect_compression(path, flag) == expected


def test_split_patterns():
  # Local patterns become absolute (Beam cannot list the folder of a bare "a*"); URLs stay as they are.
  assert sources.split_patterns(" a*, ,gs://b/c ,") == [os.path.join(os.getcwd(), "a*"), "gs://b/c"]
  assert sources.split_patterns("") == []


def test_match_files_sorted_and_unique(tmp_path):
  for name in ("b.tfrecord", "a.tfrecord", "c.txt"):
    (tmp_path / name).write_bytes(b"")
  found = sources.match_files([str(tmp_path / "*.tfrecord"), str(tmp_path / "a.*")], "--left")
  assert found == [str(tmp_path / "a.tfrecord"), str(tmp_path / "b.tfrecord")]


@pytest.mark.parametrize("name", ["nothing*.tfrecord", "missing.tfrecord", "no_dir/x.tfrecord"])
def test_match_files_no_match_names_the_pattern(tmp_path, name):
  (tmp_path / "a.tfrecord").write_bytes(b"")
  pattern = str(tmp_path / name)
  with pytest.raises(JobError) as info:
    sources.match_files([str(tmp_path / "a.tfrecord"), pattern], "--right")
  assert str(info.value) == f"--right pattern {pattern!r} matches no file"


# --- inputs that cannot be read as files ------------------------------------------------------------------

_DANGLING = ("is a symbolic link to {target!r}, which does not exist (a git-annex or DVC file whose content is not "
             "here?)")
_FIFO = ("is a named pipe (FIFO), not a regular file: the job reads each input more than once, so write the data to "
         "a file")


def _directory(path) -> str:
  return f"is a directory, not a TFRecord file; to read the files in it, pass '{path}/*'"


def _match_error(patterns, flag="--left") -> str:
  with pytest.raises(JobError) as info:
    sources.match_files([str(p) for p in patterns], flag)
  return str(info.value)


@pytest.fixture
def folder(tmp_path):
  """A folder with one good file, as in a checkout: errors below come from the entries each test adds."""
  (tmp_path / "a.tfrecord").write_bytes(b"")
  return tmp_path


def test_dangling_link_matched_by_a_glob(folder):
  # git-annex and DVC keep unfetched files as links to content that is not there; Beam's match drops them.
  os.symlink("../.git/annex/objects/xx/SHA256E-s1--0", folder / "b.tfrecord")
  assert _match_error([folder / "*.tfrecord"]) == \
      f"--left: {folder / 'b.tfrecord'} " + _DANGLING.format(target="../.git/annex/objects/xx/SHA256E-s1--0")


def test_only_dangling_links_name_the_link_not_no_match(tmp_path):
  for name in ("a.tfrecord", "b.tfrecord", "c.tfrecord"):
    os.symlink("missing-" + name, tmp_path / name)
  assert _match_error([tmp_path / "*.tfrecord"], "--right") == \
      f"--right: {tmp_path / 'a.tfrecord'} " + _DANGLING.format(target="missing-a.tfrecord") + \
      " (and 2 more inputs that are not files)"


def test_dangling_link_given_by_name(folder):
  os.symlink("nowhere", folder / "b.tfrecord")
  assert _match_error([folder / "b.tfrecord"]) == \
      f"--left: {folder / 'b.tfrecord'} " + _DANGLING.format(target="nowhere")


@pytest.mark.parametrize("glob", [False, True])
def test_fifo(folder, glob):
  os.mkfifo(folder / "b.tfrecord")
  pattern = folder / ("*.tfrecord" if glob else "b.tfrecord")
  assert _match_error([pattern]) == f"--left: {folder / 'b.tfrecord'} {_FIFO}"


def test_socket(folder):
  import socket  # pylint: disable=import-outside-toplevel
  path = folder / "b.tfrecord"
  if len(str(path)) > 100:
    pytest.skip("path too long for a unix socket")
  with socket.socket(socket.AF_UNIX) as server:
    server.bind(str(path))
    assert _match_error([folder / "*"]) == f"--left: {path} is a socket, not a regular file"


def test_character_device():
  assert _match_error(["/dev/null"]) == "--left: /dev/null is a character device, not a regular file"


@pytest.mark.parametrize("name", ["data", "data/"])
def test_directory_given_as_the_pattern(tmp_path, name):
  (tmp_path / "data").mkdir()
  (tmp_path / "data" / "a.tfrecord").write_bytes(b"")
  pattern = sources.split_patterns(str(tmp_path / name))
  assert _match_error(pattern) == f"--left: {tmp_path / 'data'} {_directory(tmp_path / 'data')}"
  assert sources.match_files([str(tmp_path / "data" / "*")], "--left") == [str(tmp_path / "data" / "a.tfrecord")]


def test_directory_matched_by_a_glob(folder):
  # Beam's match leaves it out: the records in it would not be read, without a word.
  (folder / "b.tfrecord").mkdir()
  (folder / "b.tfrecord" / "part-0").write_bytes(b"")
  assert _match_error([folder / "*.tfrecord"]) == f"--left: {folder / 'b.tfrecord'} {_directory(folder / 'b.tfrecord')}"


def test_link_to_a_directory_matched_by_a_recursive_glob(folder):
  # "**" reads the files of the folders it matches, but Beam's walk does not follow a link to one.
  (folder / "sub").mkdir()
  (folder / "sub" / "c.tfrecord").write_bytes(b"")
  (folder / "elsewhere").mkdir()
  os.symlink(folder / "elsewhere", folder / "sub" / "linked")
  assert _match_error([folder / "**"]) == f"--left: {folder / 'sub' / 'linked'} {_directory(folder / 'sub' / 'linked')}"


def test_recursive_glob_reads_subfolders(folder):
  (folder / "sub").mkdir()
  (folder / "sub" / "c.tfrecord").write_bytes(b"")
  os.symlink(folder / "a.tfrecord", folder / "sub" / "link.tfrecord")
  assert sources.match_files([str(folder / "**")], "--left") == \
      [str(folder / "a.tfrecord"), str(folder / "sub" / "c.tfrecord"), str(folder / "sub" / "link.tfrecord")]


def test_glob_ignores_what_it_does_not_match(folder):
  os.symlink("nowhere", folder / "b.other")
  os.mkfifo(folder / "c.other")
  (folder / "d").mkdir()
  (folder / "d" / "x.tfrecord").write_bytes(b"")
  os.symlink("nowhere", folder / "d" / "y.tfrecord")  # one level deeper than "*.tfrecord"
  assert sources.match_files([str(folder / "*.tfrecord")], "--left") == [str(folder / "a.tfrecord")]


def test_link_loop(folder):
  os.symlink("loop2", folder / "loop1.tfrecord")
  os.symlink("loop1.tfrecord", folder / "loop2")
  assert _match_error([folder / "*.tfrecord"]) == \
      f"--left: {folder / 'loop1.tfrecord'} cannot be read as a file: Too many levels of symbolic links"


def test_link_to_a_file_is_read(folder):
  os.symlink("a.tfrecord", folder / "b.tfrecord")
  assert sources.match_files([str(folder / "*")], "--left") == [str(folder / "a.tfrecord"), str(folder / "b.tfrecord")]


def test_urls_are_left_to_their_filesystem():
  assert sources._not_files("gs://bucket/missing/*") == []  # pylint: disable=protected-access


def test_file_check_walks_only_the_depth_a_glob_can_match(folder, monkeypatch):
  (folder / "d" / "e").mkdir(parents=True)
  listed = []
  real = os.scandir
  monkeypatch.setattr(sources.os, "scandir", lambda path: listed.append(path) or real(path))
  assert sources._not_files(str(folder / "*.tfrecord")) == []  # pylint: disable=protected-access
  assert listed == [str(folder)]
  listed.clear()
  assert sources._not_files(str(folder / "*" / "*.tfrecord")) == []  # pylint: disable=protected-access
  assert sorted(listed) == [str(folder), str(folder / "d")]


# --- resources and cost ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, kind", [("a.tfrecord.gz", "gzip"), ("a.tfrecord.zlib", "zlib"),
                                        ("a.tfrecord", None)])
def test_read_file_closes_the_underlying_file(tmp_path, monkeypatch, name, kind):
  path = write_tfrecord(tmp_path / name, PAYLOADS, kind)
  opened = []
  real_open = sources.FileSystems.open

  def spy(*args, **kwargs):
    f = real_open(*args, **kwargs)
    opened.append(f)
    return f

  monkeypatch.setattr(sources.FileSystems, "open", spy)
  assert list(sources.read_file(path, "auto")) == good_records(PAYLOADS)
  assert len(opened) == 1
  assert opened[0].closed  # gzip.GzipFile(fileobj=raw).close() does not close ``raw``


def test_zlib_file_of_many_small_records_reads_every_record(tmp_path):
  # Many small records in one compressed chunk: the reader hands them out one by one from its buffer.
  payloads = [b"%05d" % i * 10 for i in range(60_000)]
  zpath = tmp_path / "many.tfrecord.zlib"
  zpath.write_bytes(zlib.compress(b"".join(tfrecord.frame(p) for p in payloads)))
  assert [r.payload for r in sources.read_file(str(zpath), "auto")] == payloads


def test_io_error_is_not_reported_as_corrupt_data(tmp_path):
  missing = str(tmp_path / "vanished.tfrecord")
  with pytest.raises(OSError):
    list(sources.read_file(missing, "auto"))


# --- memory: bounded by the bytes really in the file, whatever a frame claims --------------------------------

# Reads each file given in a fresh peak (Linux resets the process's peak resident size on "5" written to
# clear_refs) and prints how far the peak rose above the resident size before the read.
_PEAK = r"""
import json, re, sys
from beam_job import sources

def status(key):
  with open("/proc/self/status") as f:
    return int(re.search(key + r":\s+(\d+) kB", f.read()).group(1)) << 10

out = {}
for path in sys.argv[1:]:
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
  before = status("VmRSS")
  records = list(sources.read_file(path, "auto"))
  out[path] = [status("VmHWM") - before, records[-1].problem]
print(json.dumps(out))
"""
_MIB = 1 << 20
# Pieces, the decompressors' windows and dictionaries (xz: 8 MiB by default), the interpreter's own slack.
_FIXED = 24 * _MIB


def _compressor(kind):
  return {"": None, ".gz": lambda: zlib.compressobj(9, zlib.DEFLATED, 31), ".zlib": lambda: zlib.compressobj(9),
          ".bz2": lambda: bz2.BZ2Compressor(9), ".xz": lzma.LZMACompressor}[kind]


def _write_streamed(path, head: bytes, zeros: int, kind: str) -> str:
  """``head`` then ``zeros`` zero bytes, compressed as ``kind`` (a suffix), without holding them in memory."""
  make = _compressor(kind)
  compressor = make() if make else None
  with open(path, "wb") as f:
    for chunk in [head] + [bytes(_MIB)] * (zeros // _MIB):
      f.write(compressor.compress(chunk) if compressor else chunk)
    if compressor:
      f.write(compressor.flush())
  return str(path)


def _peaks(paths):
  out = subprocess.run([sys.executable, "-c", _PEAK, *paths], check=True, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.getcwd()))
  return json.loads(out.stdout)


def test_forged_length_costs_no_more_memory_than_the_file_holds(tmp_path):
  # A frame claiming 2^60 bytes, then 64 MiB of zeros: a few hundred KB compressed. The reader can hold the
  # zeros it really reads, never a copy of them, nor what the header claims; an uncompressed file's size
  # tells at once that the frame cannot be there.
  zeros = 64 * _MIB
  length = struct.pack("<Q", 2 ** 60)
  head = b"".join((tfrecord.frame(b"ok"), length, struct.pack("<I", tfrecord.masked_crc(length))))
  kinds = ["", ".gz", ".zlib", ".bz2", ".xz"]
  paths = [_write_streamed(tmp_path / f"forged.tfrecord{kind}", head, zeros, kind) for kind in kinds]
  peaks = _peaks(paths)
  for kind, path in zip(kinds, paths):
    growth, problem = peaks[path]
    assert problem.startswith(f"record claims {2 ** 60} bytes but the file ends after {zeros - 4}"), kind
    assert growth < (_FIXED if kind == "" else zeros + _FIXED), (kind, growth / _MIB)


def test_compressed_bomb_is_decompressed_only_as_far_as_read(tmp_path):
  # 128 MiB of zeros after a bad length CRC, all in the first chunk of compressed bytes (~130 KB of zlib,
  # ~20 KB of xz): reading stops at the bad header, so nothing of the zeros is held.
  head = tfrecord.frame(b"ok") + b"\x01" * 12
  kinds = [".gz", ".zlib", ".xz"]
  paths = [_write_streamed(tmp_path / f"bomb.tfrecord{kind}", head, 128 * _MIB, kind) for kind in kinds]
  peaks = _peaks(paths)
  for kind, path in zip(kinds, paths):
    growth, problem = peaks[path]
    assert problem == "bad length CRC", kind
    assert growth < _FIXED, (kind, growth / _MIB)


@pytest.mark.parametrize("kind", [".zlib", ".bz2", ".xz"])
def test_strict_reader_holds_what_was_asked_plus_one_chunk(tmp_path, kind):
  path = _write_streamed(tmp_path / f"zeros{kind}", b"", 32 * _MIB, kind)
  with open(path, "rb") as raw:
    kinds = {".zlib": "zlib", ".bz2": "bzip2", ".xz": "lzma"}
    reader = sources._StrictReader(raw, kinds[kind])  # pylint: disable=protected-access
    assert reader.read(12) == bytes(12)
    assert len(reader._buffer) <= sources._OUT_CHUNK  # pylint: disable=protected-access
    total = 12
    while True:
      piece = reader.read(3 * _MIB + 5)
      if not piece:
        break
      assert len(reader._buffer) <= sources._OUT_CHUNK  # pylint: disable=protected-access
      total += len(piece)
  assert total == 32 * _MIB


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from tests.test_tfrecord import FUZZ_EXAMPLES  # noqa: E402


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=30), max_size=4), st.sampled_from(["gzip", "zlib", "bz2", "xz"]), st.data())
def test_fuzz_mutated_compressed_files(tmp_path, payloads, kind, data):
  """Any damage to a compressed file gives records and, at most, the project's own problem records."""
  raw = b"".join(tfrecord.frame(p) for p in payloads)
  import bz2 as bz2_module, lzma as lzma_module  # pylint: disable=import-outside-toplevel
  compress = {"gzip": lambda b: gzip.compress(b, mtime=0), "zlib": zlib.compress, "bz2": bz2_module.compress,
              "xz": lzma_module.compress}[kind]
  blob = bytearray(compress(raw))
  for _ in range(data.draw(st.integers(1, 3))):
    at = data.draw(st.integers(0, len(blob) - 1))
    op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    if op == "flip":
      blob[at] ^= 1 << data.draw(st.integers(0, 7))
    elif op == "cut":
      del blob[at:]
    else:
      blob[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    if not blob:
      break
  path = tmp_path / f"fuzz.tfrecord.{'gz' if kind == 'gzip' else kind}"
  path.write_bytes(bytes(blob))
  records = list(sources.read_file(str(path), "auto"))  # never raises
  for i, record in enumerate(records):
    assert (record.payload is None) == bool(record.problem)
    if record.rest_lost:
      assert i == len(records) - 1


_PAYLOADS = [b"p%03d" % i * 7 for i in range(50)]
_RAW = b"".join(tfrecord.frame(p) for p in _PAYLOADS)


@pytest.mark.parametrize("suffix,blob", [
    (".bz2", bz2.compress(_RAW)),
    (".bz2", bz2.compress(_RAW[:300]) + bz2.compress(_RAW[300:])),  # two streams, as pbzip2 writes
    (".xz", lzma.compress(_RAW)),
    (".lzma", lzma.compress(_RAW, format=lzma.FORMAT_ALONE)),
    (".xz", lzma.compress(_RAW[:100]) + lzma.compress(_RAW[100:])),
], ids=["bz2", "bz2-multistream", "xz", "lzma-alone", "xz-multistream"])
def test_beams_other_compressions_by_extension(tmp_path, suffix, blob):
  path = tmp_path / f"data.tfrecord{suffix}"
  path.write_bytes(blob)
  assert [r.payload for r in sources.read_file(str(path), "auto")] == _PAYLOADS


@pytest.mark.parametrize("suffix,compress", [(".bz2", bz2.compress), (".xz", lzma.compress)])
def test_cut_bz2_and_xz_files_always_report_a_problem(tmp_path, suffix, compress):
  blob = compress(_RAW)
  for cut in range(1, len(blob), max(1, len(blob) // 40)):
    path = tmp_path / f"cut{cut}.tfrecord{suffix}"
    path.write_bytes(blob[:cut])
    records = list(sources.read_file(str(path), "auto"))
    assert records and records[-1].payload is None and records[-1].rest_lost, cut
    assert [r.payload for r in records[:-1]] == _PAYLOADS[:len(records) - 1]


def test_zstd_is_refused_by_name(tmp_path):
  path = tmp_path / "data.tfrecord.zst"
  path.write_bytes(b"\x28\xb5\x2f\xfd")
  with pytest.raises(JobError, match="data.tfrecord.zst: zstd input is not supported"):
    list(sources.read_file(str(path), "auto"))

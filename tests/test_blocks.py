"""Records between stages in blocks (``beam_job.blocks``): what goes in comes out, compressed, or fails loudly."""

import random

import pytest
from apache_beam.utils.windowed_value import WindowedValue

from beam_job import blocks, examples
from tests.helpers import make_example


def _payloads(count):
  return [examples.prepare(make_example({"right_name": [b"item-%06d" % k], "right_id": [k],
                                         "right_embedding": [random.Random(k).random() for _ in range(8)]}),
                           ).payload for k in range(count)]


def test_records_come_back_in_the_order_they_were_added_across_blocks():
  payloads = _payloads(3000) + [b""]  # and an empty payload
  packer, packed = blocks.Packer(block_bytes=10_000), []
  numbers = list(range(3001))
  random.Random(3).shuffle(numbers)
  for number in numbers:
    packed.append(packer.add(number, payloads[number]))
  packed = [block for block in packed + [packer.flush()] if block]
  assert len(packed) > 10 and packer.flush() is None
  assert [record for block in packed for record in blocks.unpack(block)] == [(n, payloads[n]) for n in numbers]
  assert all(len(block[2]) < sum(map(len, payloads)) for block in packed)


def test_a_block_completes_at_its_size_and_prepared_payloads_compress():
  """The benchmark's records (four features, names repeated in every record) take well under half the space."""
  payloads = _payloads(40_000)
  packer = blocks.Packer()
  full = next(block for block in (packer.add(k, p) for k, p in enumerate(payloads)) if block)
  raw = sum(len(payload) for _, payload in blocks.unpack(full))
  assert blocks.BLOCK_BYTES <= raw < blocks.BLOCK_BYTES + max(map(len, payloads))
  assert len(full[2]) < raw * 0.5


def test_a_damaged_block_fails_instead_of_shifting_payloads():
  packer = blocks.Packer()
  packer.add(0, b"abc")
  packer.add(1, b"de")
  numbers, lengths, packed = packer.flush()
  with pytest.raises(ValueError, match="damaged between stages"):
    list(blocks.unpack((numbers, lengths[:8], packed)))
  with pytest.raises(ValueError, match="damaged between stages"):
    list(blocks.unpack((numbers[:8], lengths, packed)))


def test_the_parsing_step_closes_a_sources_block_when_the_next_source_begins():
  """Records of a source arrive together as it is read: a bundle of many files holds one open block, not one per
  file, and every record comes out once, in a block of its own source."""
  from beam_job.stages import prepare  # pylint: disable=import-outside-toplevel
  parse = prepare._PrepareFn(((0, "", None),), on_corrupt="fail", count=False)
  parse.start_bundle()
  emitted = []  # (records processed so far, source of the block)
  records = [(f"file{f}", k, make_example({"f": [f], "k": [k]})) for f in range(3) for k in range(4)]
  for done, record in enumerate(records, 1):
    emitted += [(done, block) for block in parse.process(record)]
  ends = [element for element in parse.finish_bundle()]
  emitted += [(len(records), end.value) for end in ends if isinstance(end, WindowedValue)]  # the tallies are tagged
  assert [(done, block[0]) for done, block in emitted] == [(5, "file0"), (9, "file1"), (12, "file2")]
  assert [(source, k) for _, (source, *block) in emitted for k, _ in blocks.unpack(tuple(block))] == [
      (source, k) for source, k, _ in records]

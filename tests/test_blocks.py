"""Records between stages in blocks (``beam_job.blocks``): what goes in comes out, compressed, or fails loudly."""

import random

import pytest

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

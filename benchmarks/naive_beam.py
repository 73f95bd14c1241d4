"""What many users write first: ReadFromTFRecord, the right side as an AsList side input, a per-pair proto
merge in a FlatMap, WriteToTFRecord, DirectRunner defaults. ``python naive_beam.py LEFT RIGHT OUTPUT``."""

import sys

import apache_beam as beam
from tensorflow.core.example import example_pb2


def merge(left_bytes, rights):
  left = example_pb2.Example.FromString(left_bytes)
  for right_bytes in rights:
    right = example_pb2.Example.FromString(right_bytes)
    merged = example_pb2.Example()
    for name, feature in left.features.feature.items():
      merged.features.feature["left_" + name].CopyFrom(feature)
    for name, feature in right.features.feature.items():
      merged.features.feature["right_" + name].CopyFrom(feature)
    yield merged.SerializeToString()


def main(left, right, output):
  with beam.Pipeline() as p:
    rights = p | "ReadRight" >> beam.io.ReadFromTFRecord(right)
    (p | "ReadLeft" >> beam.io.ReadFromTFRecord(left)
     | "Pairs" >> beam.FlatMap(merge, beam.pvalue.AsList(rights))
     | "Write" >> beam.io.WriteToTFRecord(output))


if __name__ == "__main__":
  main(*sys.argv[1:4])

"""The seed article's algorithm: nested tf_record_iterator loops, per-pair parse, prefix merge, re-serialize,
one TFRecordWriter. ``python nested_loop.py LEFT RIGHT OUTPUT``."""

import sys

import tensorflow as tf


def main(left_path, right_path, output):
  with tf.io.TFRecordWriter(output) as writer:
    for left_bytes in tf.compat.v1.python_io.tf_record_iterator(left_path):
      for right_bytes in tf.compat.v1.python_io.tf_record_iterator(right_path):
        left = tf.train.Example.FromString(left_bytes)
        right = tf.train.Example.FromString(right_bytes)
        merged = tf.train.Example()
        for name, feature in left.features.feature.items():
          merged.features.feature["left_" + name].CopyFrom(feature)
        for name, feature in right.features.feature.items():
          merged.features.feature["right_" + name].CopyFrom(feature)
        writer.write(merged.SerializeToString())


if __name__ == "__main__":
  main(*sys.argv[1:4])

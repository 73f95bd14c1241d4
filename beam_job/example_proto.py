"""``tf.train.Example`` message classes without importing TensorFlow.

Importing ``tensorflow.core.example.example_pb2`` imports all of TensorFlow (about 4 s and 500 MB per worker
process). The job only needs the three small messages of ``example.proto``/``feature.proto``, so it builds
them here from the same definition, in a private descriptor pool that cannot clash with TensorFlow's. The
wire format is the proto definition, so bytes are interchangeable; ``tests/test_examples.py`` checks it
against TensorFlow's classes.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def _build():
  fdp = descriptor_pb2.FileDescriptorProto(name="beam_job/example.proto", package="tensorflow", syntax="proto3")
  label_rep = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
  label_opt = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
  t = descriptor_pb2.FieldDescriptorProto

  def message(name, *fields):
    msg = fdp.message_type.add(name=name)
    for number, (fname, ftype, label, type_name, packed) in enumerate(fields, start=1):
      field = msg.field.add(name=fname, number=number, type=ftype, label=label)
      if type_name:
        field.type_name = type_name
      if packed:
        field.options.packed = True
    return msg

  message("BytesList", ("value", t.TYPE_BYTES, label_rep, None, False))
  message("FloatList", ("value", t.TYPE_FLOAT, label_rep, None, True))
  message("Int64List", ("value", t.TYPE_INT64, label_rep, None, True))
  feature = message(
      "Feature",
      ("bytes_list", t.TYPE_MESSAGE, label_opt, ".tensorflow.BytesList", False),
      ("float_list", t.TYPE_MESSAGE, label_opt, ".tensorflow.FloatList", False),
      ("int64_list", t.TYPE_MESSAGE, label_opt, ".tensorflow.Int64List", False))
  feature.oneof_decl.add(name="kind")
  for field in feature.field:
    field.oneof_index = 0
  features = message("Features", ("feature", t.TYPE_MESSAGE, label_rep, ".tensorflow.Features.FeatureEntry",
                                  False))
  entry = features.nested_type.add(name="FeatureEntry")
  entry.options.map_entry = True
  entry.field.add(name="key", number=1, type=t.TYPE_STRING, label=label_opt)
  entry.field.add(name="value", number=2, type=t.TYPE_MESSAGE, label=label_opt, type_name=".tensorflow.Feature")
  message("Example", ("features", t.TYPE_MESSAGE, label_opt, ".tensorflow.Features", False))

  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
          for name in ("Example", "Features", "Feature", "BytesList", "FloatList", "Int64List")}


_CLASSES = _build()
Example = _CLASSES["Example"]
Features = _CLASSES["Features"]
Feature = _CLASSES["Feature"]

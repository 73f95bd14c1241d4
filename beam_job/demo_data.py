"""Writes a small sample pair of datasets (users and items) for trying the job: ``python -m beam_job.demo_data DIR``."""

import os
import random
import sys

from beam_job import tfrecord
from beam_job.example_proto import Example


def make_example(rng: random.Random, ordinal: int, kind: str) -> bytes:
  example = Example()
  feature = example.features.feature
  feature[f"{kind}_id"].int64_list.value.append(ordinal)
  feature[f"{kind}_embedding"].float_list.value.extend(round(rng.uniform(-1, 1), 4) for _ in range(4))
  feature[f"{kind}_tag"].bytes_list.value.append(rng.choice([b"red", b"green", b"blue"]))
  return example.SerializeToString(deterministic=True)


def write(path: str, payloads) -> None:
  with open(path, "wb") as f:
    for payload in payloads:
      f.write(tfrecord.frame(payload))


def main(folder: str, left: int = 20, right: int = 15, seed: int = 0) -> None:
  rng = random.Random(seed)
  os.makedirs(folder, exist_ok=True)
  write(os.path.join(folder, "users.tfrecord"), (make_example(rng, i, "user") for i in range(left)))
  write(os.path.join(folder, "items.tfrecord"), (make_example(rng, i, "item") for i in range(right)))
  print(f"wrote {left} users and {right} items under {folder}/")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "sample")

"""What the plan promises at sizes no test machine can run: cells, memory and shuffle, from SideStats alone.

    .venv/bin/python benchmarks/scale_plan.py [--json plans.json]

Plans each scenario with ``planning.make_plan`` and the CLI's defaults (``--strategy auto``,
``--target_shard_mb 256``, ``--collision error``), reading no data: a side is only its record count and
payload bytes (10 KB a record unless the scenario says otherwise). Prints one Markdown row per plan, so README
can include the table as printed; a refused plan prints its one-line error instead. Runs in well under a
second: it never lists the cells, only counts them (O(1) for the products planned here).
"""

import argparse
import json
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from beam_job import planning  # pylint: disable=wrong-import-position
from beam_job.errors import JobError  # pylint: disable=wrong-import-position

RECORD_BYTES = 10_000
TARGET_SHARD_BYTES = 256_000_000  # --target_shard_mb 256
# (label, left records, right records, options for make_plan, bytes per record)
SCENARIOS = (
    ("1e5 x 1e5", 10 ** 5, 10 ** 5, {}, RECORD_BYTES),
    ("1e7 x 100", 10 ** 7, 100, {}, RECORD_BYTES),
    ("100 x 1e7", 100, 10 ** 7, {}, RECORD_BYTES),
    ("1e4 x 1e6", 10 ** 4, 10 ** 6, {}, RECORD_BYTES),
    ("1e5 x 1e5, rate 1e-5", 10 ** 5, 10 ** 5, {"sample_rate": 1e-5}, RECORD_BYTES),
    ("1e7 x 1e7, rate 1e-7", 10 ** 7, 10 ** 7, {"sample_rate": 1e-7}, RECORD_BYTES),
    ("20 x 5e5 of 100 B, broadcast", 20, 500_000, {"strategy": "broadcast"}, 100),
    ("100 x 1e7, broadcast", 100, 10 ** 7, {"strategy": "broadcast"}, RECORD_BYTES),
)
COLUMNS = ("job", "strategy", "grid (rows x cols, chunks)", "cells", "pairs", "records / cell", "bytes / cell",
           "worker memory", "shuffle", "side input", "plan pickle")


def side(count: int, record_bytes: int) -> planning.SideStats:
  return planning.SideStats(good={"data": count}, bad={}, payload_bytes=record_bytes * count, keys=frozenset())


def plan_row(label: str, left: int, right: int, options: dict, record_bytes: int) -> dict:
  """The figures of one plan (or its refusal), as plain numbers."""
  settings = {"strategy": "auto", "self_join": None, "collision": "error", "prefixes": ("", ""),
              "max_pairs": planning.MAX_PAIRS, "target_shard_bytes": TARGET_SHARD_BYTES, **options}
  row = {"job": label, "left": left, "right": right, "record_bytes": record_bytes, **options}
  try:
    plan = planning.make_plan(side(left, record_bytes), side(right, record_bytes), **settings)
  except JobError as e:
    return {**row, "error": str(e)}
  strategy = plan.strategy + (", by kept pairs" if plan.sparse else "")  # see sparse_cells
  return {**row, "strategy": strategy, "rows": plan.rows, "cols": plan.cols, "row_chunk": plan.row_chunk,
          "col_chunk": plan.col_chunk, "cells": len(plan.cells), "pairs": plan.pairs,
          "records_per_cell": min(plan.row_chunk, plan.left_count) + min(plan.col_chunk, plan.right_count),
          "cell_input_bytes": plan.cell_input_bytes,
          "worker_memory_bytes": plan.cell_memory_bytes + plan.broadcast_memory_bytes,
          "shuffle_bytes": plan.shuffle_bytes,
          "side_input_bytes": plan.side_bytes[1] if plan.strategy == "broadcast" else 0,
          "pickle_bytes": len(pickle.dumps(plan))}


def human(value: float) -> str:
  """Bytes in decimal units, three significant digits (2.26 MB, 1.77 TB)."""
  for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
    if value < 1000 or unit == "PB":
      return f"{value:.0f} {unit}" if unit == "B" else f"{value:.3g} {unit}"
    value /= 1000
  raise AssertionError("unreachable")


def markdown(rows) -> str:
  lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  for row in rows:
    if "error" in row:
      cells = [row["job"], f"refused: `error: {row['error']}`"] + [""] * (len(COLUMNS) - 2)
    else:
      cells = [row["job"], row["strategy"],
               f"{row['rows']:,} x {row['cols']:,} ({row['row_chunk']:,} x {row['col_chunk']:,})",
               f"{row['cells']:,}", f"{row['pairs']:,}", f"{row['records_per_cell']:,}",
               human(row["cell_input_bytes"]), human(row["worker_memory_bytes"]), human(row["shuffle_bytes"]),
               human(row["side_input_bytes"]), f"{row['pickle_bytes']:,} B"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--json", help="Also write the exact figures of every plan to this file.")
  args = parser.parse_args()
  rows = [plan_row(*scenario) for scenario in SCENARIOS]
  print(markdown(rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()

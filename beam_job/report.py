"""``python -m beam_job.report PREFIX``: what a finished run wrote, in a few lines for a person.

The job prints its whole summary as JSON (the contract scripts and schedulers read); this reads the same
summary back from ``PREFIX-summary.json`` and says what a person wants first: how many pairs, how big, how
many shards, and where the shards, the schema, the dead letters and the summary are.
"""

import sys
from typing import List, Optional

from beam_job import outputs, publish


def to_text(summary: dict) -> str:
  shards = summary["shards"]
  lines = [
      f"pairs:    {summary['pairs']:,} ({summary['left_records']:,} left x {summary['right_records']:,} right records"
      f"{', ' + format(summary['corrupt_records'], ',') + ' corrupt left out' if summary['corrupt_records'] else ''})",
      f"bytes:    {summary['bytes']:,} in {len(shards):,} shard(s)",
      f"shards:   {shards[0]}" + (f" ... {shards[-1]}" if len(shards) > 1 else ""),
      f"schema:   {summary['schema']}",
  ]
  if summary.get("dead_letter"):
    lines.append(f"corrupt:  {summary['dead_letter']}")
  lines.append(f"summary:  {outputs.summary_path(summary['output'])}")
  return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    print("usage: python -m beam_job.report PREFIX", file=sys.stderr)
    return 2
  summary = publish.read_summary(outputs.normalize(argv[0]))
  if summary is None:
    print(f"error: no finished run under {argv[0]} ({outputs.summary_path(argv[0])} is missing)", file=sys.stderr)
    return 1
  try:
    print(to_text(summary))
  except (KeyError, TypeError, IndexError) as e:
    print(f"error: {outputs.summary_path(argv[0])} is not a summary of this job (field {e} missing or malformed)",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())

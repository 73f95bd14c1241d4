"""A sampled grid routed by its kept pairs (``Plan.sparse``): each record goes only to the cells where it keeps a
pair, not to every cell of its row or column. No Beam here.

At rate p a cell of r x c records keeps about r * c * p pairs. When that is small, most cells of a row keep none
of a record's pairs, and sending the record there anyway moves each side once per cell of its row or column:
156 TB at 1e7 x 1e7 records of 10 KB and p = 1e-7, for about 200 GB of pairs. A left record's kept pairs follow
from its ordinal alone (``sampling.kept_columns``), so it goes to the cells that hold them and asks, for each
kept right ordinal, that the right record be sent there; a right record goes where it is asked for (a join on
right ordinals). Each cell works out again which of its rows and columns keep pairs and checks that it
received exactly those records, so a record lost or repeated on the way fails the job wherever that would change
the output (a repeated request, or a right record nobody asks for, changes nothing).
"""

from typing import Iterator, List, Tuple

from beam_job import planning, sampling


def left_cells(plan: planning.Plan, seed: int, ordinal: int) -> Iterator[Tuple[int, List[int]]]:
  """The cells where left record ``ordinal`` keeps pairs, in shard order: ``(shard, kept right ordinals)``."""
  step = planning.MIN_STEP.get(plan.self_join)
  row = plan.chunk(0, ordinal)
  base = plan.row_start(row) - plan.first_col(row)  # shard of the row's cell in column c: base + c
  col, kept = -1, []
  for right in sampling.kept_columns(seed, plan.sample_rate, ordinal, 0 if step is None else ordinal + step,
                                     plan.right_count):
    if right // plan.col_chunk != col:
      if kept:
        yield base + col, kept
      col, kept = right // plan.col_chunk, []
    kept.append(right)
  if kept:
    yield base + col, kept


def cell_rows(plan: planning.Plan, seed: int, row: int, col: int) -> List[Tuple[int, List[int]]]:
  """Every left ordinal of cell (row, col) that keeps pairs in it, with its kept right ordinals there."""
  step = planning.MIN_STEP.get(plan.self_join)
  rows, cols = plan.members(row, col)
  kept_rows = []
  for left in rows:
    begin = cols.start if step is None else max(cols.start, left + step)
    kept = list(sampling.kept_columns(seed, plan.sample_rate, left, begin, cols.stop))
    if kept:
      kept_rows.append((left, kept))
  return kept_rows


def cell_columns(kept_rows: List[Tuple[int, List[int]]]) -> List[int]:
  """The right ordinals a cell's kept rows pair with, in order (the right records it must receive)."""
  return sorted({right for _, kept in kept_rows for right in kept})

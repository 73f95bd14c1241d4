"""``--dry_run``: the plan in words, for a person to read before spending money."""

from beam_job import outputs, planning


def _grouped(plan: planning.Plan, options) -> dict:
  """What a grouped plan adds: the groups (with --group_by) and the draw per left record."""
  grouped = plan.grouped
  budget = min(int(options.target_shard_mb * 1_000_000), planning.CELL_INPUT_MAX_BYTES)
  found = {"pairs_per_left": options.pairs_per_left, "cell_budget_bytes": budget,
           "group_by": list(options.group_names) if options.group_names else None,
           "missing_group": options.missing_group}
  if options.group_names is not None:
    found["groups"] = grouped.summary()
  return found


def _left_out_problems(left_out, options) -> list:
  """The records a dry run read leniently that the real run would fail on (``--on_corrupt fail``,
  ``--missing_group fail``), as problems naming the first and the flag that leaves them out."""
  problems = []
  for missing, flag, policy, what in ((False, "--on_corrupt", options.on_corrupt, "corrupt record(s)"),
                                      (True, "--missing_group", options.missing_group,
                                       "record(s) without a group key")):
    found = sorted((source, index, problem) for source, index, problem, is_missing in left_out
                   if is_missing == missing)
    if found and policy == "fail":
      source, index, problem = found[0]
      problems.append(f"{len(found):,} {what}, first {source} record {index}: {problem}; {flag} skip leaves "
                      "them out")
  return problems


def plan_description(plan: planning.Plan, options, left_out=()) -> dict:
  """What the job would do: sizes, strategy, grid, shard names, and what happens to colliding features.
  ``left_out``: (source, index, problem, missing_group) of the records the dry run's lenient read left out."""
  if not plan.collisions:
    collisions = "none: the merged Example is the union of both sides' features"
  elif options.collision == "error":  # only in a dry run: the plan lists the refusal among its problems
    collisions = f"{len(plan.collisions)} name(s) on both sides, which --collision error refuses: " + ", ".join(
        plan.collisions)
  elif options.collision in ("left", "right"):
    collisions = (f"{len(plan.collisions)} name(s) on both sides; the {options.collision} side's value wins: "
                  + ", ".join(plan.collisions))
  else:  # --collision prefix
    collisions = (f"{len(plan.collisions)} name(s) on both sides before renaming, renamed apart by the prefixes: "
                  + ", ".join(plan.collisions))
  renaming = (f"every left feature is renamed {options.left_prefix}NAME and every right one "
              f"{options.right_prefix}NAME" if options.collision == "prefix" else "features keep their names")
  grouped = {} if plan.grouped is None else _grouped(plan, options)
  return {
      **grouped,
      "left_records": plan.left_count,
      "right_records": plan.right_count,
      "pairs": plan.pairs,
      "sample_rate": plan.sample_rate,
      "estimated_bytes": plan.estimated_bytes,
      "shards": plan.shard_count,
      "first_shard": outputs.shard_name(options.output, 0, plan.shard_count, options.output_compression),
      "strategy": plan.strategy,
      "shuffle_bytes": plan.shuffle_bytes,
      "grid": plan.grid,
      "collision_policy": options.collision,
      "collisions": collisions,
      "renaming": renaming,
      "cell_records": ([min(plan.row_chunk, plan.left_count), min(plan.col_chunk, plan.right_count)]
                       if plan.grouped is None else [min(planning.CELL_RECORDS, plan.left_count),
                                                     min(planning.CELL_RECORDS, plan.right_count)]),
      "cell_input_bytes": plan.cell_input_bytes,
      "worker_memory_bytes": (plan.cell_memory_bytes + plan.broadcast_memory_bytes if plan.grouped is None else
                              2 * grouped["cell_budget_bytes"] + 2 * planning.WRITE_BLOCK_BYTES),
      "sampled_split": plan.sample_rate < 1,
      "problems": _left_out_problems(left_out, options) + list(plan.problems),
      # (the records left out for want of a group key are among the plan's ``bad`` too: counted apart)
      "corrupt_records": sum(len(v) for side in (plan.bad[:1] if plan.self_join else plan.bad)
                             for v in side.values()) - sum(1 for *_, missing in left_out if missing),
  }


def _grouped_text(description: dict) -> list:
  lines = []
  if description.get("group_by"):
    groups = description["groups"]
    names = description["group_by"]
    named = names[0] if names[0] == names[1] else f"{names[0]} (left) = {names[1]} (right)"
    lines.append(f"groups:         {groups['groups']:,} key(s) of {named}, {groups['groups_with_pairs']:,} with pairs; "
                 f"{groups['unpaired_records']['left']:,} left and {groups['unpaired_records']['right']:,} right "
                 f"record(s) in groups without pairs; records without a key: --missing_group "
                 f"{description['missing_group']}")
    for group in groups["largest_groups"]:
      lines.append(f"  largest:      {group['key']!r}: {group['left']:,} x {group['right']:,} records, "
                   f"{group['pairs']:,} pairs in {group['cells']:,} cell(s)")
  if description.get("pairs_per_left"):
    lines.append(f"per left:       exactly min({description['pairs_per_left']:,}, eligible) right records, drawn "
                 "by --seed")
  return lines


def to_text(description: dict) -> str:
  if "groups_with_pairs" in description["grid"]:
    return _to_text_grouped(description)
  grid = description["grid"]
  sampled = (f", sampled at {description['sample_rate']} (expected count)" if description["sample_rate"] < 1
             else "")
  return "\n".join([
      f"left records:   {description['left_records']:,}",
      f"right records:  {description['right_records']:,}",
      f"pairs:          {description['pairs']:,}{sampled}",
      f"output:         ~{description['estimated_bytes'] / 1e6:,.1f} MB in {description['shards']:,} shard(s), "
      f"e.g. {description['first_shard']}",
      f"strategy:       {description['strategy']}"
      f"{', each record routed to the cells of its kept pairs' if grid.get('routed_by_kept_pairs') else ''} "
      f"(~{description['shuffle_bytes'] / 1e6:,.1f} MB of records moved between stages)",
      f"cell grid:      {grid['rows']} x {grid['cols']} chunks of {grid['row_chunk']:,} x {grid['col_chunk']:,} "
      f"records, {grid['cells']} non-empty cell(s)",
      f"per cell:       at most {description['cell_records'][0]:,} + {description['cell_records'][1]:,} records, "
      f"~{description['cell_input_bytes'] / 1e6:,.1f} MB of them; ~{description['worker_memory_bytes'] / 1e6:,.0f} MB "
      "estimated per worker process for the job's data" + (
          " (sampled: a cell holds at most "  # planning.SAMPLED_SPLITS; broadcast splits the left side only
          + ("a sixteenth of the left side" if description["strategy"] == "broadcast" else "a quarter of each side")
          + ", so that the work spreads over workers)" if description["sampled_split"] else ""),
      f"collisions:     {description['collisions']} (--collision {description['collision_policy']})",
      f"features:       {description['renaming']}",
      f"corrupt:        {description['corrupt_records']} record(s) left out",
  ] + [f"problem:        {problem}" for problem in description["problems"]] + (
      ["the job would fail: each problem above names the flag that fixes it"] if description["problems"] else []))


def _to_text_grouped(description: dict) -> str:
  grid = description["grid"]
  return "\n".join([
      f"left records:   {description['left_records']:,}",
      f"right records:  {description['right_records']:,}",
      f"pairs:          {description['pairs']:,}" + (
          f", sampled at {description['sample_rate']} (expected count)" if description["sample_rate"] < 1 else ""),
      *_grouped_text(description),
      f"output:         ~{description['estimated_bytes'] / 1e6:,.1f} MB in {description['shards']:,} shard(s), "
      f"e.g. {description['first_shard']}",
      f"strategy:       grouped (~{description['shuffle_bytes'] / 1e6:,.1f} MB of records moved between stages)",
      f"cells:          {grid['cells']:,} non-empty cell(s), {grid['cut_groups']:,} group(s) cut into several; "
      f"a cell holds at most ~{description['cell_budget_bytes'] / 1e6:,.1f} MB of records",
      f"collisions:     {description['collisions']} (--collision {description['collision_policy']})",
      f"features:       {description['renaming']}",
      f"corrupt:        {description['corrupt_records']} record(s) left out",
  ] + [f"problem:        {problem}" for problem in description["problems"]] + (
      ["the job would fail: each problem above names the flag that fixes it"] if description["problems"] else []))

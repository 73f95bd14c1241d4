"""``sampling.kept_columns``: independent of how the right ordinals are cut, seeded, and at the right rate;
``sampling.pick``: exactly K, uniform, the same over any cut."""

import collections
import math

from hypothesis import given, settings, strategies as st

from beam_job import sampling


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2 ** 31), st.floats(0.0005, 0.05), st.integers(0, 10 ** 6),
       st.lists(st.integers(0, 140_000), min_size=1, max_size=4))
def test_any_cut_of_the_columns_keeps_the_same_pairs(seed, rate, row, cuts):
  end = 140_001  # three blocks of 65,536
  whole = list(sampling.kept_columns(seed, rate, row, 0, end))
  bounds = [0] + sorted(cuts) + [end]
  pieces = [c for a, b in zip(bounds, bounds[1:]) for c in sampling.kept_columns(seed, rate, row, a, b)]
  assert pieces == whole
  assert whole == sorted(set(whole)) and all(0 <= c < end for c in whole)


def test_rate_and_seed():
  kept = sum(1 for row in range(2000) for _ in sampling.kept_columns(7, 0.01, row, 0, 5000))
  expected = 2000 * 5000 * 0.01
  assert abs(kept - expected) < 5 * (expected * 0.99) ** 0.5  # five standard deviations of a binomial
  assert list(sampling.kept_columns(7, 0.3, 5, 0, 100)) != list(sampling.kept_columns(8, 0.3, 5, 0, 100))
  assert list(sampling.kept_columns(7, 1.0, 5, 3, 9)) == [3, 4, 5, 6, 7, 8]


def test_rows_are_independent():
  first = [list(sampling.kept_columns(1, 0.05, row, 0, 1000)) for row in range(50)]
  assert len({tuple(columns) for columns in first}) == 50


# --- --pairs_per_left: exactly K per left record -------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.integers(sampling.MIN_SEED, sampling.MAX_SEED), st.integers(0, 2 ** 62), st.integers(0, 40),
       st.integers(0, 10 ** 12), st.lists(st.integers(0, 10 ** 12), max_size=4))
def test_pick_is_exactly_k_distinct_and_the_same_over_any_cut(seed, row, k, eligible, cuts):
  chosen = sampling.pick(seed, row, k, eligible)
  assert len(chosen) == min(k, eligible)
  assert chosen == sorted(set(chosen)) and all(0 <= p < eligible for p in chosen)
  assert sampling.pick(seed, row, k, eligible) == chosen  # a function of its arguments only
  bounds = [0] + sorted(c for c in cuts if c < eligible) + [eligible]
  assert [p for a, b in zip(bounds, bounds[1:]) for p in sampling.pick_in(seed, row, k, eligible, a, b)] == chosen


def test_pick_small_cases():
  assert sampling.pick(1, 2, 5, 3) == [0, 1, 2]  # fewer candidates than K: all of them
  assert sampling.pick(1, 2, 0, 3) == [] and sampling.pick(1, 2, 4, 0) == []
  assert sampling.pick_in(1, 2, 5, 3, 1, 10) == [1, 2] and sampling.pick_in(1, 2, 5, 3, -4, 1) == [0]
  assert sampling.pick_in(1, 2, 2, 50, 30, 20) == []
  assert len({tuple(sampling.pick(1, row, 3, 1000)) for row in range(100)}) == 100
  assert len({tuple(sampling.pick(seed, 5, 3, 1000)) for seed in range(100)}) == 100


def chi_square_p(observed, expected):
  """The chi-square statistic's p-value for an even number of degrees of freedom (exact: Q(x; 2m) =
  e^(-x/2) sum_{i<m} (x/2)^i / i!), so the test needs no scipy."""
  statistic = sum((o - expected) ** 2 / expected for o in observed)
  m = (len(observed) - 1) // 2
  assert 2 * m == len(observed) - 1, "use an even number of degrees of freedom"
  term, total = 1.0, 0.0
  for i in range(m):
    total += term
    term *= statistic / 2 / (i + 1)
  return math.exp(-statistic / 2) * total


def position_counts(draws, eligible):
  counts = [0] * eligible
  for chosen in draws:
    for p in chosen:
      counts[p] += 1
  return counts


def test_pick_is_uniform_over_positions_and_sets():
  # Fixed seeds and rows: the outcome is the same on every run, so the test cannot flake; p-values below 1e-4
  # would fail it. Positions: 4,200 draws of 5 of 21, 1,000 expected per position (20 degrees of freedom).
  draws = [sampling.pick(3, row, 5, 21) for row in range(4200)]
  assert chi_square_p(position_counts(draws, 21), 1000) > 1e-4
  # Whole sets, over seeds: 3,000 draws of 2 of 6, 200 expected per each of the 15 pairs (14 degrees).
  sets = collections.Counter(tuple(sampling.pick(seed, 7, 2, 6)) for seed in range(3000))
  assert len(sets) == 15 and chi_square_p(list(sets.values()), 200) > 1e-4
  # Positions over seeds for a row with many candidates (blocks of 50 of 1,000 positions, 21 blocks).
  draws = [sampling.pick(seed, 123, 10, 1050) for seed in range(2100)]
  blocks = [sum(position_counts(draws, 1050)[b * 50:(b + 1) * 50]) for b in range(21)]
  assert chi_square_p(blocks, 1000) > 1e-4


def test_chi_square_check_rejects_a_biased_draw():
  biased = [[min(p, 20) for p in sampling.pick(3, row, 5, 23)] for row in range(4200)]  # 20 takes 21 and 22
  assert chi_square_p(position_counts(biased, 21), 1000) < 1e-10

"""``sampling.kept_columns``: independent of how the right ordinals are cut, seeded, and at the right rate."""

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

"""BucketHistogram (commonlib/stats.py): a batch observed at once counts as one by one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from commonlib.stats import LATENCY_BUCKETS_S, BucketHistogram

# Values on and around the bounds, and past the last one (+Inf).
_VALUES = st.one_of(
    st.sampled_from([0.0, *LATENCY_BUCKETS_S, 11.0]),
    st.floats(min_value=0.0, max_value=20.0, allow_nan=False),
)


@given(st.lists(_VALUES, max_size=80))
def test_observe_many_counts_as_observe_does_one_value_at_a_time(values: list[float]) -> None:
    one_by_one = BucketHistogram(LATENCY_BUCKETS_S)
    for value in values:
        one_by_one.observe(value)
    at_once = BucketHistogram(LATENCY_BUCKETS_S)
    at_once.observe_many(values)
    assert at_once.counts == one_by_one.counts
    assert at_once.count == len(values)
    assert abs(at_once.sum - one_by_one.sum) <= 1e-9 * max(1.0, one_by_one.sum)

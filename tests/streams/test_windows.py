import pytest

from streams.errors import DuplicateCustomIdError
from streams.windows import Windower, WindowKey, WindowPolicy

KEY = WindowKey(0, "/v1/chat/completions", "m")


def windower(**kw: float) -> Windower[str]:
    return Windower(WindowPolicy(**{"max_requests": 3, "max_bytes": 100, "max_wait": 5.0, **kw}))  # type: ignore[arg-type]


def test_closes_at_max_requests() -> None:
    w = windower()
    assert w.add(KEY, "a", "0", 10, 0) == []
    assert w.add(KEY, "b", "1", 10, 0) == []
    sealed = w.add(KEY, "c", "2", 10, 0)
    assert [s.items for s in sealed] == [["a", "b", "c"]]
    assert w.open_requests == 0


def test_closes_before_exceeding_max_bytes() -> None:
    w = windower(max_requests=100)
    w.add(KEY, "a", "0", 60, 0)
    sealed = w.add(KEY, "b", "1", 60, 0)
    assert [s.items for s in sealed] == [["a"]]
    assert w.open_requests == 1


def test_closes_at_max_wait_after_first_event() -> None:
    w = windower(max_requests=100)
    w.add(KEY, "a", "0", 1, now=10.0)
    w.add(KEY, "b", "1", 1, now=14.0)
    assert w.due(14.9) == []
    assert w.next_deadline() == 15.0
    assert [s.items for s in w.due(15.0)] == [["a", "b"]]
    assert w.next_deadline() is None


def test_one_window_per_partition_endpoint_and_model() -> None:
    w = windower()
    other_model = WindowKey(0, KEY.endpoint, "other")
    other_partition = WindowKey(1, KEY.endpoint, "m")
    for key in (KEY, other_model, other_partition):
        w.add(key, "x", "0", 1, 0)
    assert w.open_requests == 3
    assert [s.key for s in w.drop_partition(1)] == [other_partition]


def test_provider_limits_cap_the_configured_bounds() -> None:
    policy = WindowPolicy.capped(
        max_requests=100_000, max_bytes=10**9, max_wait=1, provider_max_requests=50_000, provider_max_bytes=200_000_000
    )
    assert (policy.max_requests, policy.max_bytes) == (50_000, 200_000_000)


def test_duplicate_custom_id_is_refused_before_upload() -> None:
    w = windower()
    w.add(KEY, "a", "0-1", 1, 0)
    with pytest.raises(DuplicateCustomIdError):
        w.add(KEY, "b", "0-1", 1, 0)


def test_a_line_larger_than_max_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds max_bytes"):
        windower().add(KEY, "a", "0", 101, 0)

import pytest

from optlab.batchsize import BatchSizeError, search_batch_size


def fits_below(limit):
    def fits(n):
        return float(n) if n <= limit else None
    return fits


def test_search_finds_the_largest_fit_and_keeps_headroom():
    s = search_batch_size(fits_below(700), start=16, cap=4096, headroom=0.9)
    assert 692 <= s.largest_fit <= 700
    assert s.first_failure is not None and s.first_failure > s.largest_fit
    assert s.chosen <= 0.9 * s.largest_fit and s.chosen % 8 == 0
    assert any(not t["fits"] for t in s.trials)


def test_cap_is_honoured_without_headroom_when_nothing_failed():
    s = search_batch_size(fits_below(10**9), start=16, cap=1000)
    assert s.chosen == 1000 and s.first_failure is None
    assert max(t["batch_size"] for t in s.trials) == 1000


def test_start_that_does_not_fit_is_halved():
    s = search_batch_size(fits_below(5), start=16, cap=64)
    assert s.largest_fit == 5 and s.chosen >= 1


def test_nothing_fits_is_an_error():
    with pytest.raises(BatchSizeError):
        search_batch_size(fits_below(0), start=4)

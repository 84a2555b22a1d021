"""Properties of Maglev table population (paper section 3.4), C against the Python
reference and both against the paper's promises.  Bounds are stated in each test."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from maglev.errors import ConfigError
from maglev.hashing import build_table, is_prime, next_prime
from maglev.hashing import native as hn
from maglev.hashing import reference as ref

PRIMES = [p for p in range(2, 2200) if is_prime(p)]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names_st = st.lists(
    st.text(min_size=1, max_size=24), min_size=0, max_size=40, unique=True
)


@SETTINGS
@given(names_st, st.data())
def test_c_and_python_build_the_same_table(names, data):
    weights = data.draw(st.lists(st.integers(0, 12), min_size=len(names), max_size=len(names)))
    m = data.draw(st.sampled_from(PRIMES))
    backends = list(zip(names, weights, strict=True))
    c = build_table(backends, m, "c")
    py = build_table(backends, m, "python")
    assert c.entries == py.entries
    assert c.counts == py.counts
    assert sum(c.counts) == (m if any(weights) else 0)


@SETTINGS
@given(st.binary(max_size=80), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_c_and_python_siphash_agree(data, k0, k1):
    assert hn.siphash13(k0, k1, data) == ref.siphash13(k0, k1, data)


@SETTINGS
@given(st.binary(min_size=1, max_size=64), st.sampled_from(PRIMES + [65537, 655373, 16777213]))
def test_c_and_python_offset_skip_agree(name, m):
    off, skip = hn.offset_skip(m, name)
    assert (off, skip) == ref.offset_skip(m, name)
    assert 0 <= off < m and 1 <= skip < m


@SETTINGS
@given(st.integers(1, 300), st.data())
def test_equal_weights_give_floor_or_ceil(n, data):
    m = data.draw(st.sampled_from(PRIMES))
    t = build_table([(f"backend-{i}", 1) for i in range(n)], m)
    assert set(t.counts) <= {m // n, -(-m // n)}
    assert sum(t.counts) == m


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(0, 2**32))
def test_weights_are_honoured(weights, salt):
    """Bounds tested, with W = sum(weights), e_i = M * w_i / W the fair share:
    * always (proved from the credit scheme: after r rounds backend i holds
      floor(r * w_i / W_max) slots, and the table fills during one round):
      e_i - 2 < count_i < e_i + 1 + n * w_i / W;
    * with M the first prime above 100 * W: |count_i - e_i| <= 1% of e_i
      (measured worst case over a few thousand random weight sets: 0.89%)."""
    total, n = sum(weights), len(weights)
    backends = [(f"{salt}-{i}", w) for i, w in enumerate(weights)]
    for m in (next_prime(100 * total + 1), next_prime(7 * total + 1)):
        t = build_table(backends, m)
        for count, w in zip(t.counts, t.weights, strict=True):
            fair = m * w / total
            assert fair - 2 < count < fair + 1 + n * w / total
            if m > 100 * total:
                assert abs(count - fair) <= 0.01 * fair


@SETTINGS
@given(names_st.filter(lambda ns: len(ns) >= 2), st.randoms(use_true_random=False))
def test_input_order_does_not_matter(names, rnd):
    m = 1009
    backends = [(n, 1 + i % 3) for i, n in enumerate(names)]
    shuffled = list(backends)
    rnd.shuffle(shuffled)
    assert build_table(backends, m).entries == build_table(shuffled, m).entries


@SETTINGS
@given(st.integers(1, 20), st.integers(0, 5), st.sampled_from(PRIMES[20:]))
def test_weight_zero_gets_no_slots(n_live, n_zero, m):
    backends = [(f"live{i}", 1) for i in range(n_live)] + [(f"zero{i}", 0) for i in range(n_zero)]
    t = build_table(backends, m)
    zero = {t.names.index(f"zero{i}") for i in range(n_zero)}
    assert not zero & set(t.entries)
    assert all(t.counts[i] == 0 for i in zero)


@pytest.mark.parametrize("engine", ["c", "python"])
@pytest.mark.parametrize("m", [4, 9, 65536, 655371, 1_000_000])
def test_non_prime_sizes_are_rejected(engine, m):
    with pytest.raises(ConfigError, match=rf"table_size: {m} is not prime .*next prime is {next_prime(m)}"):
        build_table([("a", 1)], m, engine)


def _changed(before, after) -> float:
    moved = sum(
        1
        for x, y in zip(before.entries, after.entries, strict=True)
        if before.names[x] != after.names[y]
    )
    return moved / before.size


@settings(max_examples=25, deadline=None)
@given(st.integers(10, 200), st.integers(0, 5000), st.integers(0, 2**32))
def test_removing_k_of_n_moves_about_k_over_n(n, extra, seed):
    """With M >= 100 * N and k <= N/10 removed: every slot of a removed backend moves
    (so the fraction is >= their share, which is k/N within a slot each), and the extra
    that Maglev moves between survivors shrinks as N grows, about sqrt(k)/N: measured
    worst over 4,500 random cases 0.41/sqrt(N) (N=176, k=17: 3.1 points; N=10, k=1:
    9.8 points, where one removal is already 10%).  The bound is 0.6/sqrt(N).  An earlier
    flat 5-point bound was falsified by hypothesis at N=10.  docs/hashing.md lists
    measured fractions at the paper's sizes."""
    rng = random.Random(seed)
    m = next_prime(100 * n + extra)
    names = [f"s{seed}-{i}" for i in range(n)]
    gone = set(rng.sample(names, rng.randint(1, max(1, n // 10))))
    before = build_table([(x, 1) for x in names], m)
    after = build_table([(x, 1) for x in names if x not in gone], m)
    held = sum(c for x, c in zip(before.names, before.counts, strict=True) if x in gone) / m
    frac = _changed(before, after)
    assert frac >= held
    assert frac <= len(gone) / n + 0.6 / math.sqrt(n)


def test_removal_fraction_at_the_paper_size():
    """N = 1000, M = 655373, 10% removed (every tenth backend): 11.06% of the entries
    change, 1.1x the minimum (docs/hashing.md has the full curve)."""
    names = [f"b{i:04d}" for i in range(1000)]
    before = build_table([(x, 1) for x in names], 655373)
    after = build_table([(x, 1) for i, x in enumerate(names) if i % 10], 655373)
    frac = _changed(before, after)
    assert 0.10 <= frac <= 0.12, frac

"""A SYN flood through the real forwarder (issue 16.1/16.2, the test beside
``bench/bench_flood.py``): ``maglev run`` with the generator's flood mode, established
flows kept alive, a backend added live after the flood.  With the protected segment no
established flow loses its entry or moves; with the segment off (protected_percent = 1)
the same flood does evict them -- the proof that the flood really pressed the table."""

from __future__ import annotations

from maglev.testing.flood import FloodRun, run_real

RUN = FloodRun(established=3000, keepalive_s=0.5, seconds=2.0, workers=2, capacity=8192)


def test_established_flows_keep_their_entry_and_backend_through_a_flood_and_a_change():
    base = run_real(RUN, "baseline", 1, 0)
    guarded = run_real(RUN, "guarded", 90, 2000)
    print(f"\nbaseline: {base['established_misses_after_flood']} misses, {base['moved_established']} moved of "
          f"{base['maglev_would_move']}; guarded: {guarded['established_misses_after_flood']} misses, "
          f"{guarded['moved_established']} moved, {guarded['rate_guard_hits']} rate-guard hits; forwarded "
          f"{base['forwarded_mpps']:.2f} / {guarded['forwarded_mpps']:.2f} Mpps during the flood")
    for r in (base, guarded):
        assert r["change"]["confirmed"], r["change"]
        assert r["maglev_would_move"] > 0  # the change moves some flows when they have no entry
        assert r["insert_failures"] == 0
        assert r["adopted_entries"] > 0
    # the flood evicted unprotected established flows, and those that sent their next ACK
    # after the change moved
    assert base["moved_established"] > 0, base
    assert guarded["established_misses_after_flood"] == 0, guarded
    assert guarded["moved_established"] == 0 and guarded["moved_established_share"] == 0.0, guarded
    assert guarded["rate_guard_hits"] > 0, guarded  # 2000 new flows/s per worker: the flood is over it

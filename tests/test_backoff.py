import random

from collector.backoff import RECONNECT_CAP_SECONDS, Backoff


def test_first_delay_exact_then_doubling_with_jitter_up_to_the_cap():
    backoff = Backoff(first=1.0, cap=RECONNECT_CAP_SECONDS, rng=random.Random(7))
    delays = [backoff.next() for _ in range(12)]
    assert delays[0] == 1.0
    for n, delay in enumerate(delays[1:], start=1):
        nominal = min(RECONNECT_CAP_SECONDS, 2.0**n)
        assert nominal / 2 <= delay <= nominal
    backoff.reset()
    assert backoff.next() == 1.0


def test_a_flapping_link_stays_far_below_binances_300_attempts_per_5_minutes():
    # Worst case: every attempt fails at once, for every symbol of a 10-symbol instance.
    worst = 0
    for seed in range(20):
        backoff = Backoff(first=1.0, cap=RECONNECT_CAP_SECONDS, rng=random.Random(seed))
        elapsed, attempts = 0.0, 1
        while (elapsed := elapsed + backoff.next()) < 300:
            attempts += 1
        worst = max(worst, attempts)
    assert worst * 10 < 300

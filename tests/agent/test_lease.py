"""The board lease: one holder, limited time, and nobody crosses it."""

from __future__ import annotations

import threading

import pytest

from biagent.lease import LeaseError, LeaseManager
from biagent.server import BenchmarkSlot


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_one_holder_until_release_or_expiry():
    clock = Clock()
    leases = LeaseManager(clock)
    a = leases.acquire("host-a", 10)
    assert a.granted and a.lease_id and a.holder == "host-a"
    b = leases.acquire("host-b", 10)
    assert not b.granted and b.holder == "host-a" and b.lease_id == "" and b.expires_in_s == pytest.approx(10)
    assert leases.blocks("") is not None and leases.blocks(a.lease_id) is None
    clock.t += 6
    assert leases.renew(a.lease_id, 10).granted  # renewed: 10 s from now
    clock.t += 9
    assert not leases.acquire("host-b", 10).granted
    clock.t += 2  # lapsed: a crashed holder frees the board by itself
    assert leases.blocks("") is None
    assert not leases.renew(a.lease_id, 10).granted  # the old holder must stop
    b = leases.acquire("host-b", 10)
    assert b.granted and b.lease_id != a.lease_id
    assert not leases.release(a.lease_id).granted  # a stale id releases nothing
    assert leases.release(b.lease_id).granted and leases.blocks("") is None


@pytest.mark.parametrize(
    "holder, ttl", [("", 10), ("x" * 201, 10), ("line\nbreak", 10), ("h", 0.5), ("h", 3601)]
)
def test_bad_requests(holder, ttl):
    with pytest.raises(LeaseError):
        LeaseManager().acquire(holder, ttl)


class Context:
    def __init__(self, active=True):
        self.active = active

    def is_active(self):
        return self.active

    def abort(self, code, message):
        raise RuntimeError(message)


def test_a_caller_that_left_the_queue_never_releases_someone_elses_slot():
    slot = BenchmarkSlot()
    list(slot.acquire(Context(), 10))
    assert slot.held_by_me()
    left = Context(active=False)
    outcome = []

    def waiter():
        list(slot.acquire(left, 10))  # returns at once: the caller is gone
        outcome.append(slot.held_by_me())

    t = threading.Thread(target=waiter)
    t.start()
    t.join(5)
    assert outcome == [False]  # so the server will not release (another thread's) slot
    assert slot.held_by_me()
    slot.release()

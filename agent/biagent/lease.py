"""One holder at a time per board, for a limited time: campaigns never interleave, and a
host that crashes (or loses the network) releases the board when its lease runs out."""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

MAX_TTL_S = 3600.0
MAX_HOLDER = 200


class LeaseError(ValueError):
    """A malformed lease request (bad ttl, unprintable holder)."""


@dataclass
class LeaseState:
    granted: bool
    lease_id: str = ""
    holder: str = ""
    expires_in_s: float = 0.0


class LeaseManager:
    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._id, self._holder, self._until = "", "", 0.0

    def _live(self) -> bool:
        return bool(self._id) and self._clock() < self._until

    def _state(self, granted: bool) -> LeaseState:
        if not self._live():
            return LeaseState(granted, "", "", 0.0)
        return LeaseState(granted, self._id if granted else "", self._holder, self._until - self._clock())

    @staticmethod
    def _check(holder: str, ttl_s: float) -> None:
        if not 1.0 <= ttl_s <= MAX_TTL_S:
            raise LeaseError(f"ttl_s must be between 1 and {MAX_TTL_S:.0f} seconds, got {ttl_s}")
        if not holder or len(holder) > MAX_HOLDER or not holder.isprintable():
            raise LeaseError(f"holder must be 1-{MAX_HOLDER} printable characters")

    def acquire(self, holder: str, ttl_s: float) -> LeaseState:
        self._check(holder, ttl_s)
        with self._lock:
            if self._live():
                return self._state(False)
            self._id, self._holder, self._until = secrets.token_hex(16), holder, self._clock() + ttl_s
            return self._state(True)

    def renew(self, lease_id: str, ttl_s: float) -> LeaseState:
        self._check("renew", ttl_s)
        with self._lock:
            if not self._live() or lease_id != self._id:
                return self._state(False)  # lapsed or taken: the caller must stop
            self._until = self._clock() + ttl_s
            return self._state(True)

    def release(self, lease_id: str) -> LeaseState:
        with self._lock:
            if self._live() and lease_id == self._id:
                self._id, self._holder, self._until = "", "", 0.0
                return LeaseState(True)
            return self._state(False)

    def current(self) -> LeaseState | None:
        """The live lease (holder and time left, never its id), or None: for metrics."""
        with self._lock:
            if not self._live():
                return None
            state = self._state(False)
            return LeaseState(False, "", state.holder, state.expires_in_s)

    def blocks(self, lease_id: str) -> LeaseState | None:
        """The live lease that a call with `lease_id` must not cross, or None."""
        with self._lock:
            if self._live() and lease_id != self._id:
                return self._state(False)
            return None

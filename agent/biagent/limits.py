"""How many calls the agent serves at once, in all and per client, with health always answered.

gRPC's own `maximum_concurrent_rpcs` counts every call, the health check included: sixteen
uploads that go silent after their header left the board answering RESOURCE_EXHAUSTED to
its health check too, and one client could take every slot. This interceptor counts only
the agent's own service, gives each client a share, and leaves the standard health service
outside the count (the server's thread pool keeps spare threads for it).

A client is the peer's IP address; on loopback (SSH tunnels, local tools, the embedded
board) every peer has the same address, so there each connection counts as a client.
"""

from __future__ import annotations

import threading
from collections import Counter

import grpc

from .security import HEALTH_PREFIX, is_loopback, rewrap


def client_key(peer: str) -> str:
    """`ipv4:10.0.0.7:5321` -> `10.0.0.7`; a loopback peer keeps its port (one key per connection)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer  # unix sockets and the like: the whole peer string
    host, _, _port = rest.rpartition(":")
    host = host.strip("[]")
    return rest if is_loopback(host) else host


class CallLimiter:
    """Counts calls in flight; `enter` refuses past `max_total` or a client's `max_per_client`."""

    def __init__(self, max_total: int, max_per_client: int):
        if max_total < 1 or max_per_client < 1:
            raise ValueError("call limits must be at least 1")
        self.max_total, self.max_per_client = max_total, min(max_per_client, max_total)
        self._lock = threading.Lock()
        self._total = 0
        self._per_client: Counter[str] = Counter()

    def enter(self, client: str) -> str | None:
        """None when admitted (call `leave` later), else the reason for refusing."""
        with self._lock:
            if self._per_client[client] >= self.max_per_client:
                return (
                    f"this client already has {self.max_per_client} calls in flight on the board "
                    "(--max-streams-per-client); finish or cancel one first"
                )
            if self._total >= self.max_total:
                return (
                    f"the board is serving its limit of {self.max_total} concurrent calls (--max-streams); "
                    "retry shortly"
                )
            self._total += 1
            self._per_client[client] += 1
            return None

    def leave(self, client: str) -> None:
        with self._lock:
            self._total -= 1
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]

    def in_flight(self) -> int:
        with self._lock:
            return self._total


class LimitInterceptor(grpc.ServerInterceptor):
    """Admits each call of the agent's service through a `CallLimiter`; health is never counted."""

    def __init__(self, limiter: CallLimiter):
        self.limiter = limiter

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        return _limited(handler, self.limiter)


def _limited(handler: grpc.RpcMethodHandler, limiter: CallLimiter) -> grpc.RpcMethodHandler:
    """A handler of the same shape that holds a slot from the call's start to its end."""

    def admit(context) -> str:
        client = client_key(context.peer())
        reason = limiter.enter(client)
        if reason is not None:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason)
        return client

    def unary(request_or_iterator, context, behavior):
        client = admit(context)
        try:
            return behavior(request_or_iterator, context)
        finally:
            limiter.leave(client)

    def stream(request_or_iterator, context, behavior):
        client = admit(context)
        try:  # the slot is held until the stream ends or the client leaves (the generator is closed)
            yield from behavior(request_or_iterator, context)
        finally:
            limiter.leave(client)

    return rewrap(handler, unary, stream)

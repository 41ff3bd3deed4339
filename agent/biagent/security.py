"""Who may talk to the agent: TLS (optionally mutual) and a bearer token.

A board on a lab network is reachable by anyone on it. TLS keeps models and results
private and proves the agent's identity to the host; with a client CA, the agent also
demands a certificate from the host (mutual TLS); a bearer token (read from a file or the
BIAGENT_TOKEN variable, never from the command line where `ps` shows it) gates every RPC
but the standard health check, which reveals nothing and serves load balancers.

Plaintext is for loopback: the agent refuses to listen in plaintext on any other address
unless told `--insecure` (an SSH tunnel ends on loopback, so it needs no exception).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

TOKEN_ENV = "BIAGENT_TOKEN"
HEALTH_PREFIX = "/grpc.health.v1.Health/"


class SecurityConfigError(ValueError):
    """A TLS or token setting that cannot work (missing file, unreadable key, empty token)."""


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and `localhost`; a name is never resolved (DNS can lie)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: str | Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"cannot read the {what} {path}: {exc.strerror or exc}") from exc
    if not data.strip():
        raise SecurityConfigError(f"the {what} {path} is empty")
    return data


@dataclass(frozen=True)
class ServerTls:
    """The agent's certificate and key; `client_ca` set means clients must present a certificate it signed."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None

    def credentials(self) -> grpc.ServerCredentials:
        pair = (_read(self.key_file, "TLS key"), _read(self.cert_file, "TLS certificate"))
        ca = _read(self.client_ca_file, "client CA") if self.client_ca_file else None
        return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=ca is not None)


def load_token(token_file: str | None) -> str | None:
    """The bearer token from `token_file`, else from $BIAGENT_TOKEN, else None (no token)."""
    token: str | None
    if token_file:
        token = _read(token_file, "token file").decode("utf-8", "replace").strip()
    else:
        token = os.environ.get(TOKEN_ENV, "").strip() or None
    if token is not None and (len(token) < 16 or any(c.isspace() for c in token)):
        raise SecurityConfigError("a bearer token must be at least 16 characters without whitespace")
    return token


class TokenInterceptor(grpc.ServerInterceptor):
    """Aborts with UNAUTHENTICATED unless the call carries `authorization: Bearer <token>`."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        sent = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(sent.encode(), self._expected):
            return handler
        message = (
            "this agent requires a bearer token: set the board's token in the inventory"
            if not sent
            else "the bearer token was not accepted"
        )
        return _refusal(handler, message)


def rewrap(handler: grpc.RpcMethodHandler, unary, stream) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` running `unary` or `stream` (a generator function)
    in place of its behaviour; each takes (request_or_iterator, context, behaviour)."""
    kw = dict(
        request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )
    if handler.request_streaming and handler.response_streaming:
        inner, make, wrap = handler.stream_stream, grpc.stream_stream_rpc_method_handler, stream
    elif handler.request_streaming:
        inner, make, wrap = handler.stream_unary, grpc.stream_unary_rpc_method_handler, unary
    elif handler.response_streaming:
        inner, make, wrap = handler.unary_stream, grpc.unary_stream_rpc_method_handler, stream
    else:
        inner, make, wrap = handler.unary_unary, grpc.unary_unary_rpc_method_handler, unary
    return make(lambda request, context: wrap(request, context, inner), **kw)


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that refuses the call."""

    def deny(request_or_iterator, context, behavior):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def deny_stream(request_or_iterator, context, behavior):
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - abort raises

    return rewrap(handler, deny, deny_stream)

"""How the host opens a channel to an agent: TLS or plaintext, with or without a token.

Plaintext is for loopback only (the embedded agent, an SSH tunnel's local end): to any
other address the host refuses it unless the operator says `--insecure`, so a board never
receives models or a token in the clear by accident. The token travels as
`authorization: Bearer ...` on every call, added by a client interceptor so that it works
the same over TLS and over a tunnel; it is never printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from biagent.security import is_loopback  # one rule for both ends (same distribution)

from .errors import BoardError


def host_of(address: str) -> str:
    return address.rsplit(":", 1)[0] if ":" in address else address


@dataclass(frozen=True)
class ChannelSecurity:
    """TLS material (file paths), a token, and whether plaintext off loopback is allowed."""

    ca_file: str | None = None  # TLS on when set: the CA that signed the agent's certificate
    cert_file: str | None = None  # with key_file: our client certificate (mutual TLS)
    key_file: str | None = None
    server_name: str | None = None  # expected name in the agent's certificate, if not the address's host
    token: str | None = None
    insecure: bool = False

    @property
    def tls(self) -> bool:
        return self.ca_file is not None

    def __repr__(self) -> str:  # never show the token
        token = "set" if self.token else "none"
        return (
            f"ChannelSecurity(ca_file={self.ca_file!r}, cert_file={self.cert_file!r}, "
            f"server_name={self.server_name!r}, token={token}, insecure={self.insecure})"
        )


def _read(board: str, path: str, what: str) -> bytes:
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise BoardError(board, f"cannot read the {what} {path}: {exc.strerror or exc}") from exc


def open_channel(address: str, board: str, security: ChannelSecurity | None, options: list) -> grpc.Channel:
    """A channel to `address` under `security`, or a BoardError saying why not."""
    sec = security or ChannelSecurity()
    if sec.ca_file is not None:  # i.e. sec.tls
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(board, sec.ca_file, "TLS CA"),
            private_key=_read(board, sec.key_file, "client key") if sec.key_file else None,
            certificate_chain=_read(board, sec.cert_file, "client certificate") if sec.cert_file else None,
        )
        if sec.server_name:
            options = options + [("grpc.ssl_target_name_override", sec.server_name)]
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        if not is_loopback(host_of(address)) and not sec.insecure:
            raise BoardError(
                board,
                f"refusing plaintext gRPC to {address}: give the board `tls` in the inventory "
                "(see `bihost certs`), use `transport: ssh`, or pass --insecure on a network "
                "you trust",
            )
        channel = grpc.insecure_channel(address, options=options)
    if sec.token:
        channel = grpc.intercept_channel(channel, _BearerToken(sec.token))
    return channel


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _details(self, details):
        metadata = list(details.metadata or []) + [self._header]
        return _Details(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class _Details(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression

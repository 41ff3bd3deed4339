"""`biagent serve`: run the agent on a board (argparse only: the agent stays light)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="biagent", description="BiBench Farm board agent")
    parser.add_argument("--version", action="version", version=f"biagent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the agent over gRPC")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=50051, help="port; 0 picks a free one and prints it")
    serve.add_argument("--store", type=Path, required=True, help="directory of the model store")
    serve.add_argument("--name", default=None, help="board name reported to the host (default: hostname)")
    serve.add_argument("--max-model-mb", type=float, default=2048, help="largest accepted upload, MiB")
    serve.add_argument(
        "--max-queue-wait", type=float, default=600, help="seconds a benchmark may wait for the board"
    )
    serve.add_argument(
        "--max-store-mb",
        type=float,
        default=8192,
        help="bytes kept in the store; least recently used models are evicted (0: no limit)",
    )
    serve.add_argument(
        "--max-streams",
        type=int,
        default=16,
        help="concurrent calls (the health check not counted); more get RESOURCE_EXHAUSTED",
    )
    serve.add_argument(
        "--max-streams-per-client",
        type=int,
        default=None,
        help="concurrent calls of one client (an IP address; on loopback, a connection); "
        "default half of --max-streams",
    )
    serve.add_argument(
        "--upload-idle-timeout",
        type=float,
        default=30.0,
        help="abort an upload whose client sends nothing this many seconds (its temp file removed)",
    )
    serve.add_argument("--tls-cert", help="serve TLS with this certificate (PEM; `bihost certs issue`)")
    serve.add_argument("--tls-key", help="the certificate's private key (PEM)")
    serve.add_argument("--client-ca", help="require client certificates signed by this CA (mutual TLS)")
    serve.add_argument("--token-file", help="require this bearer token (else $BIAGENT_TOKEN if set)")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext on a non-loopback address (a network you trust)",
    )
    serve.add_argument(
        "--metrics-port",
        type=int,
        help="serve the agent's own Prometheus metrics (queue, benchmarks, store, RPCs, lease) on "
        "this port (0 picks a free one)",
    )
    serve.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the metrics endpoint (plaintext: loopback unless --insecure)",
    )
    serve.add_argument(
        "--import-runtimes",
        action="store_true",
        help="import the runtimes at start, in the background (a slow board's first board-info call "
        "would wait for them); `bihost board bootstrap` starts agents with it",
    )
    serve.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    from .security import SecurityConfigError, ServerTls, load_token
    from .server import AgentServer

    try:
        if bool(args.tls_cert) != bool(args.tls_key) or (args.client_ca and not args.tls_cert):
            raise SecurityConfigError("--tls-cert and --tls-key go together, and --client-ca needs them")
        tls = ServerTls(args.tls_cert, args.tls_key, args.client_ca) if args.tls_cert else None
        server = AgentServer(
            args.store,
            args.host,
            args.port,
            args.name,
            int(args.max_model_mb * (1 << 20)),
            args.max_queue_wait,
            tls=tls,
            token=load_token(args.token_file),
            insecure=args.insecure,
            max_streams=args.max_streams,
            max_streams_per_client=args.max_streams_per_client,
            upload_idle_s=args.upload_idle_timeout,
            max_store_bytes=int(args.max_store_mb * (1 << 20)) or None,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
        ).start()
        if args.import_runtimes:
            server.import_runtimes()
    except (OSError, SecurityConfigError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # One machine-readable line, so scripts and the host can learn a port-0 pick.
    print(f"biagent listening on {args.host}:{server.port} ({server.security})", flush=True)
    if server.metrics_server is not None:
        shown = f"[{args.metrics_host}]" if ":" in args.metrics_host else args.metrics_host
        print(f"biagent metrics on http://{shown}:{server.metrics_port}/metrics", flush=True)
    stop.wait()
    logging.getLogger("biagent").info("stopping (graceful, 5 s)")
    server.stop(grace=5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

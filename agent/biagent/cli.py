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
    serve.add_argument("--max-queue-wait", type=float, default=600, help="seconds a benchmark may wait for the board")
    serve.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    from .server import AgentServer

    try:
        server = AgentServer(args.store, args.host, args.port, args.name, int(args.max_model_mb * (1 << 20)),
                             args.max_queue_wait).start()
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # One machine-readable line, so scripts and the host can learn a port-0 pick.
    print(f"biagent listening on {args.host}:{server.port}", flush=True)
    stop.wait()
    logging.getLogger("biagent").info("stopping (graceful, 5 s)")
    server.stop(grace=5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

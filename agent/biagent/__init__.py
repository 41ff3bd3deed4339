"""biagent: the light agent that runs on a board (gRPC server, model store, runtimes).

It depends only on the base install (grpcio, protobuf, numpy, pyyaml) and never imports
torch, so it installs on a Raspberry Pi in a minute.

`__version__` is the project's one version: pyproject reads it, and bihost re-exports it.
"""

__version__ = "0.2.0.dev0"

"""Load generator for ggap: `python -m bench --endpoints HOST:PORT ...` (see bench.cli).

A development tool, not part of the installed package: it drives the server with grpcio
(a dev dependency), a different gRPC implementation from the purerpc server it measures.
"""

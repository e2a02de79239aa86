"""Runtimes own the server's lifecycle (start, find, stop, logs) and never speak gRPC."""

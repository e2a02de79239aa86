"""Transport limits of the compatible server (ours: TF Serving's C++ servers have their own, or none).

One cap on a request's size for both APIs: TF Serving accepts gRPC messages up to 2 GiB
(``SetMaxMessageSize(kint32max)``), which for a Python server means several copies of a 2 GiB request
in memory, far beyond the 2 GiB container this project runs by default. 64 MiB holds a batch of 32
224x224x3 float32 images twice over; larger requests get RESOURCE_EXHAUSTED (gRPC) or 413 (REST).
``--grpc_channel_arguments=grpc.max_receive_message_length=N`` raises it for both APIs.

REST connections are served by a bounded pool (``--rest_api_num_threads``) behind one I/O thread, so
idle or slow connections hold a socket, never a thread. They are closed after ``REST_IDLE_SECONDS``
without a byte, and when a request has not arrived whole ``REST_READ_SECONDS`` after its first byte
(a slow-loris client). The two environment variables exist so tests need not wait the defaults out.
"""

from __future__ import annotations

import os

MAX_REQUEST_BYTES = 64 << 20
REST_MAX_HEADER_BYTES = 64 << 10
# Open REST connections at most (further clients wait in the listen backlog until one closes);
# lowered to fit the open-file limit, which the server raises to its hard limit first.
REST_MAX_CONNECTIONS = 4096


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    return value if 0 < value < 86400 else default


REST_IDLE_SECONDS = _seconds("DEPLOYER_REST_IDLE_SECONDS", 30.0)
REST_READ_SECONDS = _seconds("DEPLOYER_REST_READ_SECONDS", 60.0)

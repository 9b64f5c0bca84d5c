"""A stand-in for ``spiffe.WorkloadApiClient`` (the gRPC boundary to a SPIRE agent).

The spiffe package ships no Workload API test server and no SPIRE agent runs on this
machine, so tests drive the real ``spiffe.X509Source`` with this client. It holds the
X.509 context the "SPIRE agent" has now (``current``); every stream opened starts with
it, as a real stream does, from a thread, as gRPC calls back.
"""

from __future__ import annotations

import threading
from typing import Any

from spiffe.workloadapi.workload_api_client import StreamCancelHandler
from spiffe.workloadapi.x509_context import X509Context


class StandInClient:
    def __init__(self, first: X509Context) -> None:
        self.current = first
        self.on_success: Any = None
        self.on_error: Any = None
        self.streams = 0  # how many streams were opened
        self.refuse: Exception | None = None  # the error new streams end with at once

    def stream_x509_contexts(self, on_success: Any, on_error: Any) -> StreamCancelHandler:
        self.on_success, self.on_error = on_success, on_error
        self.streams += 1
        first = (on_error, self.refuse) if self.refuse is not None else (on_success, self.current)
        threading.Thread(target=first[0], args=(first[1],), daemon=True).start()
        return StreamCancelHandler()

    def push(self, ctx: X509Context) -> None:
        """The SPIRE agent rotates and the open stream carries it."""
        self.current = ctx
        t = threading.Thread(target=self.on_success, args=(ctx,), daemon=True)
        t.start()
        t.join()

    def stall(self, ctx: X509Context) -> None:
        """The SPIRE agent rotates but the open stream never says so (a stream that
        stopped); only a new stream gets *ctx*."""
        self.current = ctx

    def fail(self, error: Exception) -> None:
        """The open stream ends with an unretryable error: the X509Source closes itself."""
        t = threading.Thread(target=self.on_error, args=(error,), daemon=True)
        t.start()
        t.join()

    def close(self) -> None:
        pass

"""moto's S3/SQS API server on a free loopback port, with SQS's receive semantics kept.

Run as a script (``python moto_server.py``); it prints its port on the first line.

Two things of real SQS that moto's server lacks are restored here:

* a message goes to one receiver at a time: moto's receive is not atomic, so two
  concurrent ReceiveMessage calls can both take one message. Every call to moto
  runs under one lock.
* a long poll waits without stopping everyone else: moto waits inside the call, so
  under that lock one empty long poll would hold up every other request, deletes
  included, for its whole wait. Long polls are served here as short polls, repeated
  (outside the lock) until a message comes or the requested wait has passed.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

POLL_EVERY = 0.05

StartResponse = Callable[..., Any]


class SerialSqs:
    """WSGI middleware: moto one call at a time, long polls waited outside the lock."""

    def __init__(self, app: Callable[[dict[str, Any], StartResponse], Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def _call(self, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
        captured: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            captured["status"], captured["headers"] = status, headers

        with self.lock:
            body = b"".join(self.app(environ, start_response))
        return captured["status"], captured["headers"], body

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        wait = 0
        # The JSON protocol of current SDKs names the operation in a header.
        if environ.get("HTTP_X_AMZ_TARGET", "").endswith(".ReceiveMessage"):
            doc = json.loads(raw or b"{}")
            wait = int(doc.get("WaitTimeSeconds") or 0)
            doc["WaitTimeSeconds"] = 0
            raw = json.dumps(doc).encode()
        deadline = time.monotonic() + wait
        while True:
            env = dict(environ)
            env["wsgi.input"] = io.BytesIO(raw)
            env["CONTENT_LENGTH"] = str(len(raw))
            status, headers, body = self._call(env)
            if wait == 0 or not status.startswith("200") or time.monotonic() >= deadline:
                break
            if json.loads(body or b"{}").get("Messages"):
                break
            time.sleep(POLL_EVERY)
        start_response(status, headers)
        return [body]


def main() -> None:
    app = SerialSqs(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.server_port, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

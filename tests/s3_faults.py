"""A fault-injecting HTTP proxy in front of the local S3 endpoint (test support).

Modes, switchable while the collector runs: pass everything through; answer PUTs with 503 SlowDown
without forwarding (S3 down or throttling); forward a PUT and then answer 500 anyway (an ambiguous
failure: the object is written but the client does not know). The headers of every PUT are kept.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from sandbox.loopback import ServedInThread

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class S3Faults(ServedInThread):
    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.reject_puts = 0  # this many PUTs answered 503 without forwarding (-1: all)
        self.lose_put_replies = 0  # this many PUTs forwarded, then answered 500
        self.puts_seen = 0
        self.put_headers: list[dict[str, str]] = []  # lower-cased names, in arrival order
        self.put_paths: list[str] = []  # the request paths of those PUTs, same order
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            # botocore sends `Expect: 100-continue` with PUT bodies; HTTP/1.0 would make it wait 1 s each time.
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "PUT":
                    with proxy._lock:
                        proxy.put_headers.append({k.lower(): v for k, v in self.headers.items()})
                        proxy.put_paths.append(self.path)
                verdict = proxy._verdict(self.command)
                if verdict == "reject":
                    self._reply(503, {"Content-Type": "application/xml"}, SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                # The Host header goes on as the client signed it (moto checks signatures under IAM enforcement).
                headers = dict(self.headers.items())
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if verdict == "lose":
                    self._reply(500, {"Content-Type": "application/xml"}, b"<Error><Code>InternalError</Code></Error>")
                    return
                skip = {"transfer-encoding", "connection", "content-length"}
                self._reply(resp.status, {k: v for k, v in resp.getheaders() if k.lower() not in skip}, data)

            def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        super().__init__(ThreadingHTTPServer(("127.0.0.1", 0), Handler), "s3-faults")

    def _verdict(self, method: str) -> str:
        if method != "PUT":
            return "pass"
        with self._lock:
            self.puts_seen += 1
            if self.reject_puts:
                self.reject_puts -= 1 if self.reject_puts > 0 else 0
                return "reject"
            if self.lose_put_replies:
                self.lose_put_replies -= 1
                return "lose"
        return "pass"


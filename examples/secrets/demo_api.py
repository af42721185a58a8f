"""A stand-in for an authenticated API, for the README tour of secrets (docs/secrets.md).

    python3 examples/secrets/demo_api.py [PORT]      # default 8080, on 127.0.0.1

`GET /allowed/me` answers 200 `{"user": "demo", "you_sent": "<your Authorization header>"}` when
the request carries `Authorization: Bearer demo-token-123` (or $DEMO_TOKEN), and 401 otherwise.
It echoes the header on purpose: through corral, the agent sees `Bearer [redacted]`.
"""
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = os.environ.get("DEMO_TOKEN", "demo-token-123")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        sent = self.headers.get("Authorization", "")
        if self.path.startswith("/allowed/") and sent == f"Bearer {TOKEN}":
            status, body = 200, {"user": "demo", "you_sent": sent}
        else:
            status, body = 401, {"error": "a bearer token is required", "you_sent": sent}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"demo API on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()

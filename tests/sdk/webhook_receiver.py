"""A webhook receiver that checks anya's signatures with Standard Webhooks' own library.

  python webhook_receiver.py SECRET FAILURES LOG

Listens on an ephemeral loopback port (printed as `PORT <n>` on the first line), answers the
first FAILURES deliveries with 500 and the rest with 204, and appends one JSON line per request
to LOG: the verified payload (or the verification error) and the `webhook-id`.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook

secret, failures, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
hook = Webhook(secret)
seen = {"n": 0}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        entry = {"webhook_id": self.headers.get("webhook-id"), "path": self.path}
        try:
            entry["payload"] = hook.verify(body, {k.lower(): v for k, v in self.headers.items()})
            entry["verified"] = True
        except Exception as e:  # the test asserts on it
            entry["verified"] = False
            entry["error"] = repr(e)
        seen["n"] += 1
        status = 500 if seen["n"] <= failures else 204
        entry["answered"] = status
        with open(log, "a") as f:
            f.write(json.dumps(entry) + "\n")
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Handler)
print("PORT", server.server_address[1], flush=True)
server.serve_forever()

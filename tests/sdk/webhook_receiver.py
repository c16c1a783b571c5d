#!/usr/bin/env python3
"""A webhook receiver that checks Standard Webhooks signatures, for tests/it/api.rs.

Usage: webhook_receiver.py PORT SECRET LOG
Listens on 127.0.0.1:PORT and answers every POST 204. For each it appends one JSON line to
LOG: the webhook-id, whether the signature verifies and the body. The check is the Standard
Webhooks reference algorithm, written here from the specification with the standard library
(not seedq's code): the secret is the base64 after `whsec_`; the signed content is
`{webhook-id}.{webhook-timestamp}.{body}`; the header holds space-separated `v1,<base64
HMAC-SHA256>` signatures; the timestamp must be within five minutes.
"""

import base64
import hashlib
import hmac
import http.server
import json
import sys
import time

TOLERANCE = 300


def verify(secret, headers, body):
    msg_id = headers.get("webhook-id")
    ts = headers.get("webhook-timestamp")
    sigs = headers.get("webhook-signature", "")
    if not msg_id or not ts or abs(time.time() - int(ts)) > TOLERANCE:
        return False
    key = base64.b64decode(secret[len("whsec_"):] if secret.startswith("whsec_") else secret)
    signed = f"{msg_id}.{ts}.".encode() + body
    want = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    for s in sigs.split(" "):
        version, _, sig = s.partition(",")
        if version == "v1" and hmac.compare_digest(sig, want):
            return True
    return False


def main():
    port, secret, log = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            line = {
                "id": self.headers.get("webhook-id"),
                "verified": verify(secret, self.headers, body),
                "body": json.loads(body or b"null"),
            }
            with open(log, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()

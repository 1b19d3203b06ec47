"""A webhook receiver for the tests that verifies every request with the
`standardwebhooks` package (an implementation independent of afas-sync).

usage: webhook_receiver.py SECRET PORT_FILE LOG_FILE
Answers 204 when the signature verifies and 400 when it does not; appends
one JSON line per request to LOG_FILE."""
import http.server
import json
import sys

from standardwebhooks.webhooks import Webhook

secret, port_file, log_file = sys.argv[1], sys.argv[2], sys.argv[3]
verifier = Webhook(secret)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            verifier.verify(body, headers)
            ok, error = True, None
        except Exception as e:  # any verification failure
            ok, error = False, str(e)
        with open(log_file, "a", encoding="utf-8") as f:
            f.write(json.dumps({"ok": ok, "error": error, "id": headers.get("webhook-id"), "body": body.decode("utf-8")}) + "\n")
        self.send_response(204 if ok else 400)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file, "w", encoding="utf-8") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()

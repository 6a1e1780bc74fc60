"""A tiny app for `mqtt-binding run`, written against Dapr's bindings HTTP API only
(Python standard library, no SDK): it receives the `orders` binding's events on
POST /orders and, once a second, publishes an order through the binding.

    python3 examples/app/app.py            # app on port 5000, sidecar on 3500
"""

import json
import os
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APP_PORT = int(os.environ.get("APP_PORT", "5000"))
DAPR_PORT = int(os.environ.get("DAPR_HTTP_PORT", "3500"))


class Events(BaseHTTPRequestHandler):
    def do_OPTIONS(self):
        # daprd's probe: answering 2xx tells the sidecar to start the input binding.
        self.send_response(200 if self.path == "/orders" else 404)
        self.end_headers()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        print(f"received on {self.headers.get('topic')}: {body.decode(errors='replace')}", flush=True)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def publish_orders():
    for number in range(1, 1_000_000):
        request = {
            "operation": "create",
            "data": {"order": number, "item": "apples"},
            "metadata": {"topic": "orders/eu"},
        }
        try:
            urllib.request.urlopen(
                urllib.request.Request(
                    f"http://localhost:{DAPR_PORT}/v1.0/bindings/orders",
                    data=json.dumps(request).encode(),
                    headers={"Content-Type": "application/json"},
                    method="POST",
                )
            )
            print(f"published order {number}", flush=True)
        except OSError as error:
            print(f"publishing failed: {error}", flush=True)
        time.sleep(1)


if __name__ == "__main__":
    threading.Thread(target=publish_orders, daemon=True).start()
    ThreadingHTTPServer(("127.0.0.1", APP_PORT), Events).serve_forever()

"""An ordinary Dapr app using the official Python SDK over gRPC (dapr 1.19.0): it receives
the "orders" input binding through dapr.ext.grpc.App and sends to the "orders" output
binding with DaprClient.invoke_binding. It runs unchanged against daprd or against
`mqtt-binding run --app-protocol grpc`.

    pip install "dapr[grpc]==1.19.0"
    mqtt-binding run --resources-path examples/components --app-id shop \\
        --app-port 50051 --app-protocol grpc &
    python3 examples/sdk-python-grpc/app.py
"""

import threading
import time

from dapr.clients import DaprClient
from dapr.ext.grpc import App, BindingRequest

APP_PORT = 50051
received = []
app = App()


@app.binding("orders")
def orders(request: BindingRequest):
    print(f"received: {request.text()}", flush=True)
    received.append(request.text())


def send_orders():
    # DaprClient waits for the sidecar (GET /v1.0/healthz/outbound) before its first call.
    # The sidecar subscribes once it sees this app listening and asks it which bindings it
    # wants: give it a moment, or the first orders are published before the subscription.
    time.sleep(2)
    with DaprClient() as client:
        for order in range(1, 4):
            client.invoke_binding(
                "orders", "create", f'{{"order": {order}, "item": "pears"}}',
                binding_metadata={"topic": "orders/eu"},
            )
            print(f"sent order {order}", flush=True)
    deadline = time.monotonic() + 10
    while len(received) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    print(f"{len(received)} of 3 orders came back through the input binding", flush=True)
    app.stop()


threading.Thread(target=send_orders, daemon=True).start()
app.run(APP_PORT)

"""Dapr's official Python SDK (dapr 1.19.0, gRPC) against `mqtt-binding run`, for the tests.

    python_grpc.py invoke BINDING DATA [TOPIC]   DaprClient().invoke_binding; prints "ok",
                                                 or "error: DETAILS" and exits 1
    python_grpc.py metadata                      DaprClient().get_metadata(); prints the
                                                 app ID and the components as JSON
    python_grpc.py state                         DaprClient().get_state(), which this
                                                 sidecar does not serve; prints the error
    python_grpc.py serve PORT BINDING FAILURES   a dapr.ext.grpc.App on PORT receiving
                                                 BINDING; prints one JSON line per call;
                                                 the first FAILURES calls raise
    python_grpc.py forward PORT BINDING TO       an AppCallback server (the SDK's generated
                                                 stubs; its App cannot answer with `to`)
                                                 receiving BINDING and answering each event
                                                 with its data and `to: [TO]`; prints the
                                                 data and the dapr-api-token it was sent

The sidecar's ports come from DAPR_GRPC_PORT and DAPR_HTTP_PORT (the SDK polls
/v1.0/healthz/outbound over HTTP before its first gRPC call), as with daprd.
"""

import json
import sys


def invoke(binding, data, topic=None):
    from dapr.clients import DaprClient

    metadata = {"topic": topic} if topic else {}
    with DaprClient() as client:
        try:
            client.invoke_binding(binding, "create", data, binding_metadata=metadata)
        except Exception as error:  # the SDK raises DaprGrpcError
            print(f"error: {error}", flush=True)
            sys.exit(1)
    print("ok", flush=True)


def metadata():
    from dapr.clients import DaprClient

    with DaprClient() as client:
        answer = client.get_metadata()
    components = sorted((c.name, c.type) for c in answer.registered_components)
    print(json.dumps({"id": answer.application_id, "components": components}), flush=True)


def state():
    from dapr.clients import DaprClient

    with DaprClient() as client:
        try:
            client.get_state("store", "key")
        except Exception as error:
            print(f"error: {error}", flush=True)
            return
    print("no error", flush=True)


def serve(port, binding, failures):
    from dapr.ext.grpc import App, BindingRequest

    app = App()
    left = {"failures": int(failures)}

    @app.binding(binding)
    def receive(request: BindingRequest):
        failing = left["failures"] > 0
        print(json.dumps({"data": request.text(), "failed": failing}), flush=True)
        if failing:
            left["failures"] -= 1
            raise RuntimeError("the handler fails on purpose")

    print(json.dumps({"listening": int(port)}), flush=True)
    app.run(int(port), "127.0.0.1")


def forward(port, binding, to):
    from concurrent import futures

    import grpc
    from dapr.proto import appcallback_service_v1, appcallback_v1

    class Forwarder(appcallback_service_v1.AppCallbackServicer):
        def ListInputBindings(self, request, context):
            return appcallback_v1.ListInputBindingsResponse(bindings=[binding])

        def OnBindingEvent(self, request, context):
            token = dict(context.invocation_metadata()).get("dapr-api-token")
            print(json.dumps({"data": request.data.decode(), "token": token}), flush=True)
            return appcallback_v1.BindingEventResponse(to=[to], data=request.data)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    appcallback_service_v1.add_AppCallbackServicer_to_server(Forwarder(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(json.dumps({"listening": int(port)}), flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    commands = {"invoke": invoke, "metadata": metadata, "state": state, "serve": serve, "forward": forward}
    commands[command](*arguments)

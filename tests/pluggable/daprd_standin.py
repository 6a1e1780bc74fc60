"""A stand-in for daprd's side of Dapr's pluggable-component protocol, for the tests.

It speaks to a component's Unix socket as daprd does: discovery through gRPC reflection
(the v1alpha service), the x-component-instance header on every call, Init on the input and
output services over separate connections, ListOperations, Invoke, and Read as a
bidirectional stream acknowledged message by message. The Python stubs are generated at
start from the project's own .proto files (grpcio-tools), so the test checks them too.

The test drives it one step at a time: one JSON object per line on stdin, one answer per
line on stdout. Usage: daprd_standin.py SOCKET PROTO_DIR
"""

import json
import os
import queue
import sys
import tempfile
import threading

import grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_tools import protoc


def generate_stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="standin-stubs-")
    files = [
        "dapr/proto/components/v1/common.proto",
        "dapr/proto/components/v1/bindings.proto",
    ]
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(
        ["protoc", f"-I{proto_dir}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + files
    )
    if code != 0:
        raise SystemExit(f"protoc failed on {proto_dir}: {code}")
    # Regular packages, so that they win over the Dapr SDK's own `dapr` package when it is
    # installed beside grpcio (a namespace package would lose to it).
    for package in ["dapr", "dapr/proto", "dapr/proto/components", "dapr/proto/components/v1"]:
        open(os.path.join(out, package, "__init__.py"), "a").close()
    sys.path.insert(0, out)
    from dapr.proto.components.v1 import bindings_pb2, bindings_pb2_grpc, common_pb2

    return bindings_pb2, bindings_pb2_grpc, common_pb2


class StandIn:
    def __init__(self, socket, proto_dir):
        self.socket = socket
        self.pb, self.grpc, self.common = generate_stubs(proto_dir)
        self.channels = {}
        self.streams = {}

    def channel(self, name):
        """One connection per name, as daprd opens one per component and service."""
        if name not in self.channels:
            self.channels[name] = grpc.insecure_channel(
                f"unix://{self.socket}",
                options=[
                    # tonic refuses the socket path grpcio would send; daprd sends this.
                    ("grpc.default_authority", "localhost"),
                    # A channel of its own, not one shared with the other names.
                    ("grpc.use_local_subchannel_pool", 1),
                ],
            )
        return self.channels[name]

    @staticmethod
    def headers(command):
        return (("x-component-instance", command["instance"]),)

    def discover(self, command):
        stub = reflection_pb2_grpc.ServerReflectionStub(self.channel(command.get("conn", "discovery")))
        answers = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        services = sorted(s.name for answer in answers for s in answer.list_services_response.service)
        name = os.path.basename(self.socket)
        name = name[: -len(".sock")] if name.endswith(".sock") else name
        types = []
        if {"dapr.proto.components.v1.InputBinding", "dapr.proto.components.v1.OutputBinding"} & set(services):
            types.append(f"bindings.{name.lower()}")
        return {"services": services, "component_types": types}

    def init(self, command):
        metadata = self.common.MetadataRequest(properties=command.get("metadata", {}))
        if command["side"] == "input":
            stub = self.grpc.InputBindingStub(self.channel(command.get("conn", "input")))
            stub.Init(self.pb.InputBindingInitRequest(metadata=metadata), metadata=self.headers(command), timeout=5)
        else:
            stub = self.grpc.OutputBindingStub(self.channel(command.get("conn", "output")))
            stub.Init(self.pb.OutputBindingInitRequest(metadata=metadata), metadata=self.headers(command), timeout=5)
        return {"ok": True}

    def list_operations(self, command):
        stub = self.grpc.OutputBindingStub(self.channel(command.get("conn", "output")))
        answer = stub.ListOperations(self.pb.ListOperationsRequest(), metadata=self.headers(command), timeout=5)
        return {"operations": list(answer.operations)}

    def ping(self, command):
        conn = self.channel(command.get("conn", command["side"]))
        stub = self.grpc.InputBindingStub(conn) if command["side"] == "input" else self.grpc.OutputBindingStub(conn)
        stub.Ping(self.common.PingRequest(), metadata=self.headers(command), timeout=5)
        return {"ok": True}

    def invoke(self, command):
        stub = self.grpc.OutputBindingStub(self.channel(command.get("conn", "output")))
        answer = stub.Invoke(
            self.pb.InvokeRequest(
                data=command.get("data", "").encode(),
                metadata=command.get("metadata", {}),
                operation=command.get("operation", "create"),
            ),
            metadata=self.headers(command),
            timeout=command.get("timeout", 10),
        )
        return {"data": answer.data.decode(errors="replace"), "metadata": dict(answer.metadata)}

    def read_open(self, command):
        stub = self.grpc.InputBindingStub(self.channel(command.get("conn", "input")))
        acks = queue.Queue()
        events = queue.Queue()

        def requests():
            while True:
                ack = acks.get()
                if ack is None:
                    return
                yield ack

        call = stub.Read(requests(), metadata=self.headers(command))

        def receive():
            try:
                for event in call:
                    events.put(("event", event))
                events.put(("ended", "OK"))
            except grpc.RpcError as error:
                events.put(("ended", error.code().name))

        threading.Thread(target=receive, daemon=True).start()
        self.streams[command["stream"]] = (call, acks, events)
        return {"ok": True}

    def read_next(self, command):
        _, _, events = self.streams[command["stream"]]
        try:
            kind, value = events.get(timeout=command.get("timeout", 10))
        except queue.Empty:
            return {"timeout": True}
        if kind == "ended":
            return {"ended": value}
        return {
            "message_id": value.message_id,
            "data": value.data.decode(errors="replace"),
            "metadata": dict(value.metadata),
            "content_type": value.content_type,
        }

    def ack(self, command):
        _, acks, _ = self.streams[command["stream"]]
        request = self.pb.ReadRequest(message_id=command["message_id"])
        if "response_data" in command:
            request.response_data = command["response_data"].encode()
        if "error" in command:
            request.response_error.message = command["error"]
        acks.put(request)
        return {"ok": True}

    def read_cancel(self, command):
        call, acks, _ = self.streams.pop(command["stream"])
        call.cancel()
        acks.put(None)
        return {"ok": True}

    def close(self, command):
        channel = self.channels.pop(command["conn"], None)
        if channel is not None:
            channel.close()
        return {"ok": True}


def main():
    standin = StandIn(sys.argv[1], sys.argv[2])
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        try:
            answer = getattr(standin, command["cmd"])(command)
        except grpc.RpcError as error:
            answer = {"code": error.code().name, "message": error.details()}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()

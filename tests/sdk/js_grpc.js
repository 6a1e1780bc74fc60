// Dapr's official JavaScript SDK (@dapr/dapr 3.18.0, gRPC) against `mqtt-binding run`, for
// the tests. The sidecar's gRPC port comes from DAPR_GRPC_PORT.
//
//   node js_grpc.js send BINDING JSON TOPIC   DaprClient.binding.send of the JSON value;
//                                             prints "ok"
//   node js_grpc.js serve PORT BINDING        a DaprServer on PORT receiving BINDING; prints
//                                             one JSON line per event
const { DaprClient, DaprServer, CommunicationProtocolEnum, LogLevel } = require("@dapr/dapr");

const daprHost = "127.0.0.1";
const daprPort = process.env.DAPR_GRPC_PORT;
const communicationProtocol = CommunicationProtocolEnum.GRPC;
// The SDK logs to stdout, where this script answers: errors only.
const logger = { level: LogLevel.Error };

async function send(binding, data, topic) {
  const client = new DaprClient({ daprHost, daprPort, communicationProtocol, logger });
  await client.binding.send(binding, "create", JSON.parse(data), { topic });
  console.log("ok");
  await client.stop();
}

async function serve(port, binding) {
  const server = new DaprServer({
    serverHost: "127.0.0.1",
    serverPort: port,
    communicationProtocol,
    clientOptions: { daprHost, daprPort, communicationProtocol, logger },
    logger,
  });
  await server.binding.receive(binding, async (data) => {
    console.log(JSON.stringify({ data }));
  });
  // The SDK's start waits for the sidecar (GetMetadata) before it listens.
  await server.start();
  console.log(JSON.stringify({ listening: Number(port) }));
}

const [command, ...args] = process.argv.slice(2);
const commands = { send, serve };
commands[command](...args).catch((error) => {
  console.log(`error: ${error}`);
  process.exit(1);
});

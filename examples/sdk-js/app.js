// An ordinary Dapr app using the official JavaScript SDK over HTTP: it receives the
// "orders" input binding and sends to the "orders" output binding.
const { DaprClient, DaprServer, CommunicationProtocolEnum } = require("@dapr/dapr");

async function main() {
  const daprPort = process.env.DAPR_HTTP_PORT || "3501";
  const received = [];
  const server = new DaprServer({
    serverHost: "127.0.0.1",
    serverPort: "5001",
    communicationProtocol: CommunicationProtocolEnum.HTTP,
    clientOptions: { daprHost: "127.0.0.1", daprPort },
  });
  await server.binding.receive("orders", async (data) => {
    console.log("SDK app received:", JSON.stringify(data));
    received.push(data);
  });
  await server.start();
  const client = new DaprClient({ daprHost: "127.0.0.1", daprPort, communicationProtocol: CommunicationProtocolEnum.HTTP });
  // Give the sidecar a moment to see the app's port, probe it and subscribe.
  await new Promise((r) => setTimeout(r, 1500));
  for (let order = 1; order <= 3; order++) {
    const response = await client.binding.send("orders", "create", { order, item: "pears" }, { topic: "orders/eu" });
    console.log("SDK app sent order", order, "response:", JSON.stringify(response));
  }
  const deadline = Date.now() + 10000;
  while (received.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  console.log(`SDK app: ${received.length} of 3 orders came back through the input binding`);
  await server.stop();
  process.exit(received.length === 3 ? 0 : 1);
}
main().catch((e) => { console.error(e); process.exit(2); });

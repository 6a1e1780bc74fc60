//! Replicas on a broker cluster: `mqtt-binding run` replicas sharing one input stream through
//! `sharedSubscriptionGroup`, on a real three-node clustered MQTT 5 broker (rmqtt with its
//! Raft cluster, built from tests/cluster-broker by `scripts/test`) and on a single mosquitto.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;
use rumqttc::v5::mqttbytes::v5;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::process::{Child, Command};

use crate::cli::{component_file, run};
use crate::sidecar::{App, Sidecar, binding_yaml};
use crate::support::{
    BrokerConfig, Mosquitto, Subscriber, WAIT, eventually, free_port, publish_all, unique,
};

/// How long a cluster may take to elect its leader and accept clients (5.5 to 8 s here).
const CLUSTER_START: Duration = Duration::from_secs(60);
/// How long the replicas may take over the whole stream.
const STREAM: Duration = Duration::from_secs(120);

/// The cluster broker: `$MQTT_BINDING_CLUSTER_BROKER`, else where `scripts/test` installs it.
fn cluster_broker() -> PathBuf {
    let path = std::env::var_os("MQTT_BINDING_CLUSTER_BROKER")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| {
                PathBuf::from(home).join(".cache/mqtt-binding/tools/bin/cluster-broker")
            })
        })
        .expect("HOME or MQTT_BINDING_CLUSTER_BROKER is set");
    assert!(
        path.exists(),
        "{} is missing: ./scripts/test builds it from tests/cluster-broker, or set MQTT_BINDING_CLUSTER_BROKER",
        path.display()
    );
    path
}

/// One node of a [`Cluster`]: its configuration folder, its MQTT port, its process.
struct Node {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// Three rmqtt nodes forming one Raft cluster on loopback ports, configured as rmqtt's
/// `examples/cluster-raft-3` shows; killed on drop.
pub(crate) struct Cluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts three nodes with the Raft cluster and shared subscriptions, and waits until
    /// each accepts an MQTT connection (a node answers CONNACK "server unavailable" until
    /// the cluster has a leader).
    pub(crate) async fn start() -> Self {
        Self::start_nodes(3, &["rmqtt-cluster-raft", "rmqtt-shared-subscription"]).await
    }

    /// One rmqtt node alone, with only the plugins named (none: no shared subscriptions,
    /// which its MQTT 5 CONNACK then says).
    pub(crate) async fn single(plugins: &[&str]) -> Self {
        Self::start_nodes(1, plugins).await
    }

    async fn start_nodes(count: usize, plugins: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ids = 1..=count;
        let startups: Vec<String> = plugins.iter().map(|p| format!("{p:?}")).collect();
        let startups = startups.join(", ");
        let ports: Vec<(u16, u16, u16)> = ids
            .clone()
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let list = |pick: fn(&(u16, u16, u16)) -> u16| {
            let entries: Vec<String> = ids
                .clone()
                .zip(&ports)
                .map(|(id, ports)| format!("\"{id}@127.0.0.1:{}\"", pick(ports)))
                .collect();
            format!("[{}]", entries.join(", "))
        };
        let (grpc_addrs, raft_addrs) = (list(|p| p.1), list(|p| p.2));
        let mut nodes = Vec::new();
        for (id, (mqtt, grpc, raft)) in ids.zip(&ports) {
            let node_dir = dir.path().join(format!("node{id}"));
            let plugins = node_dir.join("plugins");
            std::fs::create_dir_all(&plugins).expect("node folder");
            // A session's queue holds up to 1,000 messages by default and drops the rest;
            // the replicas here may fall that far behind a publisher for a moment.
            let node = format!(
                "node.id = {id}\n\
                 rpc.server_addr = \"127.0.0.1:{grpc}\"\n\
                 log.to = \"console\"\n\
                 log.level = \"warn\"\n\
                 plugins.dir = \"{}\"\n\
                 plugins.default_startups = [{startups}]\n\
                 listener.tcp.external.addr = \"127.0.0.1:{mqtt}\"\n\
                 listener.tcp.external.allow_anonymous = true\n\
                 listener.tcp.external.max_mqueue_len = 100000\n\
                 listener.tcp.external.mqueue_rate_limit = \"100000,1s\"\n",
                plugins.display()
            );
            std::fs::write(node_dir.join("rmqtt.toml"), node).expect("rmqtt.toml");
            // leader_id: three nodes started together would otherwise each lead a cluster
            // of their own; grpc_reuseaddr lets a killed node's successor bind its port.
            let raft_plugin = format!(
                "node_grpc_addrs = {grpc_addrs}\n\
                 raft_peer_addrs = {raft_addrs}\n\
                 laddr = \"127.0.0.1:{raft}\"\n\
                 leader_id = 1\n\
                 node_grpc_client_timeout = \"2s\"\n\
                 raft.grpc_reuseaddr = true\n\
                 raft.proposal_batch_timeout = \"10ms\"\n"
            );
            std::fs::write(plugins.join("rmqtt-cluster-raft.toml"), raft_plugin)
                .expect("rmqtt-cluster-raft.toml");
            nodes.push(Node {
                dir: node_dir,
                port: *mqtt,
                child: None,
            });
        }
        let mut cluster = Self { nodes, _dir: dir };
        for node in 0..cluster.nodes.len() {
            cluster.spawn(node);
        }
        for node in 0..cluster.nodes.len() {
            cluster.wait_until_serving(node).await;
        }
        cluster
    }

    fn spawn(&mut self, node: usize) {
        let node = &mut self.nodes[node];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("node.log"))
            .expect("log file");
        let child = Command::new(cluster_broker())
            .args(["-f", "rmqtt.toml"])
            .current_dir(&node.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the cluster broker starts");
        node.child = Some(child);
    }

    /// Waits until `node` answers a CONNECT with success.
    async fn wait_until_serving(&self, node: usize) {
        let port = self.nodes[node].port;
        eventually(CLUSTER_START, async || {
            connects(port).await.map_err(|why| {
                format!(
                    "node {} on port {port} does not accept clients: {why}; its log:\n{}",
                    node + 1,
                    std::fs::read_to_string(self.nodes[node].dir.join("node.log"))
                        .unwrap_or_default()
                )
            })
        })
        .await;
    }

    /// Stops `node` at once (SIGKILL), as a crash would.
    pub(crate) async fn kill(&mut self, node: usize) {
        let mut child = self.nodes[node].child.take().expect("running");
        child.kill().await.expect("SIGKILL");
    }

    /// Starts killed nodes again (they rejoin the cluster empty) and waits until they
    /// accept clients: together, as a node serves only once a majority is up.
    pub(crate) async fn restart(&mut self, nodes: &[usize]) {
        for &node in nodes {
            self.spawn(node);
        }
        for &node in nodes {
            self.wait_until_serving(node).await;
        }
    }

    pub(crate) fn port(&self, node: usize) -> u16 {
        self.nodes[node].port
    }

    pub(crate) fn url(&self, node: usize) -> String {
        format!("tcp://127.0.0.1:{}", self.port(node))
    }
}

/// One MQTT connection attempt: `Ok` when the broker's CONNACK accepts it.
async fn connects(port: u16) -> Result<(), String> {
    let options = MqttOptions::new(format!("probe-{}", unique()), "127.0.0.1", port);
    let (client, mut eventloop) = AsyncClient::new(options, 1);
    let answer = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(error.to_string()),
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err("no CONNACK within 2 s".into()));
    if answer.is_ok() {
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    }
    answer
}

/// A replica: a sidecar with its own app, pod name and folder.
struct Replica {
    pod: String,
    app: App,
    app_port: u16,
    sidecar: Option<Sidecar>,
    _server: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl Replica {
    /// Starts `mqtt-binding run` as pod `pod`, with one input binding `orders` of `metadata`
    /// and `{podName}` in its client ID.
    async fn start(pod: &str, metadata: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let mut metadata = metadata.to_vec();
        metadata.push(("consumerID", "orders-{podName}"));
        std::fs::write(
            dir.path().join("orders.yaml"),
            binding_yaml("orders", &metadata, None),
        )
        .expect("write");
        let app_port = free_port();
        let (app, server) = App::serve(app_port, StatusCode::OK, 0).await;
        let mut replica = Self {
            pod: pod.to_string(),
            app,
            app_port,
            sidecar: None,
            _server: server,
            dir,
        };
        replica.restart().await;
        replica
    }

    /// Starts the sidecar (again), as the same pod with the same app.
    async fn restart(&mut self) {
        let sidecar = Sidecar::start(
            self.dir.path(),
            Some(self.app_port),
            &[("POD_NAME", self.pod.as_str())],
        )
        .await;
        self.sidecar = Some(sidecar);
    }

    /// The bodies the app has accepted so far.
    fn bodies(&self) -> Vec<String> {
        self.app
            .calls()
            .into_iter()
            .map(|(_, _, body)| String::from_utf8(body).expect("UTF-8 bodies"))
            .collect()
    }
}

/// Publishes probes, one at a time and round-robin over `ports`, until every replica's app
/// has received one more than it had: each replica's subscription is then in force wherever
/// it is published, and what its session queued before has been sent to it.
async fn wait_until_every_replica_is_in_the_group(
    replicas: &[Replica],
    ports: &[u16],
    topic: &str,
) {
    let before: Vec<usize> = replicas.iter().map(probes).collect();
    let mut sent = 0;
    eventually(STREAM, async || {
        publish_all(
            ports[sent % ports.len()],
            topic,
            QoS::AtLeastOnce,
            &[format!("probe {sent}").into_bytes()],
        )
        .await;
        sent += 1;
        let reached: Vec<bool> = replicas
            .iter()
            .zip(&before)
            .map(|(replica, before)| probes(replica) > *before)
            .collect();
        if reached.iter().all(|&r| r) {
            return Ok(());
        }
        Err(format!(
            "after {sent} probes, replicas reached: {reached:?}"
        ))
    })
    .await;
}

/// The numbered messages (not probes) each replica's app accepted.
fn numbers(replica: &Replica) -> Vec<u32> {
    replica
        .bodies()
        .iter()
        .filter(|body| !body.starts_with("probe"))
        .map(|body| body.parse().expect("a number"))
        .collect()
}

/// Three replicas, replica `i` connected to `urls[i]`, in one group; `count` QoS 1 messages
/// published round-robin to `ports`: each reaches exactly one replica's app, and every replica
/// takes a fair part.
async fn replicas_split_the_stream(urls: [String; 3], ports: [u16; 3], version: &str) {
    let topic = format!("orders/{}", unique());
    let group = "orders";
    let mut replicas = Vec::new();
    for (n, url) in urls.iter().enumerate() {
        let metadata = [
            ("url", url.as_str()),
            ("topic", &topic),
            ("qos", "1"),
            ("protocolVersion", version),
            ("sharedSubscriptionGroup", group),
        ];
        replicas.push(Replica::start(&format!("orders-{n}"), &metadata).await);
    }
    wait_until_every_replica_is_in_the_group(&replicas, &ports, &topic).await;

    let count: u32 = 3_000;
    let started = tokio::time::Instant::now();
    let publishers: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(node, &port)| {
            let topic = topic.clone();
            let payloads: Vec<Vec<u8>> = (0..count)
                .filter(|n| *n as usize % ports.len() == node)
                .map(|n| n.to_string().into_bytes())
                .collect();
            tokio::spawn(
                async move { publish_all(port, &topic, QoS::AtLeastOnce, &payloads).await },
            )
        })
        .collect();
    for publisher in publishers {
        publisher.await.expect("the publisher finished");
    }
    eventually(STREAM, async || {
        let delivered: usize = replicas.iter().map(|r| numbers(r).len()).sum();
        if delivered >= count as usize {
            return Ok(());
        }
        Err(format!("{delivered} of {count} delivered"))
    })
    .await;
    let took = started.elapsed();
    // Stopped before counting, so that a late duplicate would be counted too.
    for replica in &mut replicas {
        let sidecar = replica.sidecar.take().expect("running");
        assert!(
            sidecar.terminate().await.success(),
            "the replica stops cleanly"
        );
    }

    let shares: Vec<usize> = replicas.iter().map(|r| numbers(r).len()).collect();
    let mut times_seen: BTreeMap<u32, usize> = BTreeMap::new();
    for n in replicas.iter().flat_map(numbers) {
        *times_seen.entry(n).or_default() += 1;
    }
    let duplicated: Vec<_> = times_seen.iter().filter(|(_, t)| **t > 1).collect();
    assert!(
        duplicated.is_empty(),
        "delivered more than once: {duplicated:?}"
    );
    assert_eq!(
        times_seen.keys().copied().collect::<Vec<_>>(),
        (0..count).collect::<Vec<_>>(),
        "every message reached one replica"
    );
    eprintln!(
        "{count} QoS 1 messages over three replicas ({version}) in {took:?}: shares {shares:?}"
    );
    // A share group spreads messages over its members (round-robin in both brokers here);
    // none may be left idle or take nearly everything.
    for share in &shares {
        assert!(
            (count as usize / 6..=count as usize * 2 / 3).contains(share),
            "each replica takes a fair part of the stream: {shares:?}"
        );
    }
}

/// Three replicas, each connected to a different node of a clustered broker, share one
/// stream published to all three nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_a_cluster_share_one_stream_exactly_once() {
    let cluster = Cluster::start().await;
    replicas_split_the_stream(
        [cluster.url(0), cluster.url(1), cluster.url(2)],
        [cluster.port(0), cluster.port(1), cluster.port(2)],
        "5",
    )
    .await;
}

/// The same on one mosquitto, which honours `$share` at MQTT 3.1.1 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_mosquitto_share_one_stream_exactly_once() {
    // As on the cluster, a session's queue (1,000 messages by default, the rest dropped)
    // must hold what a replica may fall behind.
    let broker = Mosquitto::start_with(BrokerConfig {
        extra: "max_queued_messages 100000\n".into(),
        ..Default::default()
    });
    replicas_split_the_stream(
        [broker.url(), broker.url(), broker.url()],
        [broker.port; 3],
        "3.1.1",
    )
    .await;
}

/// What the taps between the replicas and the nodes saw, in order of arrival.
#[derive(Default)]
struct Ledger {
    /// Payloads whose PUBACK a replica sent: the messages the binding told the broker were
    /// handled.
    acknowledged: Vec<String>,
    /// CONNACKs, as (replica, node, reason code, when).
    connacks: Vec<(usize, usize, u8, tokio::time::Instant)>,
    /// Per live connection: the messages the broker sent it that it has not acknowledged.
    outstanding: BTreeMap<u64, BTreeMap<u16, String>>,
}

/// A TCP relay between one replica and one node that reads the MQTT 5 packets going by
/// (without changing a byte) and writes what matters into the shared [`Ledger`]: the
/// evidence, independent of the binding, of what it acknowledged. Stops on drop.
struct Tap {
    port: u16,
    accept: tokio::task::JoinHandle<()>,
}

impl Tap {
    async fn start(replica: usize, node: usize, upstream: u16, ledger: Arc<Mutex<Ledger>>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the tap listens");
        let port = listener.local_addr().expect("tap address").port();
        let accept = tokio::spawn(async move {
            let mut relays = tokio::task::JoinSet::new();
            let mut connections = 0u64;
            while let Ok((client, _)) = listener.accept().await {
                connections += 1;
                // Unique over all taps: replica, node, connection.
                let id = (replica as u64) << 48 | (node as u64) << 40 | connections;
                relays.spawn(tap_relay(
                    client,
                    upstream,
                    id,
                    replica,
                    node,
                    ledger.clone(),
                ));
            }
        });
        Self { port, accept }
    }

    fn url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Relays one connection; a node that is gone closes the replica's side at once.
async fn tap_relay(
    client: tokio::net::TcpStream,
    upstream: u16,
    id: u64,
    replica: usize,
    node: usize,
    ledger: Arc<Mutex<Ledger>>,
) {
    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let to_replica = |packet: Seen, ledger: &mut Ledger| match packet {
        Seen::ConnAck(code) => {
            ledger
                .connacks
                .push((replica, node, code, tokio::time::Instant::now()));
            if code == 0 {
                ledger.outstanding.insert(id, BTreeMap::new());
            }
        }
        Seen::Publish(pkid, body) => {
            ledger.outstanding.entry(id).or_default().insert(pkid, body);
        }
        Seen::PubAck(_) => {}
    };
    let to_node = |packet: Seen, ledger: &mut Ledger| {
        if let Seen::PubAck(pkid) = packet {
            let sent = ledger
                .outstanding
                .get_mut(&id)
                .and_then(|o| o.remove(&pkid));
            if let Some(body) = sent {
                ledger.acknowledged.push(body);
            }
        }
    };
    tokio::select! {
        _ = tap_pump(client_read, server_write, &ledger, to_node) => {}
        _ = tap_pump(server_read, client_write, &ledger, to_replica) => {}
    }
    // The connection is gone: what it still owed is the broker's to send again, or lose.
    lock(&ledger).outstanding.remove(&id);
}

async fn tap_pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    ledger: &Mutex<Ledger>,
    seen: impl Fn(Seen, &mut Ledger),
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut bytes = bytes::BytesMut::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        bytes.extend_from_slice(&buffer[..read]);
        // Recorded before it is passed on: an acknowledgement is in the ledger before the
        // broker can act on it.
        while let Some((header, length)) =
            frame_length(&bytes).filter(|(_, length)| bytes.len() >= *length)
        {
            let mut frame = bytes.split_to(length);
            let packet = match frame[0] >> 4 {
                // CONNACK: flags, then the reason code.
                2 => Seen::ConnAck(frame[header + 1]),
                3 | 4 => match v5::Packet::read(&mut frame, None) {
                    Ok(v5::Packet::Publish(publish)) if publish.pkid != 0 => Seen::Publish(
                        publish.pkid,
                        String::from_utf8_lossy(&publish.payload).into_owned(),
                    ),
                    Ok(v5::Packet::PubAck(puback)) => Seen::PubAck(puback.pkid),
                    Ok(_) => continue,
                    Err(error) => panic!("the tap cannot read an MQTT 5 packet: {error}"),
                },
                _ => continue,
            };
            seen(packet, &mut lock(ledger));
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// A packet the ledger is about. QoS 0 messages (no packet id) are not.
enum Seen {
    ConnAck(u8),
    Publish(u16, String),
    PubAck(u16),
}

/// The lengths of the fixed header and of the whole MQTT packet at the start of `bytes`
/// (the header's remaining length is a variable-length integer), once that header is in.
fn frame_length(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut remaining = 0usize;
    for (n, byte) in bytes.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7f) << (7 * n);
        if byte & 0x80 == 0 {
            let header = 1 + (n + 1);
            return Some((header, header + remaining));
        }
    }
    None
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A subscriber outside the group, with a persistent session on one node, that records
/// every message the cluster accepted; it reconnects if its connection breaks.
struct Witness {
    /// Kept: the event loop stops once every client handle is gone.
    _client: AsyncClient,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Witness {
    async fn start(port: u16, topic: &str) -> Self {
        let mut options = MqttOptions::new(format!("witness-{}", unique()), "127.0.0.1", port);
        options.set_clean_session(false);
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let seen = seen.clone();
            async move {
                let mut subscribed = Some(subscribed_tx);
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(subscribed) = subscribed.take() {
                                let _ = subscribed.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(publish))) => {
                            lock(&seen).push(String::from_utf8_lossy(&publish.payload).into_owned())
                        }
                        Ok(_) => {}
                        // rumqttc reconnects on the next poll; the session keeps the rest.
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
            }
        });
        tokio::time::timeout(CLUSTER_START, subscribed_rx)
            .await
            .expect("the witness got its SUBACK")
            .expect("the witness task is running");
        Self {
            _client: client,
            seen,
            task,
        }
    }

    fn seen(&self) -> Vec<String> {
        lock(&self.seen).clone()
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Publishes `payloads` to `port` at QoS 1, one every `pace`, and waits for every PUBACK.
async fn publish_paced(port: u16, topic: String, payloads: Vec<String>, pace: Duration) {
    let mut options = MqttOptions::new(format!("pub-{}", unique()), "127.0.0.1", port);
    options.set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let expected = payloads.len();
    let sending = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(pace);
        for payload in payloads {
            ticks.tick().await;
            client
                .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                .await
                .expect("publish queued");
        }
        client
    });
    let mut acknowledged = 0;
    tokio::time::timeout(STREAM, async {
        while acknowledged < expected {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop
                .poll()
                .await
                .expect("the publisher's node stays up")
            {
                acknowledged += 1;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the cluster acknowledged {acknowledged} of {expected} messages"));
    let client = sending.await.expect("the sender finished");
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
}

/// Three replicas with persistent sessions, each connected to its own node first and to the
/// others after it (`url` lists all three, through taps that record what each replica
/// acknowledged); 3,000 QoS 1 messages published over a few seconds to the two nodes that
/// stay up. Mid-stream one replica is killed (-9) and started again, then the node another
/// replica is connected to (the Raft leader) is killed: that replica fails over through its
/// `url` list, past the survivors' CONNACK "server unavailable" while they elect a leader.
/// An independent witness (a subscriber outside the group, on a surviving node) sees every
/// message the cluster accepted. The binding must not lose one it acknowledged; what the
/// broker loses (messages it had routed to the dead node, and that node's sessions) is
/// counted apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_and_a_killed_node_lose_nothing_the_binding_acknowledged() {
    let mut cluster = Cluster::start().await;
    let topic = format!("orders/{}", unique());
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut taps = Vec::new();
    let mut replicas = Vec::new();
    for replica in 0..3 {
        let mut urls = Vec::new();
        for node in (0..3).map(|k| (replica + k) % 3) {
            let tap = Tap::start(replica, node, cluster.port(node), ledger.clone()).await;
            urls.push(tap.url());
            taps.push(tap);
        }
        let url = urls.join(",");
        let metadata = [
            ("url", url.as_str()),
            ("topic", &topic),
            ("qos", "1"),
            ("protocolVersion", "5"),
            ("sharedSubscriptionGroup", "orders"),
            ("cleanSession", "false"),
        ];
        replicas.push(Replica::start(&format!("orders-{replica}"), &metadata).await);
    }
    let (survivors, doomed, restarted) = ([cluster.port(1), cluster.port(2)], 0, 1);
    let witness = Witness::start(survivors[0], &topic).await;
    wait_until_every_replica_is_in_the_group(&replicas, &survivors, &topic).await;

    let count = 3_000;
    let delivered = |replicas: &[Replica]| replicas.iter().map(|r| numbers(r).len()).sum::<usize>();
    let publishers: Vec<_> = survivors
        .iter()
        .enumerate()
        .map(|(k, &port)| {
            let payloads = (0..count)
                .filter(|n| n % survivors.len() == k)
                .map(|n| n.to_string())
                .collect();
            tokio::spawn(publish_paced(
                port,
                topic.clone(),
                payloads,
                Duration::from_millis(5),
            ))
        })
        .collect();

    // A replica crashes and is started again (its session, on a node that stays up, holds
    // what it had not acknowledged).
    eventually(STREAM, async || match delivered(&replicas) {
        n if n >= count / 5 => Ok(()),
        n => Err(format!("{n} delivered before the replica kill")),
    })
    .await;
    replicas[restarted]
        .sidecar
        .take()
        .expect("running")
        .kill()
        .await;
    let replica_killed = tokio::time::Instant::now();
    let before_restart = numbers(&replicas[restarted]).len();
    replicas[restarted].restart().await;
    let restart_took = replica_killed.elapsed();

    // A node crashes: the leader, to which replica `doomed` is connected.
    eventually(STREAM, async || match delivered(&replicas) {
        n if n >= count / 2 => Ok(()),
        n => Err(format!("{n} delivered before the node kill")),
    })
    .await;
    cluster.kill(doomed).await;
    let node_killed = tokio::time::Instant::now();

    for publisher in publishers {
        publisher.await.expect("the publisher finished");
    }
    // The survivors answer new clients "server unavailable" until they have elected a new
    // leader (seconds, more on a busy machine); the probes below are such clients.
    for node in 0..3 {
        if node != doomed {
            cluster.wait_until_serving(node).await;
        }
    }
    // Every replica still in the group gets a probe published after the stream: what its
    // session queued before has been sent to it by then. Then nothing is left in flight.
    wait_until_every_replica_is_in_the_group(&replicas, &survivors, &topic).await;
    eventually(STREAM, async || {
        let ledger = lock(&ledger);
        let owed: usize = ledger.outstanding.values().map(BTreeMap::len).sum();
        if owed == 0 {
            return Ok(());
        }
        Err(format!(
            "{owed} messages sent to replicas and not yet acknowledged"
        ))
    })
    .await;
    for replica in &mut replicas {
        let sidecar = replica.sidecar.take().expect("running");
        assert!(
            sidecar.terminate().await.success(),
            "the replica stops cleanly"
        );
    }

    let (ledger, witnessed) = (lock(&ledger), witness.seen());
    let mut times: BTreeMap<u32, usize> = BTreeMap::new();
    for n in replicas.iter().flat_map(numbers) {
        *times.entry(n).or_default() += 1;
    }
    let numbered = |bodies: &[String]| -> std::collections::BTreeSet<u32> {
        bodies.iter().filter_map(|b| b.parse().ok()).collect()
    };
    let (witnessed, acknowledged) = (numbered(&witnessed), numbered(&ledger.acknowledged));
    let lost: Vec<u32> = witnessed
        .iter()
        .copied()
        .filter(|n| !times.contains_key(n))
        .collect();
    let lost_by_binding: Vec<u32> = lost
        .iter()
        .copied()
        .filter(|n| acknowledged.contains(n))
        .collect();
    let duplicated = times.values().filter(|t| **t > 1).count();
    let unavailable = ledger
        .connacks
        .iter()
        .filter(|(_, _, code, _)| matches!(code, 0x88 | 0x89))
        .count();
    let failed_over = ledger
        .connacks
        .iter()
        .find(|(replica, node, code, at)| {
            *replica == doomed && *node != doomed && *code == 0 && *at > node_killed
        })
        .map(|(_, _, _, at)| *at - node_killed);
    let back = replicas[restarted]
        .app
        .calls()
        .len()
        .saturating_sub(before_restart);
    eprintln!(
        "{count} published, {} witnessed, {} delivered ({duplicated} more than once), lost by the broker {}, lost by the binding {}; \
         {unavailable} CONNACK 0x88/0x89 met; the killed replica served again {restart_took:?} after its kill and took {back} more; \
         failed over {failed_over:?} after the node kill",
        witnessed.len(),
        times.len(),
        lost.len() - lost_by_binding.len(),
        lost_by_binding.len(),
    );
    for (replica, node, code, at) in &ledger.connacks {
        if *at > node_killed {
            eprintln!(
                "after the node kill: replica {replica} node {node} CONNACK {code:#04x} at {:?}",
                *at - node_killed
            );
        }
    }
    assert!(
        lost_by_binding.is_empty(),
        "acknowledged by the binding, never accepted by an app: {lost_by_binding:?}"
    );
    assert_eq!(
        witnessed.len(),
        count,
        "the witness saw every message the cluster accepted"
    );
    assert!(
        failed_over.is_some(),
        "replica {doomed} never connected to another node after its node was killed: {:?}",
        ledger.connacks
    );
    assert!(back > 0, "the restarted replica took part again");
}

fn probes(replica: &Replica) -> usize {
    replica
        .bodies()
        .iter()
        .filter(|body| body.starts_with("probe"))
        .count()
}

/// A node cut off from the rest of its cluster answers every CONNECT with CONNACK 0x88
/// "server unavailable" (as the survivors of a leader's death do for a few seconds). The
/// binding takes that as "not now": it moves on to the next broker of its `url` list, and
/// with no other broker it keeps retrying until the cluster is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_unavailable_moves_on_to_the_next_broker_and_is_retried() {
    let mut cluster = Cluster::start().await;
    let (cut_off, others) = (1, [0, 2]);
    for node in others {
        cluster.kill(node).await;
    }
    let port = cluster.port(cut_off);
    eventually(CLUSTER_START, async || match connects(port).await {
        Err(why) if why.contains("ServiceUnavailable") => Ok(()),
        other => Err(format!("node {} still answers {other:?}", cut_off + 1)),
    })
    .await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let tap = Tap::start(0, cut_off, port, ledger.clone()).await;

    // Output: published to the next broker of the list.
    let broker = Mosquitto::start();
    let topic = format!("orders/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("{},{}", tap.url(), broker.url());
    let file = component_file(
        dir.path(),
        "orders",
        &[
            ("url", &url),
            ("topic", &topic),
            ("protocolVersion", "5"),
            ("qos", "1"),
        ],
    );
    let published = run(&[
        "invoke",
        "--component",
        file.to_str().expect("path"),
        "--data",
        "x",
    ])
    .await;
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    assert_eq!(&subscriber.next().await.payload[..], b"x");
    let refusals: Vec<u8> = lock(&ledger).connacks.iter().map(|c| c.2).collect();
    assert_eq!(
        refusals,
        [0x88],
        "the cut-off node was asked first and said no"
    );

    // Input, with that node alone: retried until the node is back in its cluster.
    let replica = Replica::start(
        "orders-0",
        &[
            ("url", &tap.url()),
            ("topic", &topic),
            ("protocolVersion", "5"),
            ("qos", "1"),
        ],
    )
    .await;
    let sidecar = replica.sidecar.as_ref().expect("running");
    eventually(WAIT, async || {
        let response = sidecar
            .client
            .get(sidecar.url("/v1.0/healthz"))
            .send()
            .await
            .expect("the sidecar answers");
        let body = response.text().await.unwrap_or_default();
        if body.contains("reason code 0x88, server unavailable") {
            return Ok(());
        }
        Err(format!("/v1.0/healthz says {body:?}"))
    })
    .await;
    // Its cluster back: the operator restarts it with the others (Raft state is in memory,
    // and a lone survivor with two empty peers does not elect a leader).
    cluster.kill(cut_off).await;
    cluster.restart(&[0, 1, 2]).await;
    sidecar.healthy().await;
    publish_all(port, &topic, QoS::AtLeastOnce, &[b"after".to_vec()]).await;
    eventually(WAIT, async || match replica.bodies().as_slice() {
        [only] if only == "after" => Ok(()),
        other => Err(format!("the app got {other:?}")),
    })
    .await;
}

/// A broker whose MQTT 5 CONNACK says it has no shared subscriptions (rmqtt without its
/// shared-subscription plugin) fails a binding with a share group at init, naming the
/// field; the same binding without the group works.
#[tokio::test]
async fn a_broker_without_shared_subscriptions_fails_init_naming_the_group() {
    let node = Cluster::single(&[]).await;
    let dir = tempfile::tempdir().expect("dir");
    let topic = format!("orders/{}", unique());
    let metadata = |group: Option<&str>| {
        let mut metadata = vec![
            ("url", node.url(0)),
            ("topic", topic.clone()),
            ("protocolVersion", "5".to_string()),
        ];
        metadata.extend(group.map(|g| ("sharedSubscriptionGroup", g.to_string())));
        metadata
    };
    let invoke = async |metadata: Vec<(&str, String)>| {
        let pairs: Vec<(&str, &str)> = metadata.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let file = component_file(dir.path(), "orders", &pairs);
        run(&[
            "invoke",
            "--component",
            file.to_str().expect("path"),
            "--data",
            "x",
        ])
        .await
    };
    let refused = invoke(metadata(Some("orders"))).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(r#"metadata field "sharedSubscriptionGroup": the broker does not take shared subscriptions (its MQTT 5 CONNACK says Shared Subscription Available = 0)"#),
        "{stderr}"
    );
    let published = invoke(metadata(None)).await;
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
}

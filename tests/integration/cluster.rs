//! Replicas on a broker cluster: `mqtt-binding run` replicas sharing one input stream through
//! `sharedSubscriptionGroup`, on a real three-node clustered MQTT 5 broker (rmqtt with its
//! Raft cluster, built from tests/cluster-broker by `scripts/test`) and on a single mosquitto.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use axum::http::StatusCode;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::process::{Child, Command};

use crate::sidecar::{App, Sidecar, binding_yaml};
use crate::support::{BrokerConfig, Mosquitto, eventually, free_port, publish_all, unique};

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
    /// Starts three nodes and waits until each accepts an MQTT connection (a node answers
    /// CONNACK "server unavailable" until the cluster has a leader).
    pub(crate) async fn start() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ids = 1..=3;
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
                 plugins.default_startups = [\"rmqtt-cluster-raft\", \"rmqtt-shared-subscription\"]\n\
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
    app: App,
    sidecar: Option<Sidecar>,
    _server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Replica {
    /// Starts `mqtt-binding run` as pod `pod`, with one input binding on `url` in `group`.
    async fn start(pod: &str, url: &str, topic: &str, group: &str, version: &str) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(
            dir.path().join("orders.yaml"),
            binding_yaml(
                "orders",
                &[
                    ("url", url),
                    ("topic", topic),
                    ("qos", "1"),
                    ("protocolVersion", version),
                    ("sharedSubscriptionGroup", group),
                    ("consumerID", "orders-{podName}"),
                ],
                None,
            ),
        )
        .expect("write");
        let app_port = free_port();
        let (app, server) = App::serve(app_port, StatusCode::OK, 0).await;
        let sidecar = Sidecar::start(dir.path(), Some(app_port), &[("POD_NAME", pod)]).await;
        Self {
            app,
            sidecar: Some(sidecar),
            _server: server,
            _dir: dir,
        }
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
/// has received one: each replica's subscription is then in force wherever it is published.
async fn wait_until_every_replica_is_in_the_group(
    replicas: &[Replica],
    ports: &[u16],
    topic: &str,
) {
    let mut sent = 0;
    eventually(CLUSTER_START, async || {
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
            .map(|replica| replica.bodies().iter().any(|b| b.starts_with("probe")))
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
        replicas.push(Replica::start(&format!("orders-{n}"), url, &topic, group, version).await);
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

//! One node of a clustered MQTT 5 broker, for the tests of replicas on a broker cluster:
//! rmqtt with its Raft cluster and shared-subscription plugins, and nothing else (the
//! published `rmqttd` links every bridge plugin, Kafka's C library included). Modelled on
//! rmqttd's `server.rs`: `cluster-broker -f NODE.toml`, one process per node, each file
//! naming its node ID, its gRPC and MQTT addresses and its plugin folder (see
//! tests/integration/cluster.rs, which writes them).

use anyhow::{Context as _, anyhow};
use clap::Parser as _;
use rmqtt::args::CommandArgs;
use rmqtt::context::ServerContext;
use rmqtt::net::Builder;
use rmqtt::node::Node;
use rmqtt::server::MqttServer;
use rmqtt_conf::listener::Listener;
use rmqtt_conf::{Options, Settings};

const RAFT: &str = "rmqtt-cluster-raft";
const SHARED_SUBSCRIPTION: &str = "rmqtt-shared-subscription";

#[tokio::main]
async fn main() {
    if let Err(error) = run().await {
        eprintln!("cluster-broker: {error:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let options = Options::parse();
    let config = options
        .cfg_name
        .clone()
        .ok_or_else(|| anyhow!("usage: cluster-broker -f NODE.toml"))?;
    // rmqtt ignores a configuration file that is not there; we do not.
    anyhow::ensure!(
        std::path::Path::new(&config).is_file(),
        "{config}: no such configuration file"
    );
    let settings = Settings::init(options).map_err(|error| anyhow!("reading {config}: {error}"))?;
    let node = Node::new(
        settings.node.id,
        settings.node.busy.loadavg,
        settings.node.busy.cpuloadavg,
        settings.node.busy.update_interval,
    );
    let scx = ServerContext::new()
        .args(CommandArgs {
            node_id: settings.opts.node_id,
            plugins_default_startups: settings.opts.plugins_default_startups.clone(),
            node_grpc_addrs: settings.opts.node_grpc_addrs.clone(),
            raft_peer_addrs: settings.opts.raft_peer_addrs.clone(),
            raft_leader_id: settings.opts.raft_leader_id,
        })
        .node(node)
        .task_exec_workers(settings.task.exec_workers)
        .task_exec_queue_max(settings.task.exec_queue_max)
        .busy_check_enable(settings.node.busy.check_enable)
        .busy_handshaking_limit(settings.node.busy.handshaking)
        .mqtt_max_sessions(settings.mqtt.max_sessions)
        .plugins_config_dir(settings.plugins.dir.as_str())
        .build()
        .await;
    scx.node.start_grpc_server(
        scx.clone(),
        settings.rpc.server_addr,
        settings.rpc.reuseaddr,
        settings.rpc.reuseport,
    );
    for plugin in [RAFT, SHARED_SUBSCRIPTION] {
        let start = settings
            .plugins
            .default_startups
            .iter()
            .any(|p| p == plugin);
        let registered = match plugin {
            RAFT => rmqtt_cluster_raft::register_named(&scx, RAFT, start, false).await,
            _ => {
                rmqtt_shared_subscription::register_named(&scx, SHARED_SUBSCRIPTION, start, false)
                    .await
            }
        };
        registered.map_err(|error| anyhow!("registering the {plugin} plugin: {error}"))?;
    }

    let mut server = MqttServer::new(scx);
    for listener in Settings::instance().listeners.tcps.values() {
        let bound = builder(listener)
            .bind()
            .and_then(|bound| bound.tcp())
            .map_err(|error| anyhow!("listening on {}: {error}", listener.addr))?;
        server = server.listener(bound);
    }
    server.build().start();

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    std::process::exit(0);
}

/// An MQTT listener as its configuration section says.
fn builder(listener: &Listener) -> Builder {
    Builder::new()
        .name(listener.name.as_str())
        .laddr(listener.addr)
        .max_connections(listener.max_connections)
        .max_handshaking_limit(listener.max_handshaking_limit)
        .max_packet_size(listener.max_packet_size.as_u32())
        .backlog(listener.backlog)
        .nodelay(listener.nodelay)
        .reuseaddr(listener.reuseaddr)
        .reuseport(listener.reuseport)
        .tcp_keepalive(listener.tcp_keepalive)
        .allow_anonymous(listener.allow_anonymous)
        .min_keepalive(listener.min_keepalive)
        .max_keepalive(listener.max_keepalive)
        .allow_zero_keepalive(listener.allow_zero_keepalive)
        .keepalive_backoff(listener.keepalive_backoff)
        .max_inflight(listener.max_inflight)
        .handshake_timeout(listener.handshake_timeout)
        .max_mqueue_len(listener.max_mqueue_len)
        .mqueue_rate_limit(listener.mqueue_rate_limit.0, listener.mqueue_rate_limit.1)
        .max_clientid_len(listener.max_clientid_len)
        .max_qos_allowed(listener.max_qos_allowed)
        .max_topic_levels(listener.max_topic_levels)
        .session_expiry_interval(listener.session_expiry_interval)
        .max_session_expiry_interval(listener.max_session_expiry_interval)
        .message_retry_interval(listener.message_retry_interval)
        .message_expiry_interval(listener.message_expiry_interval)
        .max_subscriptions(listener.max_subscriptions)
        .max_topic_aliases(listener.max_topic_aliases)
        .limit_subscription(listener.limit_subscription)
        .idle_timeout(listener.idle_timeout)
}

//! The `mqtt-binding` command: parses flags into a validated request, calls the library,
//! prints the whole error chain and picks the exit code.

mod demo;
mod json_log;
mod read;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use mqtt_binding::component_file;
use mqtt_binding::{BindingOptions, ComponentSource, InvokeRequest, Runtime, RuntimeOptions};
use mqtt_binding_cli::args::{InvokeArgs, ReadArgs};
use tokio::io::AsyncWriteExt as _;

/// Dapr's MQTT binding as a sandboxed WebAssembly component.
#[derive(Parser)]
#[command(name = "mqtt-binding", version)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(flatten)]
    sandbox: Sandbox,
    #[command(subcommand)]
    command: Command,
}

/// Options of every command.
#[derive(Args)]
#[command(next_help_heading = "Global options")]
struct Global {
    /// Run this component file instead of the one built into this program.
    #[arg(long, global = true, value_name = "PATH")]
    wasm: Option<PathBuf>,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive.
    #[arg(long, global = true, default_value = "warn", env = "MQTT_BINDING_LOG")]
    log_level: String,
    /// Worker threads of the async runtime: 1 (the default) runs everything on one thread,
    /// which gives the lowest latency on small machines; more spread bindings and requests
    /// over that many threads.
    #[arg(long, global = true, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// Write logs as JSON, one object per line, with daprd's keys (time, level, msg, scope,
    /// app_id, …) and each event's fields.
    #[arg(long, global = true)]
    log_as_json: bool,
    /// Compile the component every time instead of caching compiled code.
    #[arg(long, global = true)]
    no_cache: bool,
}

/// What each binding's component may do (README, "Sandbox").
#[derive(Args)]
#[command(next_help_heading = "Sandbox, per binding")]
struct Sandbox {
    /// Allow the component to connect to this broker only (repeatable): HOST, HOST:PORT,
    /// *.DOMAIN[:PORT] or [IPV6]:PORT, matched against the host as the metadata names it.
    /// Without it, any broker is allowed, as in Dapr.
    #[arg(long = "allow-broker", global = true, value_name = "HOST[:PORT]")]
    allow_broker: Vec<mqtt_binding::AllowedBroker>,
    /// How long the component may compute without calling the host before it is stopped
    /// (waiting inside host calls does not count), e.g. 1s or 500ms; `off` for none (then
    /// a component that loops holds the process: only for a component you trust).
    // The full path keeps clap from treating the flag as optional: `off` is the `None`.
    #[arg(long, global = true, value_name = "DURATION", default_value = "1s", value_parser = cpu_budget)]
    cpu_budget: ::std::option::Option<std::time::Duration>,
    /// Most linear memory one instance of the component may use, in MiB.
    #[arg(long, global = true, value_name = "MIB", default_value_t = 256)]
    max_memory_mib: usize,
    /// Most handles (connections, payloads) one instance may hold at once.
    #[arg(long, global = true, value_name = "N", default_value_t = 1024)]
    max_handles: usize,
    /// Log lines a binding's component may write per second; more are dropped and counted.
    #[arg(long, global = true, value_name = "N", default_value_t = 100)]
    max_log_lines_per_second: u32,
}

#[derive(Subcommand)]
enum Command {
    /// Load a Dapr Component file, run one output binding request and exit.
    Invoke(InvokeArgs),
    /// Run the input binding, writing each message to stdout as one JSON line.
    Read(ReadArgs),
    /// Run as a Dapr sidecar for the MQTT bindings of a resources folder (daprd's flags).
    Run(RunArgs),
    /// Serve the binding to a daprd as a pluggable component, on a Unix socket.
    Pluggable(PluggableArgs),
    /// Start an embedded broker, run the binding both ways and show what arrives.
    Demo,
    /// Write the binding as one component that any WASI runtime runs (wasmtime, jco), with
    /// `invoke` and `read` as this command has them.
    #[cfg(feature = "portable")]
    Portable(PortableArgs),
}

#[derive(Args)]
#[cfg(feature = "portable")]
struct PortableArgs {
    /// Where to write the component (a .wasm file).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args)]
struct RunArgs {
    /// Folder of Dapr Component YAML files (bindings.mqtt and secret stores).
    #[arg(long, value_name = "DIR", alias = "components-path")]
    resources_path: PathBuf,
    /// The application ID: the default MQTT client ID of every binding (required, as in
    /// self-hosted daprd).
    #[arg(long, value_name = "ID")]
    app_id: String,
    /// The port the application listens on for input binding events.
    #[arg(long, value_name = "PORT")]
    app_port: Option<u16>,
    /// The port of Dapr's HTTP API.
    #[arg(long, value_name = "PORT", default_value_t = 3500)]
    dapr_http_port: u16,
    /// The port of Dapr's gRPC API (InvokeBinding, GetMetadata).
    #[arg(long, value_name = "PORT", default_value_t = 50001)]
    dapr_grpc_port: u16,
    /// Where Dapr's HTTP API listens: IP addresses, comma separated. Loopback by default,
    /// so that only this machine can reach it; set DAPR_API_TOKEN before widening it.
    #[arg(
        long,
        value_name = "ADDRESSES",
        default_value = "127.0.0.1",
        value_delimiter = ','
    )]
    dapr_listen_addresses: Vec<std::net::IpAddr>,
    /// How to talk to the app: http (POST /{route}) or grpc (Dapr's AppCallback service).
    #[arg(long, value_name = "PROTOCOL", default_value = "http")]
    app_protocol: mqtt_binding::sidecar::AppProtocol,
    // Last: the options after a flattened group would fall under its heading.
    #[command(flatten)]
    metrics: MetricsArgs,
}

/// Prometheus metrics, as daprd's flags.
#[derive(Args)]
#[command(next_help_heading = "Metrics")]
struct MetricsArgs {
    /// Serve Prometheus metrics on GET /metrics.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    enable_metrics: bool,
    /// The port of the metrics endpoint [default: 9090 for run, as daprd; 9091 for
    /// pluggable, which runs beside a daprd that has 9090].
    #[arg(long, value_name = "PORT")]
    metrics_port: Option<u16>,
    /// The address the metrics endpoint listens on (all interfaces by default, as daprd's,
    /// so that Prometheus can scrape it; metrics carry no secrets or payloads).
    #[arg(long, value_name = "ADDRESS", default_value = "0.0.0.0")]
    metrics_listen_address: std::net::IpAddr,
}

impl MetricsArgs {
    /// Where to serve metrics, `default_port` unless `--metrics-port` says otherwise.
    fn address(&self, default_port: u16) -> Option<std::net::SocketAddr> {
        let port = self.metrics_port.unwrap_or(default_port);
        self.enable_metrics
            .then(|| std::net::SocketAddr::new(self.metrics_listen_address, port))
    }
}

#[derive(Args)]
struct PluggableArgs {
    /// The folder daprd looks for sockets in [default: $DAPR_COMPONENTS_SOCKETS_FOLDER, else
    /// /tmp/dapr-components-sockets].
    #[arg(long, value_name = "DIR")]
    socket_folder: Option<PathBuf>,
    /// The socket is NAME.sock and the components' type bindings.NAME.
    #[arg(long, value_name = "NAME", default_value = mqtt_binding::pluggable::DEFAULT_NAME)]
    name: String,
    /// The MQTT client ID of components without consumerID [default: the component's name].
    #[arg(long, value_name = "ID")]
    app_id: Option<String>,
    /// How long a component instance lives on once daprd's connections to it are gone.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    release_after: std::time::Duration,
    #[command(flatten)]
    metrics: MetricsArgs,
}

fn main() -> ExitCode {
    fixed_mmap_threshold();
    let cli = Cli::parse();
    // rumqttd (the demo's embedded broker) logs ordinary disconnects as errors; keep it
    // quiet unless asked for by name.
    let mut directives = cli.global.log_level.clone();
    if !directives.contains("rumqttd") {
        directives.push_str(",rumqttd=off");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rumqttd=off"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.global.log_as_json {
        let app_id = match &cli.command {
            Command::Run(args) => Some(args.app_id.clone()),
            Command::Pluggable(args) => args.app_id.clone(),
            Command::Invoke(args) => args.app_id.clone(),
            Command::Read(_) | Command::Demo => None,
            #[cfg(feature = "portable")]
            Command::Portable(_) => None,
        };
        logs.event_format(json_log::JsonLines { app_id }).init();
    } else {
        logs.init();
    }

    // On small machines the current-thread runtime has the lowest latency (measured on two
    // cores); --threads chooses a multi-thread one.
    let mut builder = if cli.global.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(usize::from(cli.global.threads));
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(&error.into()),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

/// glibc raises its mmap threshold each time a large block is freed, after which large
/// blocks come from the heap and are seldom given back: one burst of large messages would
/// keep the process at its peak. A fixed threshold keeps every block of 128 KiB or more in
/// a mapping of its own, returned to the system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[expect(
    unsafe_code,
    reason = "mallopt is glibc's allocator tuning call; it has no Rust wrapper"
)]
fn fixed_mmap_threshold() {
    // SAFETY: mallopt only sets an allocator parameter; it runs first in `main`, before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn fixed_mmap_threshold() {}

/// Raises the soft limit on open descriptors to the hard one, as servers do: each HTTP
/// connection, app connection and broker connection takes one, and the usual soft limit
/// (1,024) is easily reached by clients that keep connections open.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-descriptor limit"),
            Err(error) => {
                tracing::warn!("cannot raise the open-descriptor limit from {soft}: {error}")
            }
        },
        Ok(_) => {}
        Err(error) => tracing::warn!("cannot read the open-descriptor limit: {error}"),
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("mqtt-binding: {error:#}");
    ExitCode::FAILURE
}

/// `--cpu-budget`: a duration, or `off`.
fn cpu_budget(value: &str) -> Result<Option<std::time::Duration>, String> {
    if value == "off" {
        return Ok(None);
    }
    match humantime::parse_duration(value) {
        Ok(budget) if !budget.is_zero() => Ok(Some(budget)),
        Ok(_) => Err("a budget of zero would stop every call; say `off` for none".into()),
        Err(error) => Err(format!(
            "{error}; expected a duration such as 1s or 500ms, or `off`"
        )),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let options = RuntimeOptions {
        component: cli
            .global
            .wasm
            .map_or(ComponentSource::Embedded, ComponentSource::File),
        cache_dir: if cli.global.no_cache {
            None
        } else {
            mqtt_binding::default_cache_dir()
        },
        allowed_brokers: (!cli.sandbox.allow_broker.is_empty()).then_some(cli.sandbox.allow_broker),
        cpu_budget: cli.sandbox.cpu_budget,
        max_memory_bytes: cli.sandbox.max_memory_mib.saturating_mul(1024 * 1024),
        max_handles: cli.sandbox.max_handles,
        max_log_lines_per_second: cli.sandbox.max_log_lines_per_second,
        ..RuntimeOptions::default()
    };
    match cli.command {
        Command::Invoke(args) => invoke(options, args).await,
        Command::Read(args) => read::run(options, args).await,
        Command::Run(args) => run_sidecar(options, args).await,
        Command::Pluggable(args) => run_pluggable(options, args).await,
        Command::Demo => demo::run(options).await,
        #[cfg(feature = "portable")]
        Command::Portable(args) => std::fs::write(&args.out, mqtt_binding::PORTABLE_COMPONENT)
            .with_context(|| format!("writing {}", args.out.display())),
    }
}

async fn invoke(options: RuntimeOptions, args: InvokeArgs) -> anyhow::Result<()> {
    let component = component_file::single_binding(&args.component)?;
    let metadata = component
        .plain_metadata()
        .with_context(|| format!("component {:?}", component.name))?;
    let data = args.payload()?;
    let app_id = args
        .app_id
        .unwrap_or_else(|| format!("mqtt-binding-{}", std::process::id()));

    let runtime = Runtime::new(options)?;
    let binding = runtime
        .binding(BindingOptions {
            name: component.name.clone(),
            app_id,
            metadata,
            handler: None,
        })
        .await
        .with_context(|| format!("starting binding {:?}", component.name))?;
    let request = InvokeRequest {
        operation: args.operation.clone(),
        data,
        metadata: args.metadata,
    };
    let outcome = binding.invoke(request).await;
    binding.close().await;
    let response = outcome.with_context(|| {
        format!(
            "binding {:?}: operation {:?}",
            component.name, args.operation
        )
    })?;
    if let Some(data) = response.data {
        let mut stdout = tokio::io::stdout();
        stdout.write_all(&data).await?;
        stdout.flush().await?;
    }
    Ok(())
}

async fn run_sidecar(options: RuntimeOptions, args: RunArgs) -> anyhow::Result<()> {
    if args.app_id.trim().is_empty() {
        bail!("--app-id is empty; give the application ID");
    }
    raise_descriptor_limit();
    let sidecar = mqtt_binding::sidecar::SidecarOptions {
        resources_path: args.resources_path,
        app_id: args.app_id,
        app_port: args.app_port,
        app_protocol: args.app_protocol,
        http_port: args.dapr_http_port,
        grpc_port: args.dapr_grpc_port,
        listen_addresses: args.dapr_listen_addresses,
        // As daprd: tokens come from the environment, never from the command line (where
        // any user could read them in the process list). Empty means unset.
        api_token: std::env::var("DAPR_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        app_api_token: std::env::var("APP_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
        metrics: args.metrics.address(9090),
        runtime: options,
    };
    mqtt_binding::sidecar::run(sidecar, stop_signal()?).await
}

async fn run_pluggable(options: RuntimeOptions, args: PluggableArgs) -> anyhow::Result<()> {
    raise_descriptor_limit();
    let pluggable = mqtt_binding::pluggable::PluggableOptions {
        socket_folder: args
            .socket_folder
            .unwrap_or_else(mqtt_binding::pluggable::default_socket_folder),
        name: args.name,
        app_id: args.app_id,
        release_after: args.release_after,
        metrics: args.metrics.address(9091),
        runtime: options,
    };
    mqtt_binding::pluggable::run(pluggable, stop_signal()?).await
}

/// Completes on SIGINT or SIGTERM.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

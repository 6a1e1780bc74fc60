//! The benchmark: every figure of the binding beside a reference measured in the same run on
//! the same local mosquitto, as median, spread (min–max) and ratio.
//!
//! `cargo bench -p mqtt-binding --bench bench` runs it in full and writes the table into
//! `docs/BENCHMARKS.md` (between its table markers; the text around them is kept).
//! `cargo bench -p mqtt-binding --bench bench -- output input` runs only those groups
//! (`output`, `latency`, `input`, `mqtt5`, `sandbox`, `faces`, `floors` or one of its parts
//! `floors-output`, `floors-input` and `floors-busy` (both halves again beside a CPU hog
//! pinned to one core), `concurrency`, `bindings`, `start`, `memory`, `portable`) and writes
//! nothing.
//! `cargo test -p mqtt-binding --bench bench` (no `--bench` argument) runs every figure once
//! with a few hundred messages, so that the code cannot rot.
//!
//! Output figures are steady state: the clock starts once the connection is open (and, for
//! the binding, once every instance of its output pool exists). At QoS 0 a run ends when the
//! broker has read every message: a QoS 1 publish sent after them on the same connection is
//! acknowledged (MQTT keeps a connection's packets in order). Ending when the last packet is
//! handed to the socket would time the kernel's buffers, not the broker's intake.
//!
//! Input figures read a persistent session preloaded with the messages (mosquitto with
//! `queue_qos0_messages`, so QoS 0 queues too), timed from the start of connecting to the
//! last delivery, for both. The binding's connection opens when the binding is created, so
//! timing from the first delivery would leave the network out of its figure only.

#![expect(clippy::print_stdout, reason = "a benchmark reports on stdout")]

mod bindings;
mod busy;
mod faces;
mod floors;
mod portable;
mod summary;
#[path = "../../tests/integration/support.rs"]
#[allow(dead_code, reason = "the benchmark uses part of the test helpers")]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mqtt_binding::{
    Binding, BindingOptions, Delivery, Event, EventHandler, InvokeRequest, Runtime, RuntimeOptions,
};
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
use support::{BrokerConfig, Mosquitto, free_port, publish_all, runtime, unique};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Invokes (and rumqttc publishes) in flight at once for the throughput figures.
const IN_FLIGHT: usize = 64;

struct Settings {
    full: bool,
    /// Figure groups to run (`output`, `latency`, `input`, `mqtt5`, `sandbox`, `faces`,
    /// `floors` or `floors-output`, `floors-input` and `floors-busy`, `concurrency`,
    /// `bindings`, `start`, `memory`, `portable`); all if empty.
    only: Vec<String>,
    runs: usize,
    messages: usize,
    latency_samples: usize,
    cold_starts: usize,
}

/// One row of the table: the binding's figure and its reference, each a list of runs.
struct Row {
    figure: String,
    unit: &'static str,
    binding: Vec<f64>,
    reference_name: String,
    reference: Vec<f64>,
    /// Whether more is better (throughput) or less is (latency, time).
    higher_is_better: bool,
}

impl Settings {
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|name| name == group)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // This binary is also the hand-written servers the `floors` group measures against.
    if args.get(1).map(String::as_str) == Some("floor-server") {
        return floors::serve(&args[2..]);
    }
    // And the CPU hog the busy variant of `floors` runs beside.
    if args.get(1).map(String::as_str) == Some("cpu-hog") {
        return busy::spin(&args[2..]);
    }
    // And one side of one in-process row, again and again, for a profiler to watch.
    if args.get(1).map(String::as_str) == Some("profile") {
        return profile(&args[2..]);
    }
    let full = std::env::args().any(|arg| arg == "--bench");
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    let settings = if full {
        Settings {
            full,
            only,
            runs: 7,
            messages: 30_000,
            latency_samples: 2_000,
            cold_starts: 20,
        }
    } else {
        Settings {
            full,
            only,
            runs: 1,
            messages: 300,
            latency_samples: 100,
            cold_starts: 2,
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let rows = rt.block_on(measure(&settings));
    let table = render(&rows);
    println!("{table}");
    let summary = summary::render(&rows);
    println!("{summary}");
    if !settings.full {
        check_document();
    }
    if settings.full && settings.only.is_empty() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        std::fs::create_dir_all(&docs).expect("creating docs/");
        let path = docs.join("BENCHMARKS.md");
        let existing = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(
            &path,
            document(&existing, &summary, &measured(&settings, &table)),
        )
        .expect("writing docs/BENCHMARKS.md");
        println!("written to docs/BENCHMARKS.md");
    }
}

/// `bench profile ROW SIDE SECONDS`: runs one side (`binding` or `reference`) of one
/// in-process row (`input-qos0`, `input-qos1`, `output-qos0`, `output-qos1`; 100 B, 30,000
/// messages a run) in a loop for about SECONDS, then prints the CPU per message of the
/// runs. The broker is a process of its own and input rows preload on a thread of their
/// own, so the benchmark thread (named after this binary) is the row's timed part alone:
///
/// ```text
/// $TARGET/release/deps/bench-* profile input-qos0 binding 20 &
/// perf record -g -p $! -o input.perf -- sleep 15
/// perf report -i input.perf --comms "$(cat /proc/$!/comm)" --no-children --sort sym
/// ```
fn profile(args: &[String]) {
    let [row, side, seconds] = args else {
        panic!("usage: profile ROW SIDE SECONDS, for example: profile input-qos0 binding 20");
    };
    let binding = match side.as_str() {
        "binding" => true,
        "reference" => false,
        other => panic!("SIDE is `binding` or `reference`, not {other:?}"),
    };
    let seconds: u64 = seconds.parse().expect("SECONDS is a whole number");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(face) = row.strip_prefix("face-") {
        return rt.block_on(async {
            let broker = Mosquitto::start();
            floors::profile_face(&broker, face, !binding, seconds).await;
        });
    }
    rt.block_on(async {
        let broker = Mosquitto::start_with(BrokerConfig {
            extra: "queue_qos0_messages true\nmax_queued_messages 0\n".into(),
            ..Default::default()
        });
        const MESSAGES: usize = 30_000;
        let until = Instant::now() + Duration::from_secs(seconds);
        let mut cpu = Vec::new();
        while Instant::now() < until {
            let run = match (row.as_str(), binding) {
                ("input-qos0", true) => {
                    binding_rate(runtime(), &broker, QoS::AtMostOnce, MESSAGES).await
                }
                ("input-qos0", false) => raw_rate(&broker, QoS::AtMostOnce, MESSAGES).await,
                ("input-qos1", true) => {
                    binding_rate(runtime(), &broker, QoS::AtLeastOnce, MESSAGES).await
                }
                ("input-qos1", false) => raw_rate(&broker, QoS::AtLeastOnce, MESSAGES).await,
                ("output-qos0", true) => {
                    output_rate(runtime(), &broker, QoS::AtMostOnce, 100, MESSAGES).await
                }
                ("output-qos0", false) => {
                    rumqttc_output_rate(&broker, QoS::AtMostOnce, 100, MESSAGES).await
                }
                ("output-qos1", true) => {
                    output_rate(runtime(), &broker, QoS::AtLeastOnce, 100, MESSAGES).await
                }
                ("output-qos1", false) => {
                    rumqttc_output_rate(&broker, QoS::AtLeastOnce, 100, MESSAGES).await
                }
                (other, _) => panic!(
                    "ROW is input-qos0, input-qos1, output-qos0, output-qos1 or face-http, face-grpc, face-socket, not {other:?}"
                ),
            };
            cpu.push(run.cpu_per_message);
        }
        let (median, low, high) = stats(&cpu);
        println!(
            "{row} {side}: {} runs, CPU per message {} µs ({}–{})",
            cpu.len(),
            fmt(median),
            fmt(low),
            fmt(high)
        );
    });
}

async fn measure(settings: &Settings) -> Vec<Row> {
    let broker = Mosquitto::start_with(BrokerConfig {
        extra: "queue_qos0_messages true\nmax_queued_messages 0\n".into(),
        ..Default::default()
    });
    let mut rows = Vec::new();
    if settings.wants("output") {
        rows.extend(output_rows(settings, &broker).await);
    }
    if settings.wants("latency") {
        rows.extend(latency_rows(settings, &broker).await);
    }
    if settings.wants("input") {
        rows.extend(input_rows(settings, &broker).await);
    }
    if settings.wants("mqtt5") {
        rows.extend(mqtt5_rows(settings, &broker).await);
    }
    if settings.wants("sandbox") {
        rows.extend(sandbox_rows(settings, &broker).await);
    }
    if settings.wants("faces") {
        rows.extend(faces::rows(settings, &broker).await);
    }
    if settings.wants("floors") || settings.wants("floors-output") {
        rows.extend(floors::output_rows(settings, &broker).await);
    }
    if settings.wants("floors") || settings.wants("floors-input") {
        rows.extend(floors::input_rows(settings, &broker).await);
    }
    if settings.wants("floors") || settings.wants("floors-busy") {
        let hog = busy::Hog::start().await;
        let mut busy = floors::output_rows(settings, &broker).await;
        busy.extend(floors::input_rows(settings, &broker).await);
        hog.stop().await;
        rows.extend(busy.into_iter().map(busy::marked));
    }
    if settings.wants("concurrency") {
        rows.extend(faces::concurrency_rows(settings, &broker).await);
    }
    if settings.wants("bindings") {
        rows.extend(bindings::rows(settings, &broker).await);
    }
    if settings.wants("start") {
        rows.extend(start_rows(settings, &broker).await);
    }
    if settings.wants("memory") {
        rows.extend(memory_rows(settings, &broker).await);
    }
    if settings.wants("portable") {
        rows.extend(portable::rows(settings, &broker).await);
    }
    rows
}

async fn output_rows(settings: &Settings, broker: &Mosquitto) -> Vec<Row> {
    let mut rows = Vec::new();
    let n = settings.messages;
    for (qos, size) in [
        (QoS::AtMostOnce, 100),
        (QoS::AtLeastOnce, 100),
        (QoS::AtLeastOnce, 1024),
        (QoS::AtLeastOnce, 64 * 1024),
    ] {
        let messages = if size > 1024 { n / 10 } else { n }.max(IN_FLIGHT);
        let mut row = Row {
            figure: format!(
                "output QoS {}, {} B, {IN_FLIGHT} in flight",
                qos as u8, size
            ),
            unit: "msg/s",
            binding: Vec::new(),
            reference_name: "rumqttc, same pipelining".into(),
            reference: Vec::new(),
            higher_is_better: true,
        };
        let mut versus_pub = Row {
            figure: row.figure.clone(),
            unit: "msg/s",
            binding: Vec::new(),
            reference_name: "`mosquitto_pub -l`".into(),
            reference: Vec::new(),
            higher_is_better: true,
        };
        let mut cpu = cpu_row(&row.figure, "rumqttc");
        for _ in 0..settings.runs {
            let binding = output_rate(runtime(), broker, qos, size, messages).await;
            let reference = rumqttc_output_rate(broker, qos, size, messages).await;
            row.binding.push(binding.rate);
            versus_pub.binding.push(binding.rate);
            row.reference.push(reference.rate);
            cpu.binding.push(binding.cpu_per_message);
            cpu.reference.push(reference.cpu_per_message);
            if size <= 1024 {
                versus_pub
                    .reference
                    .push(mosquitto_pub_rate(broker, qos, size, messages).await);
            }
        }
        rows.push(row);
        if size <= 1024 {
            rows.push(versus_pub);
        }
        rows.push(cpu);
    }
    rows
}

/// The CPU row that goes with a throughput row.
fn cpu_row(figure: &str, reference: &str) -> Row {
    Row {
        figure: format!("{figure}: CPU per message, benchmark thread"),
        unit: "µs",
        binding: Vec::new(),
        reference_name: reference.into(),
        reference: Vec::new(),
        higher_is_better: false,
    }
}

async fn latency_rows(settings: &Settings, broker: &Mosquitto) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut latency = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..settings.runs {
        let (p50, p99) = percentiles(invoke_latencies(broker, settings.latency_samples).await);
        latency.0.push(p50);
        latency.1.push(p99);
        let (p50, p99) = percentiles(rumqttc_latencies(broker, settings.latency_samples).await);
        latency.2.push(p50);
        latency.3.push(p99);
        latency
            .4
            .push(percentiles(ping_latencies(broker, settings.latency_samples).await).0);
    }
    rows.push(Row {
        figure: "output latency QoS 1, p50".into(),
        unit: "µs",
        binding: latency.0.clone(),
        reference_name: "rumqttc p50".into(),
        reference: latency.2.clone(),
        higher_is_better: false,
    });
    rows.push(Row {
        figure: "output latency QoS 1, p99".into(),
        unit: "µs",
        binding: latency.1,
        reference_name: "rumqttc p99".into(),
        reference: latency.3,
        higher_is_better: false,
    });
    rows.push(Row {
        figure: "output latency QoS 1, p50".into(),
        unit: "µs",
        binding: latency.0,
        reference_name: "TCP floor (PINGREQ/PINGRESP) p50".into(),
        reference: latency.4,
        higher_is_better: false,
    });
    rows
}

async fn input_rows(settings: &Settings, broker: &Mosquitto) -> Vec<Row> {
    // Input at QoS 1 is bimodal on a default mosquitto, which leaves Nagle's algorithm on:
    // the same figures on a broker with `set_tcp_nodelay true` say which mode a run was in.
    let nodelay = Mosquitto::start_with(BrokerConfig {
        extra: "queue_qos0_messages true\nmax_queued_messages 0\nset_tcp_nodelay true\n".into(),
        ..Default::default()
    });
    let mut rows = Vec::new();
    let n = settings.messages;
    for (broker, which) in [
        (broker, ""),
        (&nodelay, ", broker with set_tcp_nodelay true"),
    ] {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let mut row = Row {
                figure: format!(
                    "input QoS {}, 100 B, handler returns at once{which}",
                    qos as u8
                ),
                unit: "msg/s",
                binding: Vec::new(),
                reference_name: "raw rumqttc subscriber, manual acks".into(),
                reference: Vec::new(),
                higher_is_better: true,
            };
            let mut cpu = cpu_row(&row.figure, "raw rumqttc subscriber");
            for _ in 0..settings.runs {
                let binding = binding_rate(runtime(), broker, qos, n).await;
                let reference = raw_rate(broker, qos, n).await;
                row.binding.push(binding.rate);
                row.reference.push(reference.rate);
                cpu.binding.push(binding.cpu_per_message);
                cpu.reference.push(reference.cpu_per_message);
            }
            rows.push(row);
            rows.push(cpu);
        }
    }
    rows
}

/// What the sandbox costs: the output and input figures with the protections that cost
/// anything per call (the CPU budget's epoch checks, compiled into the component, and the
/// handle and log limits) against the same runtime without them, runs interleaved. The CPU
/// time per message goes beside each: throughput on a shared machine swings by more than
/// the difference looked for, CPU time much less.
async fn sandbox_rows(settings: &Settings, broker: &Mosquitto) -> Vec<Row> {
    let protected = runtime();
    let unprotected = unprotected_runtime();
    let n = settings.messages;
    let mut rows = Vec::new();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut output = Row {
            figure: format!(
                "output QoS {}, 100 B, {IN_FLIGHT} in flight, sandbox on",
                qos as u8
            ),
            unit: "msg/s",
            binding: Vec::new(),
            reference_name: "sandbox off".into(),
            reference: Vec::new(),
            higher_is_better: true,
        };
        let mut input = Row {
            figure: format!("input QoS {}, 100 B, sandbox on", qos as u8),
            unit: "msg/s",
            binding: Vec::new(),
            reference_name: "sandbox off".into(),
            reference: Vec::new(),
            higher_is_better: true,
        };
        let mut output_cpu = cpu_row(&output.figure, "sandbox off");
        let mut input_cpu = cpu_row(&input.figure, "sandbox off");
        for _ in 0..settings.runs {
            for (runtime, on) in [(protected, true), (&unprotected, false)] {
                let out = output_rate(runtime, broker, qos, 100, n).await;
                let inp = binding_rate(runtime, broker, qos, n).await;
                let (rates, cpus) = if on {
                    (
                        [&mut output.binding, &mut input.binding],
                        [&mut output_cpu.binding, &mut input_cpu.binding],
                    )
                } else {
                    (
                        [&mut output.reference, &mut input.reference],
                        [&mut output_cpu.reference, &mut input_cpu.reference],
                    )
                };
                let [out_rate, in_rate] = rates;
                let [out_cpu, in_cpu] = cpus;
                out_rate.push(out.rate);
                in_rate.push(inp.rate);
                out_cpu.push(out.cpu_per_message);
                in_cpu.push(inp.cpu_per_message);
            }
        }
        rows.extend([output, output_cpu, input, input_cpu]);
    }
    rows
}

/// MQTT 5 against MQTT 3.1.1, the same binding on the same broker, runs interleaved: what
/// speaking MQTT 5 costs (a properties length in every packet, reason codes to read).
async fn mqtt5_rows(settings: &Settings, broker: &Mosquitto) -> Vec<Row> {
    let runtime = runtime();
    let n = settings.messages;
    let mut rows = Vec::new();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let mut output = Row {
            figure: format!(
                "MQTT 5 output QoS {}, 100 B, {IN_FLIGHT} in flight",
                qos as u8
            ),
            unit: "msg/s",
            binding: Vec::new(),
            reference_name: "MQTT 3.1.1".into(),
            reference: Vec::new(),
            higher_is_better: true,
        };
        let mut input = Row {
            figure: format!("MQTT 5 input QoS {}, 100 B", qos as u8),
            unit: "msg/s",
            binding: Vec::new(),
            reference_name: "MQTT 3.1.1".into(),
            reference: Vec::new(),
            higher_is_better: true,
        };
        for _ in 0..settings.runs {
            output
                .binding
                .push(output_rate_at(runtime, broker, qos, 100, n, "5").await.rate);
            output.reference.push(
                output_rate_at(runtime, broker, qos, 100, n, "3.1.1")
                    .await
                    .rate,
            );
            input
                .binding
                .push(binding_rate_at(runtime, broker, qos, n, "5").await.rate);
            input
                .reference
                .push(binding_rate_at(runtime, broker, qos, n, "3.1.1").await.rate);
        }
        rows.extend([output, input]);
    }
    rows
}

/// The default runtime without the per-call protections: no CPU budget (so no epoch checks
/// in the compiled component and no ticker), and handle and log limits that never bind.
/// Memory is limited as before the sandbox work, and stays so.
fn unprotected_runtime() -> Runtime {
    Runtime::new(RuntimeOptions {
        cpu_budget: None,
        max_handles: usize::MAX,
        max_log_lines_per_second: u32::MAX,
        max_log_line_bytes: usize::MAX,
        ..RuntimeOptions::default()
    })
    .expect("runtime")
}

/// One timed throughput run.
struct Run {
    rate: f64,
    /// CPU time of the benchmark thread over the run, per message, in µs.
    cpu_per_message: f64,
}

/// Starts timing a run: wall clock, and the CPU time of this thread. The benchmark runs on a
/// current-thread runtime, so this thread does all the client's work: the component, the
/// host, rumqttc and the kernel's side of its sockets (mosquitto is another process).
struct Timer {
    started: Instant,
    cpu: Duration,
}

impl Timer {
    fn start() -> Self {
        Self {
            started: Instant::now(),
            cpu: thread_cpu(),
        }
    }

    fn stop(&self, messages: usize) -> Run {
        let elapsed = self.started.elapsed();
        let cpu = thread_cpu().saturating_sub(self.cpu);
        Run {
            rate: messages as f64 / elapsed.as_secs_f64(),
            cpu_per_message: cpu.as_secs_f64() * 1e6 / messages as f64,
        }
    }
}

fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .expect("the thread's CPU clock")
}

async fn start_rows(settings: &Settings, broker: &Mosquitto) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut starts = Vec::new();
    for _ in 0..settings.cold_starts {
        starts.push(cold_start(broker).await);
    }
    rows.push(Row {
        figure: "cold start in process: load (cached) + instantiate + init + connect".into(),
        unit: "ms",
        binding: starts,
        reference_name: "(none)".into(),
        reference: Vec::new(),
        higher_is_better: false,
    });
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..settings.cold_starts {
        ours.push(invoke_process(broker).await);
        theirs.push(mosquitto_pub_process(broker).await);
    }
    rows.push(Row {
        figure: "`mqtt-binding invoke` process, QoS 1".into(),
        unit: "ms",
        binding: ours,
        reference_name: "one `mosquitto_pub -q 1` process".into(),
        reference: theirs,
        higher_is_better: false,
    });
    rows
}

async fn memory_rows(settings: &Settings, broker: &Mosquitto) -> Vec<Row> {
    let mut rows = Vec::new();
    let (mut idle, mut loaded) = (Vec::new(), Vec::new());
    for _ in 0..settings.runs {
        let memory = sidecar_memory(broker, settings.messages, SMALL_DATA).await;
        idle.push(memory.idle);
        loaded.push(memory.peak);
    }
    // Large payloads: what the byte budgets bound, and what is given back afterwards.
    let large = if settings.full { 15 << 20 } else { 1 << 20 };
    let (mut large_idle, mut large_peak, mut large_after) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..settings.runs {
        let memory = sidecar_memory(broker, IN_FLIGHT, large).await;
        large_idle.push(memory.idle);
        large_peak.push(memory.peak);
        large_after.push(memory.after);
    }
    rows.push(Row {
        figure: "`mqtt-binding run`, one binding, resident memory idle".into(),
        unit: "MiB",
        binding: idle,
        reference_name: "(none)".into(),
        reference: Vec::new(),
        higher_is_better: false,
    });
    rows.push(Row {
        figure: format!(
            "`mqtt-binding run`, peak resident memory, {} HTTP invokes, {IN_FLIGHT} in flight",
            settings.messages
        ),
        unit: "MiB",
        binding: loaded,
        reference_name: "(none)".into(),
        reference: Vec::new(),
        higher_is_better: false,
    });
    let mib = large >> 20;
    rows.push(Row {
        figure: format!(
            "`mqtt-binding run`, peak resident memory, {IN_FLIGHT} invokes of {mib} MiB at once"
        ),
        unit: "MiB",
        binding: large_peak,
        reference_name: "idle, same process".into(),
        reference: large_idle.clone(),
        higher_is_better: false,
    });
    rows.push(Row {
        figure: format!(
            "`mqtt-binding run`, resident memory {} s after {IN_FLIGHT} invokes of {mib} MiB",
            SETTLE.as_secs()
        ),
        unit: "MiB",
        binding: large_after,
        reference_name: "idle, same process".into(),
        reference: large_idle,
        higher_is_better: false,
    });
    rows
}

/// The data of the small HTTP invokes: 100 characters, as a JSON string.
const SMALL_DATA: usize = 100;
/// How long the sidecar rests after a load before its memory is read again.
const SETTLE: Duration = Duration::from_secs(2);

/// Resident memory of one `mqtt-binding run`, in MiB.
struct SidecarMemory {
    /// Once healthy, before any invoke.
    idle: f64,
    /// The most seen while the invokes ran.
    peak: f64,
    /// [`SETTLE`] after the last invoke answered.
    after: f64,
}

/// Resident set size of a process, in MiB.
fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// `mqtt-binding run` with one output binding: RSS once healthy, the peak while `invokes`
/// HTTP requests with `data_bytes` of data each run, IN_FLIGHT at a time, and the RSS
/// [`SETTLE`] after them.
async fn sidecar_memory(broker: &Mosquitto, invokes: usize, data_bytes: usize) -> SidecarMemory {
    let dir = tempfile::tempdir().expect("dir");
    let yaml = format!(
        "kind: Component\nmetadata: {{name: orders}}\nspec:\n  type: bindings.mqtt\n  version: v1\n  metadata:\n  - {{name: url, value: \"{}\"}}\n  - {{name: topic, value: bench/memory}}\n  - {{name: qos, value: 1}}\n",
        broker.url()
    );
    std::fs::write(dir.path().join("orders.yaml"), yaml).expect("component file");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqtt-binding"))
        .args([
            "run",
            "--resources-path",
            dir.path().to_str().expect("path"),
            "--app-id",
            &format!("bench-mem-{}", unique()),
        ])
        .args(["--dapr-http-port", &port.to_string()])
        .args(["--dapr-grpc-port", &free_port().to_string()])
        .args(["--enable-metrics", "false"])
        .kill_on_drop(true)
        .spawn()
        .expect("mqtt-binding run starts");
    let pid = child.id().expect("pid");
    let client = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/v1.0/healthz");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(&health)
        .send()
        .await
        .is_ok_and(|r| r.status() == reqwest::StatusCode::NO_CONTENT)
    {
        assert!(
            Instant::now() < deadline,
            "the sidecar never became healthy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle = resident_mib(pid);

    let url = format!("http://127.0.0.1:{port}/v1.0/bindings/orders");
    let body = bytes::Bytes::from(format!(
        r#"{{"data": "{}", "operation": "create"}}"#,
        "x".repeat(data_bytes)
    ));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        let count = (invokes / IN_FLIGHT).max(1);
        senders.spawn(async move {
            for _ in 0..count {
                let response = client
                    .post(&url)
                    .body(body.clone())
                    .send()
                    .await
                    .expect("invoke answered");
                assert_eq!(response.status(), reqwest::StatusCode::NO_CONTENT);
            }
        });
    }
    let mut peak = idle;
    loop {
        tokio::select! {
            next = senders.join_next() => match next {
                Some(done) => done.expect("sender"),
                None => break,
            },
            () = tokio::time::sleep(Duration::from_millis(5)) => peak = peak.max(resident_mib(pid)),
        }
    }
    peak = peak.max(resident_mib(pid));
    tokio::time::sleep(SETTLE).await;
    let after = resident_mib(pid);
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    SidecarMemory { idle, peak, after }
}

fn render(rows: &[Row]) -> String {
    let mut table = String::from(
        "| figure | binding (median, min–max) | reference | reference (median, min–max) | ratio |\n|---|---|---|---|---|\n",
    );
    for row in rows {
        let (b, bmin, bmax) = stats(&row.binding);
        let reference = if row.reference.is_empty() {
            "—".to_string()
        } else {
            let (r, rmin, rmax) = stats(&row.reference);
            format!(
                "{} {unit} ({}–{})",
                fmt(r),
                fmt(rmin),
                fmt(rmax),
                unit = row.unit
            )
        };
        let ratio = if row.reference.is_empty() {
            "—".to_string()
        } else {
            let r = stats(&row.reference).0;
            let ratio = b / r;
            format!(
                "{ratio:.2}× {}",
                if row.higher_is_better {
                    "(higher is better)"
                } else {
                    "(lower is better)"
                }
            )
        };
        table.push_str(&format!(
            "| {} | {} {unit} ({}–{}) | {} | {reference} | {ratio} |\n",
            row.figure,
            fmt(b),
            fmt(bmin),
            fmt(bmax),
            row.reference_name,
            unit = row.unit
        ));
    }
    table
}

fn fmt(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

fn stats(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
    )
}

const TABLE_START: &str = "<!-- table: written by the benchmark -->";
const TABLE_END: &str = "<!-- end of table -->";
const SUMMARY_START: &str = "<!-- summary: written by the benchmark -->";
const SUMMARY_END: &str = "<!-- end of summary -->";

/// The document with its summary and its measured table replaced, keeping the text around
/// them; a new one if it has no table markers (the summary goes first).
fn document(existing: &str, summary: &str, measured: &str) -> String {
    let summary_block = format!("{SUMMARY_START}\n{summary}{SUMMARY_END}");
    let table_block = format!("{TABLE_START}\n{measured}{TABLE_END}");
    match replaced(existing, TABLE_START, TABLE_END, &table_block) {
        Some(with_table) => {
            replaced(&with_table, SUMMARY_START, SUMMARY_END, &summary_block).unwrap_or(with_table)
        }
        None => format!("# Benchmarks\n\n{summary_block}\n\n{table_block}\n"),
    }
}

/// `text` with what lies from `start` to `end` (markers included) replaced by `block`.
fn replaced(text: &str, start: &str, end: &str, block: &str) -> Option<String> {
    let (from, to) = (text.find(start)?, text.find(end)?);
    (from < to).then(|| format!("{}{block}{}", &text[..from], &text[to + end.len()..]))
}

/// Quick mode's check that rewriting the document keeps the hand-written text.
fn check_document() {
    let existing = format!(
        "intro\n{SUMMARY_START}\nold summary\n{SUMMARY_END}\nmore\n{TABLE_START}\nold table\n{TABLE_END}\nanalysis\n"
    );
    let rewritten = document(&existing, "new summary\n", "new table\n");
    assert_eq!(
        rewritten,
        format!(
            "intro\n{SUMMARY_START}\nnew summary\n{SUMMARY_END}\nmore\n{TABLE_START}\nnew table\n{TABLE_END}\nanalysis\n"
        )
    );
    assert_eq!(
        document(&rewritten, "new summary\n", "new table\n"),
        rewritten
    );
    let new = document("", "s\n", "t\n");
    assert!(new.contains(&format!("{SUMMARY_START}\ns\n{SUMMARY_END}")));
    assert!(new.contains(&format!("{TABLE_START}\nt\n{TABLE_END}")));
}

/// The table with what produced it: settings, machine, broker.
fn measured(settings: &Settings, table: &str) -> String {
    let command = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "Produced by `cargo bench -p mqtt-binding --bench bench` ({} runs of each figure; \
{} messages for throughput, {} samples for latency, {} cold starts).\n\nMachine: {} CPUs, \
{cpu}; {}; mosquitto on loopback ({}).\n\n{table}",
        settings.runs,
        settings.messages,
        settings.latency_samples,
        settings.cold_starts,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        command("uname", &["-srm"]),
        command("sh", &["-c", "mosquitto -h 2>&1 | head -1"]),
    )
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6;
    (at(0.5), at(0.99))
}

fn metadata(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

async fn output_binding(
    runtime: &Runtime,
    broker: &Mosquitto,
    qos: QoS,
    version: &str,
) -> Arc<Binding> {
    let options = BindingOptions {
        name: "bench".into(),
        app_id: format!("bench-out-{}", unique()),
        metadata: metadata(&[
            ("url", broker.url()),
            ("topic", format!("bench/out/{}", unique())),
            ("qos", (qos as u8).to_string()),
            ("protocolVersion", version.to_string()),
        ]),
        handler: None,
    };
    Arc::new(runtime.binding(options).await.expect("binding"))
}

/// Many invokes in flight through one binding, once the connection is open and every
/// instance of the output pool is made (steady state; cold start is a figure of its own).
async fn output_rate(
    runtime: &Runtime,
    broker: &Mosquitto,
    qos: QoS,
    size: usize,
    messages: usize,
) -> Run {
    output_rate_at(runtime, broker, qos, size, messages, "3.1.1").await
}

/// [`output_rate`] at MQTT `version` (`3.1.1` or `5`).
async fn output_rate_at(
    runtime: &Runtime,
    broker: &Mosquitto,
    qos: QoS,
    size: usize,
    messages: usize,
    version: &str,
) -> Run {
    let binding = output_binding(runtime, broker, qos, version).await;
    invoke_in_parallel(&binding, 1, size).await;
    let timer = Timer::start();
    invoke_in_parallel(&binding, messages / IN_FLIGHT, size).await;
    if qos == QoS::AtMostOnce {
        // Until the broker has them all: MQTT keeps a connection's packets in order, so
        // the PUBACK of a QoS 1 publish sent after them says the broker has read them.
        let marker = InvokeRequest {
            operation: "create".into(),
            data: b"end".to_vec(),
            metadata: vec![("qos".into(), "1".into())],
        };
        binding.invoke(marker).await.expect("final QoS 1 invoke");
    }
    let run = timer.stop((messages / IN_FLIGHT) * IN_FLIGHT);
    binding.close().await;
    run
}

/// IN_FLIGHT tasks, each invoking `count` times in a row.
async fn invoke_in_parallel(binding: &Arc<Binding>, count: usize, size: usize) {
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let binding = binding.clone();
        workers.spawn(async move {
            for _ in 0..count {
                let request = InvokeRequest {
                    operation: "create".into(),
                    data: vec![b'x'; size],
                    metadata: vec![],
                };
                binding.invoke(request).await.expect("invoke");
            }
        });
    }
    while workers.join_next().await.is_some() {}
}

/// rumqttc alone with the same number in flight, until every publish is acknowledged (QoS 1)
/// or, at QoS 0, until the broker has read them all (as for the binding: a QoS 1 publish
/// after them is acknowledged).
async fn rumqttc_output_rate(broker: &Mosquitto, qos: QoS, size: usize, messages: usize) -> Run {
    let messages = (messages / IN_FLIGHT) * IN_FLIGHT;
    let mut options = MqttOptions::new(
        format!("bench-raw-out-{}", unique()),
        "127.0.0.1",
        broker.port,
    );
    options
        .set_inflight(IN_FLIGHT as u16)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = AsyncClient::new(options, IN_FLIGHT);
    eventloop.network_options.set_tcp_nodelay(true);
    // Connected before the clock starts, as the binding is.
    while !matches!(
        eventloop.poll().await.expect("connect"),
        rumqttc::Event::Incoming(Packet::ConnAck(_))
    ) {}
    let topic = format!("bench/raw/{}", unique());
    let timer = Timer::start();
    let sender = tokio::spawn(async move {
        for _ in 0..messages {
            client
                .publish(topic.clone(), qos, false, vec![b'x'; size])
                .await
                .expect("publish");
        }
        if qos == QoS::AtMostOnce {
            client
                .publish(topic.clone(), QoS::AtLeastOnce, false, b"end".to_vec())
                .await
                .expect("final QoS 1 publish");
        }
        client
    });
    // At QoS 0 only the final QoS 1 publish is acknowledged.
    let mut acks_due = if qos == QoS::AtMostOnce { 1 } else { messages };
    while acks_due > 0 {
        if let rumqttc::Event::Incoming(Packet::PubAck(_)) =
            eventloop.poll().await.expect("connected")
        {
            acks_due -= 1;
        }
    }
    let run = timer.stop(messages);
    let client = sender.await.expect("sender");
    let _ = client.try_disconnect();
    run
}

/// `mosquitto_pub -l` fed the same number of lines, as a whole process.
async fn mosquitto_pub_rate(broker: &Mosquitto, qos: QoS, size: usize, messages: usize) -> f64 {
    let mut input = Vec::with_capacity(messages * (size + 1));
    for _ in 0..messages {
        input.extend(std::iter::repeat_n(b'x', size));
        input.push(b'\n');
    }
    let started = Instant::now();
    let mut child = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-t",
            &format!("bench/pub/{}", unique()),
        ])
        .args(["-q", &(qos as u8).to_string(), "-l"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_pub runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(&input)
        .await
        .expect("feeding mosquitto_pub");
    drop(stdin);
    assert!(child.wait().await.expect("mosquitto_pub ends").success());
    messages as f64 / started.elapsed().as_secs_f64()
}

async fn invoke_latencies(broker: &Mosquitto, samples: usize) -> Vec<Duration> {
    let binding = output_binding(runtime(), broker, QoS::AtLeastOnce, "3.1.1").await;
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let request = InvokeRequest {
            operation: "create".into(),
            data: vec![b'x'; 100],
            metadata: vec![],
        };
        let started = Instant::now();
        binding.invoke(request).await.expect("invoke");
        latencies.push(started.elapsed());
    }
    binding.close().await;
    latencies
}

async fn rumqttc_latencies(broker: &Mosquitto, samples: usize) -> Vec<Duration> {
    let mut options = MqttOptions::new(
        format!("bench-raw-lat-{}", unique()),
        "127.0.0.1",
        broker.port,
    );
    options.set_inflight(1);
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    eventloop.network_options.set_tcp_nodelay(true);
    while !matches!(
        eventloop.poll().await.expect("connect"),
        rumqttc::Event::Incoming(Packet::ConnAck(_))
    ) {}
    let topic = format!("bench/lat/{}", unique());
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        client
            .try_publish(topic.clone(), QoS::AtLeastOnce, false, vec![b'x'; 100])
            .expect("publish");
        while !matches!(
            eventloop.poll().await.expect("connected"),
            rumqttc::Event::Incoming(Packet::PubAck(_))
        ) {}
        latencies.push(started.elapsed());
    }
    let _ = client.try_disconnect();
    latencies
}

/// The floor: PINGREQ/PINGRESP over a raw TCP socket, after a hand-made CONNECT.
async fn ping_latencies(broker: &Mosquitto, samples: usize) -> Vec<Duration> {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", broker.port))
        .await
        .expect("connect");
    socket.set_nodelay(true).expect("nodelay");
    let id = format!("bench-ping-{}", unique());
    let mut connect = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c];
    connect.extend((id.len() as u16).to_be_bytes());
    connect.extend(id.as_bytes());
    let mut packet = vec![0x10, connect.len() as u8];
    packet.extend(connect);
    socket.write_all(&packet).await.expect("CONNECT");
    let mut connack = [0u8; 4];
    socket.read_exact(&mut connack).await.expect("CONNACK");
    let mut latencies = Vec::with_capacity(samples);
    let mut pingresp = [0u8; 2];
    for _ in 0..samples {
        let started = Instant::now();
        socket.write_all(&[0xc0, 0x00]).await.expect("PINGREQ");
        socket.read_exact(&mut pingresp).await.expect("PINGRESP");
        latencies.push(started.elapsed());
    }
    latencies
}

/// In-process: a runtime from the compile cache, then a binding (instantiate, init, connect).
async fn cold_start(broker: &Mosquitto) -> f64 {
    let started = Instant::now();
    let runtime = Runtime::new(RuntimeOptions::default()).expect("runtime");
    let options = BindingOptions {
        name: "cold".into(),
        app_id: format!("bench-cold-{}", unique()),
        metadata: metadata(&[("url", broker.url()), ("topic", "bench/cold".into())]),
        handler: None,
    };
    let binding = runtime.binding(options).await.expect("binding");
    let elapsed = started.elapsed();
    binding.close().await;
    elapsed.as_secs_f64() * 1e3
}

async fn invoke_process(broker: &Mosquitto) -> f64 {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("c.yaml");
    let yaml = format!(
        "kind: Component\nmetadata: {{name: cold}}\nspec:\n  type: bindings.mqtt\n  version: v1\n  metadata:\n  - {{name: url, value: \"{}\"}}\n  - {{name: topic, value: bench/process}}\n  - {{name: qos, value: 1}}\n",
        broker.url()
    );
    std::fs::write(&file, yaml).expect("component file");
    let started = Instant::now();
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqtt-binding"))
        .args([
            "invoke",
            "--component",
            file.to_str().expect("path"),
            "--data",
            "x",
        ])
        .status()
        .await
        .expect("mqtt-binding runs");
    assert!(status.success());
    started.elapsed().as_secs_f64() * 1e3
}

async fn mosquitto_pub_process(broker: &Mosquitto) -> f64 {
    let started = Instant::now();
    let status = tokio::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-t",
            "bench/process",
            "-m",
            "x",
        ])
        .status()
        .await
        .expect("mosquitto_pub runs");
    assert!(status.success());
    started.elapsed().as_secs_f64() * 1e3
}

/// Creates a persistent session subscribed to a fresh topic, then fills it while offline.
/// On a thread of its own, so that a profiler watching the benchmark thread (see
/// [`profile`]) sees only the timed part of a row.
async fn preload(broker: &Mosquitto, qos: QoS, messages: usize, client_id: &str) -> String {
    let (port, client_id) = (broker.port, client_id.to_string());
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(preload_here(port, qos, messages, &client_id))
    })
    .await
    .expect("preloading")
}

async fn preload_here(port: u16, qos: QoS, messages: usize, client_id: &str) -> String {
    let topic = format!("bench/{}", unique());
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(false);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe(&topic, qos).await.expect("subscribe");
    loop {
        if let rumqttc::Event::Incoming(Packet::SubAck(_)) =
            eventloop.poll().await.expect("connected")
        {
            break;
        }
    }
    client.disconnect().await.expect("disconnect");
    while eventloop.poll().await.is_ok() {}
    let payloads = vec![vec![b'x'; 100]; messages];
    publish_all(port, &topic, QoS::AtLeastOnce, &payloads).await;
    topic
}

struct Count {
    seen: AtomicUsize,
    target: usize,
    done: tokio::sync::Notify,
}

impl EventHandler for Count {
    fn deliver(&self, _event: Event) -> Delivery<'_> {
        let seen = self.seen.fetch_add(1, Ordering::AcqRel) + 1;
        if seen == self.target {
            self.done.notify_one();
        }
        Box::pin(async { Ok(None) })
    }
}

async fn binding_rate(runtime: &Runtime, broker: &Mosquitto, qos: QoS, messages: usize) -> Run {
    binding_rate_at(runtime, broker, qos, messages, "3.1.1").await
}

/// [`binding_rate`] at MQTT `version`. The session is made and filled at MQTT 3.1.1 either
/// way; the binding takes it over at its own version (a session is not tied to one).
async fn binding_rate_at(
    runtime: &Runtime,
    broker: &Mosquitto,
    qos: QoS,
    messages: usize,
    version: &str,
) -> Run {
    let client_id = format!("bench-binding-{}", unique());
    let topic = preload(broker, qos, messages, &client_id).await;
    let count = Arc::new(Count {
        seen: AtomicUsize::new(0),
        target: messages,
        done: tokio::sync::Notify::new(),
    });
    let qos_text = (qos as u8).to_string();
    let metadata = [
        ("url", broker.url()),
        ("topic", topic),
        ("qos", qos_text),
        ("consumerID", client_id),
        ("cleanSession", "false".to_string()),
        ("protocolVersion", version.to_string()),
    ];
    let options = BindingOptions {
        name: "bench".into(),
        app_id: "bench".into(),
        metadata: metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        handler: Some(count.clone()),
    };
    let timer = Timer::start();
    let binding = runtime.binding(options).await.expect("binding");
    let reading = binding.read();
    let timed = async {
        tokio::time::timeout(Duration::from_secs(300), count.done.notified())
            .await
            .expect("all delivered");
        let run = timer.stop(messages);
        binding.shutdown();
        run
    };
    let (read, run) = tokio::join!(reading, timed);
    read.expect("read ends cleanly");
    binding.close().await;
    run
}

async fn raw_rate(broker: &Mosquitto, qos: QoS, messages: usize) -> Run {
    let client_id = format!("bench-raw-{}", unique());
    let topic = preload(broker, qos, messages, &client_id).await;
    let timer = Timer::start();
    let mut options = MqttOptions::new(client_id, "127.0.0.1", broker.port);
    options.set_clean_session(false).set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(options, messages + 16);
    eventloop.network_options.set_tcp_nodelay(true);
    client.subscribe(&topic, qos).await.expect("subscribe");
    let mut seen = 0;
    while seen < messages {
        match tokio::time::timeout(Duration::from_secs(300), eventloop.poll())
            .await
            .expect("in time")
        {
            Ok(rumqttc::Event::Incoming(Packet::Publish(publish))) => {
                seen += 1;
                client.try_ack(&publish).expect("ack queued");
            }
            Ok(_) => {}
            Err(error) => panic!("raw subscriber: {error}"),
        }
    }
    let run = timer.stop(messages);
    client.disconnect().await.expect("disconnect");
    run
}

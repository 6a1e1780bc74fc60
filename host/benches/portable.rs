//! The portable component under the wasmtime CLI beside the native command: the process
//! time of one `invoke` (and `mosquitto_pub`'s), `read` throughput at QoS 1 from a preloaded
//! persistent session, and the composed file's size. (Not peak memory: `wait4` reports a
//! child's peak including the benchmark's own memory, which the child had at spawn.)

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use crate::faces::Session;
use crate::support::{Mosquitto, exit_and_peak_memory, exit_status, unique};
use crate::{Row, Settings, stats};

const BIN: &str = env!("CARGO_BIN_EXE_mqtt-binding");

/// The wasmtime CLI `scripts/test` installs (`$MQTT_BINDING_WASMTIME`).
fn wasmtime() -> PathBuf {
    let path = std::env::var_os("MQTT_BINDING_WASMTIME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| PathBuf::from(home).join(".cache/mqtt-binding/tools/bin/wasmtime"))
        })
        .expect("HOME or MQTT_BINDING_WASMTIME is set");
    assert!(
        path.exists(),
        "{} is missing: ./scripts/test installs the wasmtime CLI there",
        path.display()
    );
    path
}

/// Writes a Component file with these metadata values into `dir`, as `NAME.yaml`.
fn component(dir: &Path, name: &str, metadata: &[(&str, String)]) -> String {
    let mut yaml = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: bindings.mqtt\n  version: v1\n  metadata:\n"
    );
    for (field, value) in metadata {
        yaml.push_str(&format!("  - name: {field}\n    value: \"{value}\"\n"));
    }
    let file = format!("{name}.yaml");
    std::fs::write(dir.join(&file), yaml).expect("writing the component file");
    file
}

/// How one of the two runs the binding.
#[derive(Clone, Copy)]
enum Command {
    /// `wasmtime run` with the portable component.
    Portable,
    /// The native `mqtt-binding`.
    Native,
}

impl Command {
    fn build(self, dir: &Path, portable: &Path, args: &[&str]) -> std::process::Command {
        let mut command = match self {
            Command::Portable => {
                let mut command = std::process::Command::new(wasmtime());
                command
                    .args(["run", "-S", "inherit-network", "--dir", "."])
                    .arg(portable);
                command
            }
            Command::Native => std::process::Command::new(BIN),
        };
        command
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    /// Runs to the end; the wall time in ms.
    async fn time(self, dir: &Path, portable: &Path, args: &[&str]) -> f64 {
        let started = Instant::now();
        let status = exit_status(self.build(dir, portable, args)).await;
        let elapsed = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(status, 0, "{args:?} exited {status}");
        elapsed
    }

    /// Runs to the end; the wall time in ms and the peak resident memory in MiB.
    async fn time_and_peak(self, dir: &Path, portable: &Path, args: &[&str]) -> (f64, f64) {
        let started = Instant::now();
        let (status, peak) = exit_and_peak_memory(self.build(dir, portable, args)).await;
        let elapsed = started.elapsed().as_secs_f64() * 1e3;
        assert_eq!(status, 0, "{args:?} exited {status}");
        (elapsed, peak as f64 / (1024.0 * 1024.0))
    }
}

pub(crate) async fn rows(settings: &Settings, broker: &Mosquitto) -> Vec<Row> {
    let dir = tempfile::tempdir().expect("dir");
    let portable = dir.path().join("mqtt-binding.wasm");
    let written = std::process::Command::new(BIN)
        .arg("portable")
        .arg("--out")
        .arg(&portable)
        .status()
        .expect("mqtt-binding portable runs");
    assert!(written.success());
    let topic = format!("bench/portable/{}", unique());
    let file = component(
        dir.path(),
        "orders",
        &[("url", broker.url()), ("topic", topic), ("qos", "1".into())],
    );
    let invoke = ["invoke", "--component", file.as_str(), "--data", "x"];
    // wasmtime compiles the component once and caches the machine code; the figures are
    // of later runs, as a user sees them after the first.
    Command::Portable.time(dir.path(), &portable, &invoke).await;

    let mut rows = Vec::new();
    let figure = "`invoke`, one QoS 1 message of 1 B, whole process (median of each run)";
    let mut versus_native = Row {
        figure: format!("{figure}: wasmtime CLI + portable component"),
        unit: "ms",
        binding: Vec::new(),
        reference_name: "native `mqtt-binding invoke`".into(),
        reference: Vec::new(),
        higher_is_better: false,
    };
    let mut versus_pub = Row {
        reference_name: "`mosquitto_pub -q 1`".into(),
        reference: Vec::new(),
        binding: Vec::new(),
        figure: versus_native.figure.clone(),
        unit: "ms",
        higher_is_better: false,
    };
    for _ in 0..settings.runs {
        let (mut portable_ms, mut native_ms, mut pub_ms) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..settings.cold_starts {
            portable_ms.push(Command::Portable.time(dir.path(), &portable, &invoke).await);
            native_ms.push(Command::Native.time(dir.path(), &portable, &invoke).await);
            pub_ms.push(mosquitto_pub(broker).await);
        }
        versus_native.binding.push(stats(&portable_ms).0);
        versus_pub.binding.push(stats(&portable_ms).0);
        versus_native.reference.push(stats(&native_ms).0);
        versus_pub.reference.push(stats(&pub_ms).0);
    }
    rows.push(versus_native);
    rows.push(versus_pub);

    // Bounded by the wait for the process (15 s) at the slower side's rate.
    let n = settings.messages / 10;
    let mut rate = Row {
        figure: format!(
            "`read --count {n}`, QoS 1, 100 B, preloaded session, whole process: wasmtime CLI + portable component"
        ),
        unit: "msg/s",
        binding: Vec::new(),
        reference_name: "native `mqtt-binding read`".into(),
        reference: Vec::new(),
        higher_is_better: true,
    };
    let mut peak = Row {
        figure: format!(
            "`read --count {n}` as above, peak resident memory of the process: wasmtime CLI + portable component"
        ),
        unit: "MiB",
        binding: Vec::new(),
        reference_name: "native `mqtt-binding read`".into(),
        reference: Vec::new(),
        higher_is_better: false,
    };
    for _ in 0..settings.runs {
        for (command, rates, peaks) in [
            (Command::Portable, &mut rate.binding, &mut peak.binding),
            (Command::Native, &mut rate.reference, &mut peak.reference),
        ] {
            let session = Session::preload(broker, n, "portable").await;
            let file = component(
                dir.path(),
                &format!("session{}", unique().replace('-', "")),
                &session.metadata(),
            );
            let count = n.to_string();
            let args = ["read", "--component", &file, "--count", &count];
            let (ms, mib) = command.time_and_peak(dir.path(), &portable, &args).await;
            rates.push(n as f64 / (ms / 1e3));
            peaks.push(mib);
        }
    }
    rows.push(rate);
    rows.push(peak);

    let size = std::fs::metadata(&portable)
        .expect("the portable file")
        .len();
    rows.push(Row {
        figure: "the portable component's size (binding, broker plug, driver)".into(),
        unit: "MiB",
        binding: vec![size as f64 / f64::from(1 << 20)],
        reference_name: "(none)".into(),
        reference: Vec::new(),
        higher_is_better: false,
    });
    rows
}

/// One `mosquitto_pub -q 1` of one byte, its wall time in ms.
async fn mosquitto_pub(broker: &Mosquitto) -> f64 {
    let started = Instant::now();
    let status = tokio::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-t", "bench/portable/pub", "-q", "1", "-m", "x"])
        .status()
        .await
        .expect("mosquitto_pub runs");
    assert!(status.success());
    started.elapsed().as_secs_f64() * 1e3
}

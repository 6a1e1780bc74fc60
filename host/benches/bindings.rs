//! The `bindings` group: one `mqtt-binding run` carrying many MQTT bindings (distinct client
//! IDs, one broker), on the current-thread runtime and on two threads: how long until
//! `/v1.0/healthz` answers 204 (every binding connected), and the resident memory once
//! healthy, in all and per binding beyond the first.

use std::time::{Duration, Instant};

use super::faces::until_ready;
use super::{Row, Settings, resident_mib};
use crate::support::{Mosquitto, free_port, unique};

pub(crate) async fn rows(settings: &Settings, broker: &Mosquitto) -> Vec<Row> {
    let counts: &[usize] = if settings.full {
        &[1, 50, 200]
    } else {
        &[1, 5, 20]
    };
    let mut rows = Vec::new();
    for threads in [1u16, 2] {
        let mut startup = Vec::new();
        let mut idle = Vec::new();
        for &count in counts {
            let mut times = Vec::new();
            let mut memory = Vec::new();
            for _ in 0..settings.runs {
                let (took, mib) = healthy_run(broker, count, threads).await;
                times.push(took.as_secs_f64() * 1e3);
                memory.push(mib);
            }
            startup.push((count, times));
            idle.push((count, memory));
        }
        let (first, first_mib) = (&startup[0].1, &idle[0].1);
        for ((count, times), (_, memory)) in startup.iter().zip(&idle) {
            rows.push(Row {
                figure: format!(
                    "`mqtt-binding run --threads {threads}`, {count} bindings: until healthz answers 204"
                ),
                unit: "ms",
                binding: times.clone(),
                reference_name: "1 binding".into(),
                reference: first.clone(),
                higher_is_better: false,
            });
            rows.push(Row {
                figure: format!(
                    "`mqtt-binding run --threads {threads}`, {count} bindings: resident memory once healthy"
                ),
                unit: "MiB",
                binding: memory.clone(),
                reference_name: "1 binding".into(),
                reference: first_mib.clone(),
                higher_is_better: false,
            });
            if *count > 1 {
                let per_binding: Vec<f64> = memory
                    .iter()
                    .zip(first_mib)
                    .map(|(all, one)| (all - one) * 1024.0 / (*count - 1) as f64)
                    .collect();
                rows.push(Row {
                    figure: format!(
                        "`mqtt-binding run --threads {threads}`, {count} bindings: memory per binding beyond the first"
                    ),
                    unit: "KiB",
                    binding: per_binding,
                    reference_name: "(target: 1024 KiB)".into(),
                    reference: vec![1024.0],
                    higher_is_better: false,
                });
            }
        }
    }
    rows
}

/// Starts `mqtt-binding run` with `count` output bindings; how long until it is healthy,
/// and its resident memory then.
async fn healthy_run(broker: &Mosquitto, count: usize, threads: u16) -> (Duration, f64) {
    let folder = tempfile::tempdir().expect("dir");
    let mut yaml = String::new();
    for n in 0..count {
        yaml.push_str(&format!(
            "---\nkind: Component\nmetadata: {{name: b{n}}}\nspec:\n  type: bindings.mqtt\n  version: v1\n  metadata:\n  - {{name: url, value: \"{}\"}}\n  - {{name: topic, value: bench/many/{n}}}\n  - {{name: consumerID, value: \"many-{}-{n}\"}}\n  - {{name: direction, value: output}}\n",
            broker.url(),
            unique()
        ));
    }
    std::fs::write(folder.path().join("bindings.yaml"), yaml).expect("component file");
    let port = free_port();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqtt-binding"))
        .args(["--threads", &threads.to_string(), "run", "--resources-path"])
        .arg(folder.path())
        .args(["--app-id", "many", "--dapr-http-port", &port.to_string()])
        .args(["--dapr-grpc-port", &free_port().to_string()])
        .args(["--enable-metrics", "false"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("mqtt-binding run starts");
    let client = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/v1.0/healthz");
    until_ready(&format!("{count} bindings' health"), async || match client
        .get(&health)
        .send()
        .await
    {
        Ok(answer) if answer.status() == reqwest::StatusCode::NO_CONTENT => Ok(()),
        Ok(answer) => Err(answer.status().to_string()),
        Err(error) => Err(error.to_string()),
    })
    .await;
    let took = started.elapsed();
    let mib = resident_mib(child.id().expect("pid"));
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &child.id().expect("pid").to_string()])
        .status()
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    (took, mib)
}

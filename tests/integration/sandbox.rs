//! The sandbox: a hostile component (`tests/guests/hostile`, loaded from its `.wasm` as a
//! user's `--wasm` would be) that computes without calling the host is made to yield and is
//! stopped after its CPU budget, with an error that says so; the host stays responsive and
//! the next call gets a fresh instance.

use std::sync::Arc;
use std::time::Duration;

use mqtt_binding::{
    BindingError, BindingOptions, ComponentSource, InvokeRequest, Runtime, RuntimeOptions,
};

use crate::support::{
    Captured, Mosquitto, Subscriber, WAIT, eventually, exit_and_peak_memory, hostile_component,
    metadata, unique,
};

fn hostile_runtime(cpu_budget: Duration) -> Runtime {
    Runtime::new(RuntimeOptions {
        component: ComponentSource::File(hostile_component().into()),
        cpu_budget: Some(cpu_budget),
        ..RuntimeOptions::default()
    })
    .expect("the hostile component loads")
}

async fn hostile_binding(
    runtime: &Runtime,
    pairs: &[(&str, &str)],
) -> Result<mqtt_binding::Binding, BindingError> {
    let options = BindingOptions {
        name: "hostile".into(),
        app_id: format!("hostile-{}", unique()),
        metadata: metadata(pairs),
        handler: None,
    };
    tokio::time::timeout(WAIT, runtime.binding(options))
        .await
        .expect("binding creation did not hang")
}

fn request(data: &str, misbehave: Option<&str>) -> InvokeRequest {
    InvokeRequest {
        operation: "create".into(),
        data: data.as_bytes().to_vec(),
        metadata: misbehave
            .map(|how| vec![("misbehave".to_string(), how.to_string())])
            .unwrap_or_default(),
    }
}

/// Invokes with request metadata `misbehave`, expects the component to have failed, and
/// returns the error's text.
async fn failed_with(binding: &mqtt_binding::Binding, misbehave: &str) -> String {
    let outcome = tokio::time::timeout(WAIT, binding.invoke(request("never", Some(misbehave))))
        .await
        .unwrap_or_else(|_| panic!("{misbehave}: the invoke was not stopped in time"));
    match outcome {
        Err(BindingError::Component(error)) => format!("{error:#}"),
        other => panic!("{misbehave}: expected a component error, got {other:?}"),
    }
}

/// A well-behaved invoke after a failure: a fresh instance serves it and `data` arrives.
async fn served_after(binding: &mqtt_binding::Binding, subscriber: &mut Subscriber, data: &str) {
    tokio::time::timeout(WAIT, binding.invoke(request(data, None)))
        .await
        .expect("no hang")
        .unwrap_or_else(|e| panic!("a fresh instance serves the invoke after a failure: {e:#}"));
    assert_eq!(&subscriber.next().await.payload[..], data.as_bytes());
}

#[tokio::test]
async fn a_component_spinning_in_invoke_is_stopped_and_the_next_invoke_is_served() {
    let broker = Mosquitto::start();
    let topic = format!("spin/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let runtime = hostile_runtime(Duration::from_millis(300));
    let binding = hostile_binding(&runtime, &[("url", &broker.url()), ("topic", &topic)])
        .await
        .expect("init");
    assert_eq!(
        failed_with(&binding, "spin").await,
        "the component computed for more than 300 ms without calling the host (RuntimeOptions::cpu_budget); it was stopped"
    );
    served_after(&binding, &mut subscriber, "after").await;
    binding.close().await;
}

/// On one thread (the test's current-thread runtime, as the CLI and the sidecar run), an
/// invoke on a second binding completes while the first binding's component spins.
#[tokio::test]
async fn a_spinning_component_does_not_stall_the_process() {
    let broker = Mosquitto::start();
    let topic = format!("spin-other/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let runtime = hostile_runtime(Duration::from_secs(5));
    let spinner = Arc::new(
        hostile_binding(&runtime, &[("url", &broker.url()), ("topic", &topic)])
            .await
            .expect("init"),
    );
    let healthy = hostile_binding(&runtime, &[("url", &broker.url()), ("topic", &topic)])
        .await
        .expect("init");
    let spinning = {
        let spinner = spinner.clone();
        tokio::spawn(async move { spinner.invoke(request("never", Some("spin"))).await })
    };
    // Let the spinner start computing.
    tokio::task::yield_now().await;
    tokio::time::timeout(WAIT, healthy.invoke(request("meanwhile", None)))
        .await
        .expect("the other binding was served while the first one spun")
        .expect("invoke on the healthy binding");
    assert_eq!(&subscriber.next().await.payload[..], b"meanwhile");
    assert!(
        !spinning.is_finished(),
        "the spinner should still be computing (its budget is 5 s)"
    );
    let stopped = tokio::time::timeout(WAIT, spinning)
        .await
        .expect("the spinner was stopped")
        .expect("task");
    assert!(
        matches!(stopped, Err(BindingError::Component(_))),
        "{stopped:?}"
    );
    healthy.close().await;
    spinner.close().await;
}

#[tokio::test]
async fn a_component_spinning_in_init_fails_to_start_with_the_reason() {
    let runtime = hostile_runtime(Duration::from_millis(200));
    match hostile_binding(
        &runtime,
        &[("url", "tcp://127.0.0.1:1"), ("misbehave", "spin-init")],
    )
    .await
    {
        Err(BindingError::Component(error)) => {
            assert!(
                format!("{error:#}").starts_with("the component computed for more than 200 ms"),
                "{error:#}"
            )
        }
        other => panic!("expected the component to be stopped, got {other:?}"),
    }
}

#[tokio::test]
async fn a_component_taking_handles_without_end_is_stopped_at_the_limit() {
    let broker = Mosquitto::start();
    let topic = format!("handles/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let runtime = hostile_runtime(Duration::from_secs(1));
    let binding = hostile_binding(&runtime, &[("url", &broker.url()), ("topic", &topic)])
        .await
        .expect("init");
    assert_eq!(
        failed_with(&binding, "handles").await,
        "the component held more than 1024 handles at once (RuntimeOptions::max_handles); it was stopped"
    );
    served_after(&binding, &mut subscriber, "after").await;
    binding.close().await;
}

/// A call that would make the host copy 64 MiB out of the component (a content type that
/// long) is stopped at the bound of one message: the host allocates nothing for it.
#[tokio::test]
async fn a_component_asking_the_host_to_copy_more_than_a_message_is_stopped() {
    let broker = Mosquitto::start();
    let topic = format!("copy/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let runtime = hostile_runtime(Duration::from_secs(5));
    let binding = hostile_binding(&runtime, &[("url", &broker.url()), ("topic", &topic)])
        .await
        .expect("init");
    assert_eq!(
        failed_with(&binding, "copy").await,
        "the component asked the host to copy more than 17825792 bytes in one call (the largest message, RuntimeOptions::broker.max_payload_bytes, and 1 MiB); it was stopped"
    );
    served_after(&binding, &mut subscriber, "after").await;
    binding.close().await;
}

/// One line of 16 MiB and 100,000 more: the host cuts the long line to 4 KiB, writes about
/// a second's worth of the rest (100 lines), and says how many it dropped.
#[tokio::test]
async fn a_component_flooding_the_log_is_rate_limited_and_its_long_lines_cut() {
    let (captured, _logging) = Captured::logs(tracing::Level::INFO);

    let broker = Mosquitto::start();
    let topic = format!("flood/{}", unique());
    let runtime = hostile_runtime(Duration::from_secs(5));
    let binding = hostile_binding(&runtime, &[("url", &broker.url()), ("topic", &topic)])
        .await
        .expect("init");
    tokio::time::timeout(WAIT, binding.invoke(request("flooded", Some("flood"))))
        .await
        .expect("no hang")
        .expect("the flood is throttled, not fatal");
    binding.close().await;

    let log = captured.text();
    let flood_lines = log.lines().filter(|line| line.contains(" flood ")).count();
    assert!(
        (1..=200).contains(&flood_lines),
        "{flood_lines} flood lines were written"
    );
    assert!(
        log.contains("log lines of the component were dropped"),
        "no drop notice"
    );
    assert!(
        log.contains("flood over"),
        "the line after the pause was written"
    );
    let longest = log.lines().map(str::len).max().unwrap_or_default();
    assert!(longest < 8 * 1024, "a line of {longest} bytes was written");
    assert!(
        log.contains("(16773120 bytes cut)"),
        "the 16 MiB line was not cut to 4 KiB"
    );
}

/// A 100 MB log line is more than one host call may copy (one message and 1 MiB): the call
/// is refused where the line lies, in the component's memory, before anything is copied, and
/// the component is stopped. Peak resident memory of the whole `invoke` process stays well
/// below what a copy would add (the component's own 100 MB is counted): 143 MiB measured
/// without a copy, 262 MiB with one; the bound sits between. Compiling the component costs
/// memory too, so a first run fills the compilation cache, and only the second, which loads
/// from it, is measured.
#[tokio::test]
async fn a_100_mb_log_line_is_refused_before_it_is_copied_into_the_host() {
    let broker = Mosquitto::start();
    let file = crate::cli::component_file(
        broker.dir.path(),
        "hostile",
        &[("url", &broker.url()), ("topic", "t")],
    );
    let warm_up = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqtt-binding"))
        .args(["--wasm", hostile_component(), "invoke", "--component"])
        .arg(&file)
        .args(["--data", "x"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("mqtt-binding runs");
    assert!(
        warm_up.status.success(),
        "the warm-up invoke failed: {}",
        String::from_utf8_lossy(&warm_up.stderr)
    );
    let mut huge_line = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-binding"));
    huge_line
        .args(["--wasm", hostile_component(), "invoke", "--component"])
        .arg(&file)
        .args(["--data", "x", "--metadata", "misbehave=huge-line"]);
    let (status, peak) = exit_and_peak_memory(huge_line).await;
    assert_eq!(status, 1, "the invoke fails: the component was stopped");
    let peak_mib = peak / (1024 * 1024);
    assert!(
        peak_mib >= 100,
        "peak resident memory {peak_mib} MiB: the component never made its 100 MB line"
    );
    assert!(
        peak_mib < 200,
        "peak resident memory {peak_mib} MiB: the line was copied"
    );
}

/// Allocating, recursing and panicking without end: each call fails with an error that
/// says what happened, without a wasm backtrace, and the next invoke is served.
#[tokio::test]
async fn allocating_recursing_or_panicking_fails_the_call_and_the_next_is_served() {
    let broker = Mosquitto::start();
    let topic = format!("abuse/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let runtime = Runtime::new(RuntimeOptions {
        component: ComponentSource::File(hostile_component().into()),
        max_memory_bytes: 32 * 1024 * 1024,
        ..RuntimeOptions::default()
    })
    .expect("the hostile component loads");
    let binding = hostile_binding(&runtime, &[("url", &broker.url()), ("topic", &topic)])
        .await
        .expect("init");
    for (misbehaviour, expected) in [
        ("allocate", "the component ran out of memory"),
        ("recurse", "the component exhausted its call stack"),
        (
            "panic",
            "the component trapped (wasm trap: wasm `unreachable` instruction executed)",
        ),
    ] {
        let text = failed_with(&binding, misbehaviour).await;
        assert!(
            text.starts_with(expected) && !text.contains("backtrace"),
            "{misbehaviour}: {text}"
        );
        served_after(&binding, &mut subscriber, misbehaviour).await;
    }
    binding.close().await;
}

/// In `mqtt-binding run --wasm hostile.wasm`: one binding's component spins in `read`
/// again and again (stopped after 300 ms each time, restarted by the supervisor). Meanwhile
/// the sidecar answers its health check and an invoke on the other binding, and
/// `/v1.0/metadata` counts the interruptions.
#[tokio::test]
async fn a_sidecar_stays_responsive_while_one_binding_spins_in_read() {
    use crate::sidecar::{Sidecar, binding_yaml};
    use reqwest::StatusCode;

    let broker = Mosquitto::start();
    let topic = format!("sidecar-spin/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("spinner.yaml"),
        binding_yaml(
            "spinner",
            &[
                ("url", &broker.url()),
                ("topic", "unused"),
                ("consumerID", &format!("spinner-{}", unique())),
                ("direction", "input"),
                ("misbehave", "spin-read"),
            ],
            None,
        ),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("healthy.yaml"),
        binding_yaml(
            "healthy",
            &[
                ("url", &broker.url()),
                ("topic", &topic),
                ("consumerID", &format!("healthy-{}", unique())),
                ("direction", "output"),
            ],
            None,
        ),
    )
    .expect("write");
    // Any listener will do: the spinner's input side starts once the app port accepts.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("app port");
    let app_port = app.local_addr().expect("address").port();
    let sidecar = Sidecar::start_with_args(
        dir.path(),
        Some(app_port),
        &[],
        &["--wasm", hostile_component(), "--cpu-budget", "300ms"],
    )
    .await;

    // Wait until the spinner has been stopped at least twice: it spins, and is restarted.
    eventually(WAIT, async || {
        let metadata = sidecar.metadata().await;
        let faults = metadata["extended"]["binding.spinner.faults"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // "N instances thrown away after a trap, M of them stopped for CPU"
        let stopped_for_cpu: u64 = faults
            .split(", ")
            .nth(1)
            .and_then(|part| part.split(' ').next())
            .and_then(|count| count.parse().ok())
            .unwrap_or(0);
        if stopped_for_cpu >= 2 {
            return Ok(());
        }
        Err(format!("faults: {faults:?}"))
    })
    .await;
    let health = sidecar
        .client
        .get(sidecar.url("/v1.0/healthz"))
        .send()
        .await
        .expect("healthz answers");
    assert_eq!(health.status(), StatusCode::NO_CONTENT);
    let (status, body) = sidecar
        .post("healthy", r#"{"operation": "create", "data": "served"}"#)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(&subscriber.next().await.payload[..], br#""served""#);
    drop(app);
    assert!(sidecar.terminate().await.success());
}

/// `mqtt-binding --wasm hostile.wasm invoke` with a request that spins: exit 1 with the
/// reason on stderr, in one line, without a wasm backtrace.
#[tokio::test]
async fn the_cli_exits_1_with_the_reason_when_the_component_spins() {
    let broker = Mosquitto::start();
    let file = crate::cli::component_file(
        broker.dir.path(),
        "hostile",
        &[("url", &broker.url()), ("topic", "t")],
    );
    let output = crate::cli::run(&[
        "--wasm",
        hostile_component(),
        "--cpu-budget",
        "200ms",
        "invoke",
        "--component",
        file.to_str().expect("utf-8 path"),
        "--data",
        "x",
        "--metadata",
        "misbehave=spin",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the component computed for more than 200 ms without calling the host")
            && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

/// `--cpu-budget` takes a duration or `off`. `off` runs the component without the checks
/// (an invoke goes through); zero is refused with the way out.
#[tokio::test]
async fn the_cpu_budget_can_be_off_but_not_zero() {
    let broker = Mosquitto::start();
    let topic = format!("budget/{}", unique());
    let mut subscriber = Subscriber::start(broker.port, &topic).await;
    let file = crate::cli::component_file(
        broker.dir.path(),
        "budget",
        &[("url", &broker.url()), ("topic", &topic)],
    );
    let file = file.to_str().expect("utf-8 path");
    let invoke = async |budget| {
        crate::cli::run(&[
            "--cpu-budget",
            budget,
            "invoke",
            "--component",
            file,
            "--data",
            "unbudgeted",
        ])
        .await
    };

    let output = invoke("off").await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(&subscriber.next().await.payload[..], b"unbudgeted");

    let output = invoke("0s").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("a budget of zero would stop every call; say `off` for none"),
        "{stderr}"
    );
}

/// A component that dies with a message in hand has not acknowledged it: the broker keeps
/// it for the persistent session, and the real binding gets it on the next connection.
#[tokio::test]
async fn a_message_in_hand_when_the_component_dies_is_redelivered() {
    use crate::subscribe::PersistentSession;
    use crate::support::{Reader, Recorder, publish_all};

    let broker = Mosquitto::start();
    let session = PersistentSession::create(&broker, "in-hand").await;
    publish_all(
        broker.port,
        &session.topic,
        rumqttc::QoS::AtLeastOnce,
        &[b"precious".to_vec()],
    )
    .await;

    let runtime = hostile_runtime(Duration::from_secs(1));
    let mut pairs = session.metadata();
    pairs.push(("misbehave", "trap-with-message"));
    let hostile = hostile_binding(&runtime, &pairs).await.expect("init");
    let read = tokio::time::timeout(WAIT, hostile.read())
        .await
        .expect("read ended");
    match read {
        Err(BindingError::Component(error)) => assert!(
            format!("{error:#}").starts_with("the component trapped"),
            "{error:#}"
        ),
        other => panic!("expected the component to die, got {other:?}"),
    }
    hostile.close().await;

    let (recorder, mut accepted) = Recorder::failing(0);
    let reader = Reader::start(&session.metadata(), recorder).await;
    let event = accepted.next().await;
    assert_eq!(event.data, &b"precious"[..]);
    reader.stop().await.expect("read ends cleanly");
}

//! `mqtt-binding read`: the input binding on the command line. Each delivered message is one
//! JSON line on stdout; a message counts as delivered (and is acknowledged) once its line is
//! written.

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use mqtt_binding::{BindingOptions, Delivery, Event, EventHandler, Runtime, RuntimeOptions};
use mqtt_binding_cli::args::ReadArgs;
use tokio::signal::unix::{SignalKind, signal};

pub async fn run(options: RuntimeOptions, args: ReadArgs) -> anyhow::Result<()> {
    let component = mqtt_binding::component_file::single_binding(&args.component)?;
    let metadata = component
        .plain_metadata()
        .with_context(|| format!("component {:?}", component.name))?;
    let printer = Arc::new(Printer {
        printed: AtomicU64::new(0),
        limit: args.count,
        done: tokio::sync::Notify::new(),
    });
    let runtime = Runtime::new(options)?;
    let binding = runtime
        .binding(BindingOptions {
            name: component.name.clone(),
            app_id: args.app_id.unwrap_or_else(|| component.name.clone()),
            metadata,
            handler: Some(printer.clone()),
        })
        .await
        .with_context(|| format!("starting binding {:?}", component.name))?;

    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let reading = binding.read();
    tokio::pin!(reading);
    let outcome = tokio::select! {
        outcome = &mut reading => outcome,
        _ = interrupt.recv() => stop(&binding, reading).await,
        _ = terminate.recv() => stop(&binding, reading).await,
        () = printer.done.notified() => stop(&binding, reading).await,
    };
    // Acknowledgements already given go out before DISCONNECT.
    binding.close().await;
    outcome.with_context(|| format!("binding {:?}: reading", component.name))
}

async fn stop<F: std::future::Future>(
    binding: &mqtt_binding::Binding,
    reading: std::pin::Pin<&mut F>,
) -> F::Output {
    binding.shutdown();
    reading.await
}

/// Writes each event as a JSON line, up to `limit` of them.
struct Printer {
    printed: AtomicU64,
    limit: Option<u64>,
    done: tokio::sync::Notify,
}

impl EventHandler for Printer {
    fn deliver(&self, event: Event) -> Delivery<'_> {
        Box::pin(async move {
            if self
                .limit
                .is_some_and(|limit| self.printed.load(Ordering::Acquire) >= limit)
            {
                // Past --count: refuse, so the message stays with the broker for the next reader.
                return Err("--count reached".to_string());
            }
            let line =
                mqtt_binding_cli::event_line::event_line(&event.data, &event.metadata.to_vec());
            let mut stdout = std::io::stdout().lock();
            stdout
                .write_all(&line)
                .and_then(|()| stdout.flush())
                .map_err(|e| format!("writing to stdout: {e}"))?;
            let printed = self.printed.fetch_add(1, Ordering::AcqRel) + 1;
            if Some(printed) == self.limit {
                self.done.notify_one();
            }
            Ok(None)
        })
    }
}

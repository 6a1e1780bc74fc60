//! The exports: `delivery`, `logging`, `lifecycle` and our `control`, each a few lines over
//! `tally` and the shared event line.

use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::time::Duration;

use crate::tally::{Next, Tally};

#[expect(
    unsafe_code,
    reason = "wit-bindgen's generated ABI glue is unsafe by nature"
)]
mod bindings {
    wit_bindgen::generate!({
        path: ["../../wit", "../../wit/portable"],
        world: "mqtt-binding:portable/driver-app",
        // The interfaces of `binding.wit` are another package: generate them here too.
        generate_all,
    });

    use super::App;
    export!(App with_types_in crate::component::bindings);
}

use bindings::exports::mqtt_binding::binding::delivery::{
    self, DeliveryError, Event, GivenUp, GuestPending, HandedEvent, PendingBorrow, Refusal, Waited,
};
use bindings::exports::mqtt_binding::binding::lifecycle;
use bindings::exports::mqtt_binding::binding::logging::{self, Level};
use bindings::exports::mqtt_binding::portable::control;
use bindings::mqtt_binding::binding::broker::Connection;
use bindings::mqtt_binding::binding::types::Payload;
use bindings::mqtt_binding::portable::plug::{self, Waiting};

struct App;

thread_local! {
    static TALLY: Cell<Tally> = Cell::new(Tally::new(None));
    /// The least severe level written; `None` writes nothing. `warn` until configured, as
    /// the native command's default.
    static LOG_LEVEL: Cell<Option<u8>> = const { Cell::new(Some(WARN)) };
}

const WARN: u8 = 3;

fn rank(level: Level) -> u8 {
    match level {
        Level::Trace => 0,
        Level::Debug => 1,
        Level::Info => 2,
        Level::Warn => WARN,
        Level::Error => 4,
    }
}

fn stopping() -> bool {
    TALLY.with(|tally| tally.get().is_done())
}

/// Writes the event's line and flushes it: only then is the event accepted, so that the
/// binding acknowledges a message only once its line is out.
fn write_event(message: &Payload) -> Result<(), DeliveryError> {
    let mut tally = TALLY.with(Cell::get);
    let last = match tally.next() {
        Next::Refuse => return Err(DeliveryError::Stopped),
        Next::Write { last } => last,
    };
    let data = plug::payload_bytes(message);
    let metadata = plug::message_metadata(message);
    let line = mqtt_binding_cli::event_line::event_line(&data, &metadata);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&line)
        .and_then(|()| stdout.flush())
        .map_err(|error| DeliveryError::Failed(format!("writing to stdout: {error}")))?;
    tally.written();
    TALLY.with(|cell| cell.set(tally));
    if last {
        // The input ends here: the binding's next `next-messages` answers `closed`, while
        // the acknowledgement of this event still goes out.
        plug::stop();
    }
    Ok(())
}

/// Writes the event's line, then acknowledges the message when `ack` asks: what `deliver`
/// and `deliver-each` do for each event. A failed acknowledgement is logged, as the broker
/// sends the message again on its next connection: nothing is lost.
fn deliver_one(message: &Payload, ack: bool) -> Result<(), DeliveryError> {
    write_event(message)?;
    if ack && let Err(error) = plug::acknowledge(message) {
        log(
            Level::Warn,
            &format!("acknowledging a delivered message failed: {error}"),
        );
    }
    Ok(())
}

/// An event handed over with `start`: written at once, so its answer is ready.
pub struct Pending {
    answer: RefCell<Option<Result<(), DeliveryError>>>,
}

impl delivery::Guest for App {
    type Pending = Pending;

    fn deliver(event: Event<'_>) -> Result<Option<Payload>, DeliveryError> {
        deliver_one(event.message, event.ack)?;
        Ok(None)
    }

    fn deliver_each(events: Vec<HandedEvent>) -> (u32, Option<Refusal>) {
        let mut accepted = 0;
        let mut events = events.into_iter();
        while let Some(event) = events.next() {
            if let Err(error) = deliver_one(&event.message, event.ack) {
                let rest = std::iter::once(event.message)
                    .chain(events.map(|event| event.message))
                    .collect();
                return (accepted, Some(Refusal { error, rest }));
            }
            accepted += 1;
        }
        (accepted, None)
    }

    fn gave_up(how: GivenUp) {
        let how = match how {
            GivenUp::DeadLettered => "dead-lettered",
            GivenUp::LeftUnacknowledged => "left unacknowledged",
        };
        log(
            Level::Debug,
            &format!("a message the application did not accept was {how}"),
        );
    }

    fn start(event: Event<'_>) -> delivery::Pending {
        let answer = if event.ack {
            Err(DeliveryError::Failed(
                "`start` does not acknowledge (`ack` is for `deliver`)".into(),
            ))
        } else {
            write_event(event.message)
        };
        delivery::Pending::new(Pending {
            answer: RefCell::new(Some(answer)),
        })
    }
}

impl GuestPending for Pending {
    fn wait_any(
        deliveries: Vec<PendingBorrow<'_>>,
        connection: Option<&Connection>,
        timeout_ms: u32,
    ) -> Waited {
        for (index, pending) in deliveries.iter().enumerate() {
            if let Some(answer) = pending.get::<Pending>().answer.borrow_mut().take() {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                return Waited::Answered((index, answer.map(|()| None)));
            }
        }
        if stopping() {
            return Waited::Stopped;
        }
        match connection {
            Some(connection) => match plug::wait_message(connection, timeout_ms) {
                Waiting::Message => Waited::MessageWaiting,
                Waiting::TimedOut => Waited::TimedOut,
                Waiting::Closed => Waited::Stopped,
            },
            None => {
                std::thread::sleep(Duration::from_millis(u64::from(timeout_ms)));
                Waited::TimedOut
            }
        }
    }
}

fn log(level: Level, message: &str) {
    let least = LOG_LEVEL.with(Cell::get);
    if least.is_none_or(|least| rank(level) < least) {
        return;
    }
    let name = match level {
        Level::Trace => "TRACE",
        Level::Debug => "DEBUG",
        Level::Info => "INFO",
        Level::Warn => "WARN",
        Level::Error => "ERROR",
    };
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    // A log line that cannot be written has nowhere else to go.
    let _ = writeln!(
        std::io::stderr().lock(),
        "{now} {name:>5} binding: {message}"
    );
}

impl logging::Guest for App {
    fn log(level: Level, message: String) {
        log(level, &message);
    }
}

impl lifecycle::Guest for App {
    fn sleep(duration_ms: u32) -> bool {
        if stopping() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(u64::from(duration_ms)));
        !stopping()
    }
}

impl control::Guest for App {
    fn configure(log_level: Option<Level>, count: Option<u64>) {
        LOG_LEVEL.with(|cell| cell.set(log_level.map(rank)));
        TALLY.with(|cell| cell.set(Tally::new(count)));
    }
}

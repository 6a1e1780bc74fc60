//! A hostile component for the sandbox tests: it exports the binding's world and, asked
//! through metadata, misbehaves. Otherwise it is a bare binding: `init` connects to the
//! `url` (`tcp://host:port`), `invoke` publishes the data to `topic` at QoS 1.
//!
//! Misbehaviours: component metadata `misbehave: spin-init` spins in `init`, and
//! `misbehave: spin-read` in `read`, and `misbehave: trap-with-message` takes a message in
//! `read` and traps before acknowledging it; request metadata
//! `misbehave` makes that `invoke` spin (`spin`), take connection handles without end
//! (`handles`), allocate without end (`allocate`), recurse without end (`recurse`),
//! panic (`panic`), flood the log (`flood`: one line of 16 MiB and 100,000 more, then a
//! pause and one more line), log one line of 100 MB (`huge-line`), or ask the host to copy
//! 64 MiB in one call (`copy`: a content type that long) before publishing.
//!
//! It is a component only: on other targets (a workspace build) it compiles to nothing.

#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;

#[expect(
    unsafe_code,
    reason = "wit-bindgen's generated ABI glue is unsafe by nature"
)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../../wit",
        world: "mqtt-binding",
    });

    use super::Hostile;
    export!(Hostile with_types_in crate::bindings);
}

use bindings::exports::mqtt_binding::binding::binding::{
    Error, Guest, InvokeRequest, InvokeResponse,
};
use bindings::mqtt_binding::binding::broker::{
    ConnectOptions, Connection, ProtocolVersion, PublishOptions, Transport,
};
use bindings::mqtt_binding::binding::lifecycle;
use bindings::mqtt_binding::binding::logging::{self, Level};
use bindings::mqtt_binding::binding::types::{Properties, Qos};

struct Bound {
    connection: Connection,
    topic: String,
    misbehave: Option<String>,
}

thread_local! {
    static BOUND: RefCell<Option<Bound>> = const { RefCell::new(None) };
}

struct Hostile;

fn value<'a>(metadata: &'a [(String, String)], name: &str) -> Option<&'a str> {
    metadata
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Recurses without end (the result is never reached).
fn recurse(depth: u64) -> u64 {
    std::hint::black_box(recurse(std::hint::black_box(depth + 1))) + 1
}

/// Computes forever without calling the host.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

impl Guest for Hostile {
    fn init(app_id: String, metadata: Vec<(String, String)>, first: bool) -> Result<(), Error> {
        if value(&metadata, "misbehave") == Some("spin-init") {
            spin();
        }
        let url = value(&metadata, "url").unwrap_or_default();
        let address = url.strip_prefix("tcp://").unwrap_or(url);
        let (host, port) = address
            .rsplit_once(':')
            .ok_or_else(|| Error::InvalidMetadata("url: expected tcp://host:port".into()))?;
        let port = port
            .parse()
            .map_err(|_| Error::InvalidMetadata("url: bad port".into()))?;
        let connection = if first {
            Connection::connect(&ConnectOptions {
                transport: Transport::Tcp,
                host: host.to_string(),
                port,
                path: String::new(),
                failover: Vec::new(),
                protocol_version: ProtocolVersion::Mqtt311,
                client_id: value(&metadata, "consumerID").map_or(app_id, str::to_string),
                username: None,
                password: None,
                clean_session: value(&metadata, "cleanSession") != Some("false"),
                session_expiry_secs: None,
                keep_alive_secs: 30,
                ca_cert: None,
                client_cert: None,
                client_key: None,
                connect_timeout_ms: 10_000,
            })
        } else {
            Connection::join()
        }
        .map_err(Error::Broker)?;
        let topic = value(&metadata, "topic").unwrap_or("hostile").to_string();
        let misbehave = value(&metadata, "misbehave").map(str::to_string);
        BOUND.with_borrow_mut(|bound| {
            *bound = Some(Bound {
                connection,
                topic,
                misbehave,
            })
        });
        Ok(())
    }

    fn operations() -> Vec<String> {
        vec!["create".into()]
    }

    fn invoke(request: InvokeRequest) -> Result<InvokeResponse, Error> {
        match value(&request.metadata, "misbehave") {
            Some("spin") => spin(),
            Some("handles") => loop {
                // Each join is a new handle; forgetting it keeps it in the host's table.
                std::mem::forget(Connection::join().map_err(Error::Broker)?);
            },
            Some("allocate") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("recurse") => {
                std::hint::black_box(recurse(0));
            }
            Some("panic") => panic!("the hostile component panics on request"),
            Some("huge-line") => logging::log(Level::Info, &"y".repeat(100 << 20)),
            Some("copy") => return publish(&request, Some("z".repeat(64 << 20))),
            Some("flood") => {
                logging::log(Level::Info, &"y".repeat(16 << 20));
                for n in 0..100_000 {
                    logging::log(Level::Info, &format!("flood {n}"));
                }
                lifecycle::sleep(1_100);
                logging::log(Level::Info, "flood over");
            }
            _ => {}
        }
        publish(&request, None)
    }

    fn read() -> Result<(), Error> {
        BOUND.with_borrow(|bound| {
            let Some(bound) = bound.as_ref() else {
                return Err(Error::NotInitialized);
            };
            match bound.misbehave.as_deref() {
                Some("spin-read") => spin(),
                Some("trap-with-message") => {
                    // Take a message (a persistent session's queued one arrives unasked),
                    // then die before acknowledging it.
                    let messages = bound
                        .connection
                        .next_messages(1, 10_000)
                        .map_err(Error::Broker)?;
                    if !messages.is_empty() {
                        panic!("the hostile component dies with a message in hand");
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        })?;
        Err(Error::InvalidRequest(
            "this component has no input side".into(),
        ))
    }
}

/// Publishes the request's data to the bound topic at QoS 1, with `content_type` if given.
fn publish(request: &InvokeRequest, content_type: Option<String>) -> Result<InvokeResponse, Error> {
    BOUND.with_borrow(|bound| {
        let bound = bound.as_ref().ok_or(Error::NotInitialized)?;
        bound
            .connection
            .publish(
                &bound.topic,
                &request.data,
                &PublishOptions {
                    qos: Qos::AtLeastOnce,
                    retain: false,
                    properties: Properties {
                        expiry_secs: None,
                        content_type,
                        response_topic: None,
                        correlation_data: None,
                        user_properties: Vec::new(),
                        utf8_payload: false,
                    },
                    timeout_ms: 10_000,
                },
            )
            .map_err(Error::Broker)?;
        Ok(InvokeResponse {
            data: None,
            metadata: Vec::new(),
        })
    })
}

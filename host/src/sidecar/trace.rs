//! W3C Trace Context through the sidecar: the `traceparent` and `tracestate` a caller sends
//! with an output request (HTTP headers, gRPC metadata) go into the request's metadata, where
//! the component makes them MQTT 5 user properties; a received message's go to the
//! application as headers (the component puts them in the event metadata).

/// The trace context headers, in W3C's spelling.
pub(crate) const HEADERS: [&str; 2] = ["traceparent", "tracestate"];

/// Adds the caller's trace context to a request's metadata, unless the metadata already
/// names it. `header` reads one header (or gRPC metadata entry) by name.
pub(crate) fn carry<'a>(
    metadata: &mut Vec<(String, String)>,
    header: impl Fn(&str) -> Option<&'a str>,
) {
    for name in HEADERS {
        let given = metadata
            .iter()
            .any(|(key, _)| key.eq_ignore_ascii_case(name));
        if let Some(value) = header(name).filter(|_| !given) {
            metadata.push((name.to_string(), value.to_string()));
        }
    }
}

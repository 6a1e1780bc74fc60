//! The broker URL: scheme (transport and default port), host, port, WebSocket path, and
//! the user name and password it may carry (percent-decoded, never echoed in an error); or
//! several, separated by commas, of one cluster's brokers.

use percent_encoding::percent_decode_str;

use super::{Broker, MetadataError, Secret, Server, Transport, field};

/// Parses `url`: one broker's URL, or a failover list of several separated by commas
/// (`tcp://a:1883,tcp://b:1883`, as Paho's server list), which must agree on the scheme
/// family and on the credentials (given in each entry alike, or in the first only).
pub(super) fn parse_urls(value: &str) -> Result<Broker, MetadataError> {
    if !value.contains(',') {
        return parse_url(value);
    }
    let entries: Vec<&str> = value.split(',').collect();
    let count = entries.len();
    let mut brokers = Vec::with_capacity(count);
    for (n, entry) in entries.into_iter().enumerate() {
        let position = n + 1;
        let in_entry = |problem: &str| {
            MetadataError::new(
                field::URL,
                format!("entry {position} of {count}: {problem}"),
            )
        };
        if entry.trim().is_empty() {
            return Err(in_entry(
                "is empty; expected broker URLs separated by commas, as in tcp://a:1883,tcp://b:1883",
            ));
        }
        brokers.push(parse_url(entry).map_err(|error| in_entry(&error.problem))?);
    }
    let mut brokers = brokers.into_iter();
    let mut first = brokers.next().expect("a list with a comma has two entries");
    for (n, broker) in brokers.enumerate() {
        let position = n + 2;
        if broker.transport != first.transport {
            return Err(MetadataError::new(
                field::URL,
                format!(
                    "entry {position} of {count}: uses {}, but entry 1 uses {}; every broker of the list must be reached the same way",
                    broker.transport.family(),
                    first.transport.family()
                ),
            ));
        }
        let credentials_given = broker.username.is_some() || broker.password.is_some();
        if credentials_given
            && (broker.username != first.username || broker.password != first.password)
        {
            return Err(MetadataError::new(
                field::URL,
                format!(
                    "entry {position} of {count}: gives other credentials than entry 1; the brokers of a list share one login (give it in the first entry, or the same in each)"
                ),
            ));
        }
        first.failover.push(Server {
            host: broker.host,
            port: broker.port,
            path: broker.path,
        });
    }
    Ok(first)
}

/// Parses one broker URL: scheme, host, port (with the scheme's default), credentials.
fn parse_url(value: &str) -> Result<Broker, MetadataError> {
    const SCHEMES: &str = "tcp://, mqtt://, ssl://, mqtts://, tls://, tcps://, ws:// or wss://";
    let invalid = |why: String| MetadataError::new(field::URL, why);
    // The value may hold a password, so no error below echoes it whole.
    let url = url::Url::parse(value.trim()).map_err(|e| {
        invalid(format!(
            "expected a URL such as tcp://host:1883 ({SCHEMES}): {e}"
        ))
    })?;
    let (transport, default_port) = match url.scheme() {
        "tcp" | "mqtt" => (Transport::Tcp, 1883),
        "ssl" | "mqtts" | "tls" | "tcps" => (Transport::Tls, 8883),
        "ws" => (Transport::Ws, 80),
        "wss" => (Transport::Wss, 443),
        other => {
            return Err(invalid(format!(
                "expected a scheme of {SCHEMES}, got \"{other}://\""
            )));
        }
    };
    let host = match url.host() {
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        Some(host) if !host.to_string().is_empty() => host.to_string(),
        _ => {
            return Err(invalid(
                "expected a host name, as in tcp://host:1883; there is none".into(),
            ));
        }
    };
    let port = match url.port() {
        Some(0) => return Err(invalid("port 0 is not a port a broker listens on".into())),
        Some(port) => port,
        None => default_port,
    };
    let websocket = matches!(transport, Transport::Ws | Transport::Wss);
    if url.fragment().is_some()
        || (!websocket && (!matches!(url.path(), "" | "/") || url.query().is_some()))
    {
        let allowed = if websocket {
            "fragment"
        } else {
            "path, query or fragment"
        };
        return Err(invalid(format!(
            "expected no {allowed} after {}://host:port",
            url.scheme()
        )));
    }
    // The WebSocket endpoint, as the URL writes it (percent-encoding kept).
    let path = match (websocket, url.query()) {
        (false, _) => String::new(),
        (true, None) => url.path().to_string(),
        (true, Some(query)) => format!("{}?{query}", url.path()),
    };
    let decode = |part: &str, what: &str| {
        percent_decode_str(part)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| {
                invalid(format!(
                    "the {what} is not valid UTF-8 once percent-decoded"
                ))
            })
    };
    let username = match url.username() {
        "" => None,
        user => Some(decode(user, "user name")?),
    };
    let password = url
        .password()
        .map(|p| decode(p, "password").map(Secret))
        .transpose()?;
    Ok(Broker {
        transport,
        host,
        port,
        path,
        failover: Vec::new(),
        username,
        password,
    })
}

#[cfg(test)]
mod tests {
    use crate::metadata::test_support::*;
    use crate::metadata::*;

    #[test]
    fn url_schemes_and_default_ports() {
        for (url, transport, port) in [
            ("tcp://h", Transport::Tcp, 1883),
            ("mqtt://h", Transport::Tcp, 1883),
            ("ssl://h", Transport::Tls, 8883),
            ("mqtts://h", Transport::Tls, 8883),
            ("tls://h", Transport::Tls, 8883),
            ("tcps://h", Transport::Tls, 8883),
            ("TCP://h:1884/", Transport::Tcp, 1884),
            ("ssl://h:9999", Transport::Tls, 9999),
        ] {
            let broker = parse("a", &md(&[("url", url), ("topic", "t")]))
                .expect(url)
                .broker;
            assert_eq!((broker.transport, broker.port), (transport, port), "{url}");
        }
    }

    #[test]
    fn url_hosts_keep_their_form() {
        for (url, host) in [
            ("tcp://127.0.0.1:1883", "127.0.0.1"),
            ("tcp://[::1]:1883", "::1"),
            ("tcp://Broker.Example.com", "Broker.Example.com"),
        ] {
            let broker = parse("a", &md(&[("url", url), ("topic", "t")]))
                .expect(url)
                .broker;
            assert_eq!(broker.host, host, "{url}");
        }
    }

    #[test]
    fn url_credentials_are_percent_decoded() {
        let broker = parse(
            "a",
            &md(&[("url", "tcp://us%40er:p%3Ass@h:1"), ("topic", "t")]),
        )
        .expect("valid")
        .broker;
        assert_eq!(broker.username.as_deref(), Some("us@er"));
        assert_eq!(broker.password.as_ref().map(Secret::expose), Some("p:ss"));
        let broker = parse("a", &md(&[("url", "tcp://user@h"), ("topic", "t")]))
            .expect("valid")
            .broker;
        assert_eq!(
            (broker.username.as_deref(), broker.password),
            (Some("user"), None)
        );
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_the_password() {
        let cases = [
            ("", r#"metadata field "url": is empty; it is required"#),
            (
                "localhost:1883",
                r#"metadata field "url": expected a scheme of tcp://, mqtt://, ssl://, mqtts://, tls://, tcps://, ws:// or wss://, got "localhost://""#,
            ),
            (
                "http://h",
                r#"metadata field "url": expected a scheme of tcp://, mqtt://, ssl://, mqtts://, tls://, tcps://, ws:// or wss://, got "http://""#,
            ),
            (
                "ws://h/mqtt#top",
                r#"metadata field "url": expected no fragment after ws://host:port"#,
            ),
            (
                "tcp://",
                r#"metadata field "url": expected a host name, as in tcp://host:1883; there is none"#,
            ),
            (
                "tcp://u:secret@h:99999",
                r#"metadata field "url": expected a URL such as tcp://host:1883 (tcp://, mqtt://, ssl://, mqtts://, tls://, tcps://, ws:// or wss://): invalid port number"#,
            ),
            (
                "tcp://h:0",
                r#"metadata field "url": port 0 is not a port a broker listens on"#,
            ),
            (
                "tcp://u:secret@h/path",
                r#"metadata field "url": expected no path, query or fragment after tcp://host:port"#,
            ),
            (
                "no url at all",
                r#"metadata field "url": expected a URL such as tcp://host:1883 (tcp://, mqtt://, ssl://, mqtts://, tls://, tcps://, ws:// or wss://): relative URL without a base"#,
            ),
        ];
        for (url, expected) in cases {
            let error = error_of(&md(&[("url", url), ("topic", "t")]));
            assert_eq!(error, expected, "{url:?}");
            assert!(!error.contains("secret"), "{error}");
        }
        assert_eq!(
            error_of(&md(&[("topic", "t")])),
            r#"metadata field "url": is missing; it is required"#
        );
    }

    #[test]
    fn a_list_of_urls_is_a_failover_list_in_order() {
        let broker = parse(
            "a",
            &md(&[
                ("url", "tcp://u:p@a:1883, mqtt://b ,tcp://u:p@[::1]:1885"),
                ("topic", "t"),
            ]),
        )
        .expect("valid")
        .broker;
        assert_eq!(
            (broker.host.as_str(), broker.port),
            ("a", 1883),
            "the first is the broker"
        );
        let failover: Vec<(&str, u16)> = broker
            .failover
            .iter()
            .map(|server| (server.host.as_str(), server.port))
            .collect();
        assert_eq!(failover, [("b", 1883), ("::1", 1885)]);
        assert_eq!(broker.username.as_deref(), Some("u"));
        let broker = parse(
            "a",
            &md(&[("url", "wss://a/mqtt,wss://b:8443/ws"), ("topic", "t")]),
        )
        .expect("valid")
        .broker;
        assert_eq!(broker.failover[0].path, "/ws");
    }

    #[test]
    fn a_bad_entry_of_a_list_is_named_by_its_position() {
        let cases = [
            (
                "tcp://a,,tcp://c",
                r#"metadata field "url": entry 2 of 3: is empty; expected broker URLs separated by commas, as in tcp://a:1883,tcp://b:1883"#,
            ),
            (
                "tcp://a,",
                r#"metadata field "url": entry 2 of 2: is empty; expected broker URLs separated by commas, as in tcp://a:1883,tcp://b:1883"#,
            ),
            (
                "tcp://a,http://u:secret@b",
                r#"metadata field "url": entry 2 of 2: expected a scheme of tcp://, mqtt://, ssl://, mqtts://, tls://, tcps://, ws:// or wss://, got "http://""#,
            ),
            (
                "tcp://a,ssl://b",
                r#"metadata field "url": entry 2 of 2: uses MQTT over TLS (ssl://, mqtts://, tls://, tcps://), but entry 1 uses plain MQTT (tcp://, mqtt://); every broker of the list must be reached the same way"#,
            ),
            (
                "ws://a/mqtt,wss://b/mqtt",
                r#"metadata field "url": entry 2 of 2: uses WebSockets over TLS (wss://), but entry 1 uses WebSockets (ws://); every broker of the list must be reached the same way"#,
            ),
            (
                "tcp://u:secret@a,tcp://u:other-secret@b",
                r#"metadata field "url": entry 2 of 2: gives other credentials than entry 1; the brokers of a list share one login (give it in the first entry, or the same in each)"#,
            ),
        ];
        for (url, expected) in cases {
            let error = error_of(&md(&[("url", url), ("topic", "t")]));
            assert_eq!(error, expected, "{url:?}");
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn websocket_urls_keep_their_path_and_take_the_web_ports() {
        let config = parse("app", &md(&[("url", "ws://h/mqtt"), ("topic", "t")])).expect("valid");
        assert_eq!(
            (
                config.broker.transport,
                config.broker.port,
                config.broker.path.as_str()
            ),
            (Transport::Ws, 80, "/mqtt")
        );
        let config = parse(
            "app",
            &md(&[("url", "wss://u:p@h:8443/a/b%20c?x=1"), ("topic", "t")]),
        )
        .expect("valid");
        assert_eq!(
            (
                config.broker.transport,
                config.broker.port,
                config.broker.path.as_str()
            ),
            (Transport::Wss, 8443, "/a/b%20c?x=1")
        );
        let config = parse("app", &md(&[("url", "wss://h"), ("topic", "t")])).expect("valid");
        assert_eq!(
            (config.broker.port, config.broker.path.as_str()),
            (443, "/")
        );
    }
}

//! The event metadata of a received message: what the application gets beside its payload
//! (docs/BEHAVIOUR.md, "Input binding"). Built here, once per message, by whoever holds the
//! message (the native host, the portable plug), so that the component makes no strings
//! per message.

use std::borrow::Cow;

use base64::Engine as _;

use crate::{Message, QoS};

/// Event metadata names. The MQTT 5 ones are the names an output request sets the same
/// properties with (the component's `request::field`), so a request's metadata can be read
/// back from the event it becomes.
pub mod name {
    pub const TOPIC: &str = "topic";
    pub const RETAINED: &str = "retained";
    pub const QOS: &str = "qos";
    pub const DUPLICATE: &str = "duplicate";
    pub const CONTENT_TYPE: &str = "contentType";
    pub const RESPONSE_TOPIC: &str = "responseTopic";
    /// Correlation data that is UTF-8 text.
    pub const CORRELATION_DATA: &str = "correlationData";
    /// Correlation data that is not UTF-8, in standard base64.
    pub const CORRELATION_DATA_BASE64: &str = "correlationDataBase64";
    /// What is left of the message's expiry interval, in seconds.
    pub const MESSAGE_EXPIRY_INTERVAL: &str = "messageExpiryInterval";
    /// Before each user property's name.
    pub const USER_PROPERTY_PREFIX: &str = "userProperty.";
    /// W3C Trace Context user properties, also given on under their own names.
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
}

impl Message {
    /// `topic`, `retained`, `qos`, `duplicate`, then at MQTT 5 the properties the message
    /// carries: `contentType`, `responseTopic`, `correlationData` (or
    /// `correlationDataBase64`), `messageExpiryInterval`, and each user property as
    /// `userProperty.NAME` (a `traceparent` or `tracestate` also under its own name).
    ///
    /// Made as they are read, borrowed from the message wherever they can be: the four
    /// standard pairs allocate nothing, so a consumer pays only for what it keeps.
    pub fn event_metadata(&self) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
        let properties = &self.properties;
        let standard = [
            (name::TOPIC, Cow::Borrowed(self.topic.as_str())),
            (name::RETAINED, Cow::Borrowed(flag(self.retain))),
            (name::QOS, Cow::Borrowed(qos_text(self.qos))),
            (name::DUPLICATE, Cow::Borrowed(flag(self.duplicate))),
        ];
        let content_type = properties
            .content_type
            .as_deref()
            .map(|value| (name::CONTENT_TYPE, Cow::Borrowed(value)));
        let response_topic = properties
            .response_topic
            .as_deref()
            .map(|value| (name::RESPONSE_TOPIC, Cow::Borrowed(value)));
        let correlation_data =
            properties
                .correlation_data
                .as_deref()
                .map(|data| match std::str::from_utf8(data) {
                    Ok(text) => (name::CORRELATION_DATA, Cow::Borrowed(text)),
                    Err(_) => (
                        name::CORRELATION_DATA_BASE64,
                        Cow::Owned(base64::engine::general_purpose::STANDARD.encode(data)),
                    ),
                });
        let expiry = properties.expiry.map(|expiry| {
            (
                name::MESSAGE_EXPIRY_INTERVAL,
                Cow::Owned(expiry.to_string()),
            )
        });
        let fixed = standard
            .into_iter()
            .chain(content_type)
            .chain(response_topic)
            .chain(correlation_data)
            .chain(expiry)
            .map(|(name, value)| (Cow::Borrowed(name), value));
        let user = properties
            .user_properties
            .iter()
            .flat_map(|(property, value)| {
                // W3C Trace Context over MQTT: the trace goes on to the application as its own
                // header, as well as the user property it is.
                let trace = (property == name::TRACEPARENT || property == name::TRACESTATE)
                    .then_some((
                        Cow::Borrowed(property.as_str()),
                        Cow::Borrowed(value.as_str()),
                    ));
                let prefixed = (
                    Cow::Owned(format!("{}{property}", name::USER_PROPERTY_PREFIX)),
                    Cow::Borrowed(value.as_str()),
                );
                trace.into_iter().chain([prefixed])
            });
        fixed.chain(user)
    }
}

fn flag(set: bool) -> &'static str {
    if set { "true" } else { "false" }
}

fn qos_text(qos: QoS) -> &'static str {
    match qos {
        QoS::AtMostOnce => "0",
        QoS::AtLeastOnce => "1",
        QoS::ExactlyOnce => "2",
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use crate::{Message, MessageProperties, QoS};

    fn message(properties: MessageProperties) -> Message {
        Message {
            id: 7,
            topic: "sensors/1".into(),
            payload: Bytes::from_static(b"21.5"),
            qos: QoS::AtLeastOnce,
            retain: true,
            duplicate: false,
            properties,
            generation: 0,
        }
    }

    fn pairs(message: &Message) -> Vec<(String, String)> {
        message
            .event_metadata()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect()
    }

    fn strs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
        pairs
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect()
    }

    #[test]
    fn an_mqtt_3_message_has_the_four_standard_entries() {
        let metadata = pairs(&message(MessageProperties::default()));
        assert_eq!(
            strs(&metadata),
            [
                ("topic", "sensors/1"),
                ("retained", "true"),
                ("qos", "1"),
                ("duplicate", "false"),
            ]
        );
    }

    #[test]
    fn mqtt_5_properties_follow_in_order() {
        let metadata = pairs(&message(MessageProperties {
            expiry: Some(30),
            content_type: Some("application/json".into()),
            response_topic: Some("replies/1".into()),
            correlation_data: Some(Bytes::from_static(b"req-1")),
            user_properties: vec![
                ("traceparent".into(), "00-abc-def-01".into()),
                ("site".into(), "north".into()),
                ("site".into(), "south".into()),
            ],
            utf8_payload: true,
        }));
        assert_eq!(
            strs(&metadata[4..]),
            [
                ("contentType", "application/json"),
                ("responseTopic", "replies/1"),
                ("correlationData", "req-1"),
                ("messageExpiryInterval", "30"),
                ("traceparent", "00-abc-def-01"),
                ("userProperty.traceparent", "00-abc-def-01"),
                ("userProperty.site", "north"),
                ("userProperty.site", "south"),
            ]
        );
    }

    #[test]
    fn correlation_data_that_is_not_utf8_is_given_in_base64() {
        let metadata = pairs(&message(MessageProperties {
            correlation_data: Some(Bytes::from_static(&[0xff, 0x00, 0x01])),
            ..MessageProperties::default()
        }));
        assert_eq!(strs(&metadata[4..]), [("correlationDataBase64", "/wAB")]);
    }
}

//! The MQTT packets this client writes and reads, in its own terms and the same for both MQTT
//! versions: what the client sends (`Outgoing`) and what a broker sends it (`Incoming`) are
//! separate types, so that a packet a client never receives cannot reach the connection task.
//! Reason codes are the numbers the standard writes (MQTT 5 section 2.4; MQTT 3.1.1's CONNACK
//! return codes 1 to 5 as they are); what they mean is `reason`'s. Bytes on the wire, in the
//! connection's version, are `codec`'s.

use bytes::Bytes;

use crate::{MessageProperties, QoS};

/// A packet the client writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outgoing {
    Connect(Connect),
    Publish(Publish),
    /// Acknowledges a QoS 1 message; written only with success.
    PubAck(u16),
    /// Receives a QoS 2 message; written only with success.
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    Subscribe(Subscribe),
    PingReq,
    /// A normal disconnection (reason code 0x00).
    Disconnect,
}

/// A packet a broker sends to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Incoming {
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(u16),
    PubComp(u16),
    SubAck(SubAck),
    PingResp,
    Disconnect(Reason),
}

/// CONNECT. The MQTT 5 limits are left out at MQTT 3.1.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Connect {
    pub client_id: String,
    /// Seconds.
    pub keep_alive: u16,
    /// MQTT 3.1.1's clean session.
    pub clean_start: bool,
    pub login: Option<Login>,
    /// MQTT 5: how long the broker keeps the session after the connection ends, in seconds.
    pub session_expiry: Option<u32>,
    /// MQTT 5: the largest packet this client accepts.
    pub max_packet_size: Option<u32>,
}

/// User name and password.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Login {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Login {
    /// The password is never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// CONNACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnAck {
    pub session_present: bool,
    /// 0 when the connection is accepted.
    pub code: u8,
    /// MQTT 5: how many QoS 1/2 publishes the broker takes unacknowledged at once.
    pub receive_maximum: Option<u16>,
    /// MQTT 5: the largest packet the broker accepts.
    pub max_packet_size: Option<u32>,
    /// MQTT 5: the session expiry the broker chose, in seconds.
    pub session_expiry: Option<u32>,
    /// MQTT 5: the broker's words on a refusal.
    pub reason_string: Option<String>,
    /// MQTT 5: `Some(false)` when the broker says it has no shared subscriptions.
    pub shared_subscription_available: Option<bool>,
}

/// PUBLISH, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: Bytes,
    /// 0 at QoS 0; otherwise assigned by `outbox` going out.
    pub pkid: u16,
    pub payload: Bytes,
    /// Written and read at MQTT 5 only.
    pub properties: MessageProperties,
}

/// A PUBACK or PUBREC from the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ack {
    pub pkid: u16,
    pub reason: Reason,
}

/// A reason code and, at MQTT 5, the broker's words with it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Reason {
    pub code: u8,
    pub text: Option<String>,
}

/// SUBSCRIBE, one filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscribe {
    pub pkid: u16,
    pub filter: String,
    pub qos: QoS,
}

/// SUBACK: one code per filter (0, 1, 2: the QoS granted; 0x80 and up: refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubAck {
    pub pkid: u16,
    pub codes: Vec<u8>,
    pub text: Option<String>,
}

//! Message bytes the host holds for the component: the WIT `payload` resource. The
//! component passes handles along instead of copying the bytes into its memory.

use std::sync::Arc;

use bytes::Bytes;

use crate::broker::{Message, QoS};

/// The bytes behind one `payload` handle. Cloning the `Bytes` shares them, never copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload {
    pub bytes: Bytes,
    /// Set on the payload of a received message (from `next-messages`): what delivering it
    /// as an event takes.
    pub received: Option<Arc<Received>>,
}

/// A received message, as an event needs it: made once, when the component takes it.
#[derive(Debug, PartialEq, Eq)]
pub struct Received {
    /// Its id for acknowledging it.
    pub id: u64,
    pub qos: QoS,
    /// The event metadata (`topic`, `retained`, `qos`, `duplicate`, MQTT 5 properties).
    pub metadata: Vec<(String, String)>,
}

impl Payload {
    /// The payload of a received message, which takes its bytes without copying them.
    pub fn received(message: Message) -> Self {
        let received = Received {
            id: message.id,
            qos: message.qos,
            metadata: message.event_metadata(),
        };
        Self {
            bytes: message.payload,
            received: Some(Arc::new(received)),
        }
    }
}

impl From<Bytes> for Payload {
    fn from(bytes: Bytes) -> Self {
        Self {
            bytes,
            received: None,
        }
    }
}

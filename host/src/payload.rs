//! Message bytes the host holds for the component: the WIT `payload` resource. The
//! component passes handles along instead of copying the bytes into its memory.

use std::sync::Arc;

use bytes::Bytes;

use crate::broker::{Message, QoS};

/// The bytes behind one `payload` handle. Cloning the `Bytes` shares them, never copies.
#[derive(Debug, Clone, Default)]
pub struct Payload {
    pub bytes: Bytes,
    /// Set on the payload of a received message (from `next-messages`): what delivering it
    /// as an event takes.
    pub received: Option<Arc<Received>>,
}

/// A received message, as an event needs it (its payload is the [`Payload`]'s bytes).
#[derive(Debug)]
pub struct Received(Message);

impl Received {
    /// Its id for acknowledging it.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    pub fn qos(&self) -> QoS {
        self.0.qos
    }

    /// The message, without its payload (the [`Payload`]'s bytes).
    pub fn message(&self) -> &Message {
        &self.0
    }
}

impl Payload {
    /// The payload of a received message, which takes its bytes without copying them.
    pub fn received(mut message: Message) -> Self {
        Self {
            bytes: std::mem::take(&mut message.payload),
            received: Some(Arc::new(Received(message))),
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

//! Message bytes the host holds for the component: the WIT `payload` resource. The
//! component passes handles along instead of copying the bytes into its memory.

use bytes::Bytes;

/// The bytes behind one `payload` handle. Cloning the `Bytes` shares them, never copies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload(pub Bytes);

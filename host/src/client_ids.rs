//! Which binding of this process connects to which broker with which client ID. A broker
//! keeps one connection per client ID: two bindings that share one take the session from
//! each other in turn, forever (with Dapr's default, the app ID, that is any two MQTT
//! bindings of one app that set no `consumerID`). The host cannot pick another ID for them
//! (the ID names a persistent session), so it says so, naming both bindings.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Key = (String, u16, String);

/// The client IDs in use, by broker.
#[derive(Debug, Default)]
pub(crate) struct ClientIds {
    in_use: Mutex<HashMap<Key, String>>,
}

/// A binding's hold on a client ID; released when dropped.
#[derive(Debug)]
pub(crate) struct Claim {
    ids: Arc<ClientIds>,
    key: Key,
    binding: String,
}

impl ClientIds {
    /// Records that `binding` connects to `host:port` as `client_id`, and warns when
    /// another binding of this process already does.
    pub(crate) fn claim(
        self: &Arc<Self>,
        host: &str,
        port: u16,
        client_id: &str,
        binding: &str,
    ) -> Claim {
        let key = (host.to_string(), port, client_id.to_string());
        let mut in_use = self
            .in_use
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match in_use.get(&key) {
            Some(other) if other != binding => tracing::warn!(
                binding,
                "bindings {other:?} and {binding:?} connect to {host}:{port} with the same client ID {client_id:?}; a broker keeps one connection per client ID, so they will take it from each other in turn: give each its own \"consumerID\""
            ),
            _ => {}
        }
        in_use.insert(key.clone(), binding.to_string());
        Claim {
            ids: self.clone(),
            key,
            binding: binding.to_string(),
        }
    }
}

#[cfg(test)]
impl ClientIds {
    /// The binding that holds `client_id` at `host:port`, if any.
    pub(crate) fn holder(&self, host: &str, port: u16, client_id: &str) -> Option<String> {
        let key = (host.to_string(), port, client_id.to_string());
        self.in_use
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&key)
            .cloned()
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut in_use = self
            .ids
            .in_use
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if in_use.get(&self.key) == Some(&self.binding) {
            in_use.remove(&self.key);
        }
    }
}

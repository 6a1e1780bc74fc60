//! Dapr's local secret stores: `secretstores.local.env` (environment variables) and
//! `secretstores.local.file` (a JSON file). Resolving a component's `secretKeyRef`s through
//! them is left to `resources`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::component_file::{ComponentSpec, MetadataValue};

pub const ENV_STORE: &str = "secretstores.local.env";
pub const FILE_STORE: &str = "secretstores.local.file";

/// A loaded secret store.
pub enum SecretStore {
    /// Environment variables, optionally limited to those starting with `prefix`.
    Env { prefix: String },
    /// Secrets from a JSON file: secret name → (key → value).
    File {
        secrets: BTreeMap<String, BTreeMap<String, String>>,
    },
}

impl std::fmt::Debug for SecretStore {
    /// Never shows a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretStore::Env { prefix } => f.debug_struct("Env").field("prefix", prefix).finish(),
            SecretStore::File { secrets } => f
                .debug_struct("File")
                .field("secrets", &secrets.len())
                .finish(),
        }
    }
}

impl SecretStore {
    /// Loads a store component. `base` resolves a relative `secretsFile`, as daprd does
    /// from its working directory.
    pub fn load(spec: &ComponentSpec, base: &Path) -> anyhow::Result<Self> {
        let plain = |name: &str| {
            spec.item(name).map(|item| match &item.value {
                MetadataValue::Plain(value) => Ok(value.clone()),
                MetadataValue::SecretRef { .. } => {
                    bail!("metadata field {name:?}: a secret store cannot take secretKeyRef")
                }
            })
        };
        match spec.component_type.as_str() {
            ENV_STORE => Ok(SecretStore::Env {
                prefix: plain("prefix").transpose()?.unwrap_or_default(),
            }),
            FILE_STORE => {
                let file = plain("secretsFile")
                    .transpose()?
                    .filter(|file| !file.is_empty())
                    .context("metadata field \"secretsFile\" is missing; it names the JSON file")?;
                let separator = plain("nestedSeparator")
                    .transpose()?
                    .filter(|s| !s.is_empty())
                    .unwrap_or(":".into());
                let multi_valued = match plain("multiValued").transpose()?.as_deref().map(str::trim)
                {
                    None | Some("") | Some("false") => false,
                    Some("true") => true,
                    Some(other) => bail!(
                        "metadata field \"multiValued\": expected true or false, got {other:?}"
                    ),
                };
                let path = base.join(PathBuf::from(&file));
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!("metadata field \"secretsFile\": reading {}", path.display())
                })?;
                // serde_json's error names line and column, never the value.
                let json: serde_json::Value = serde_json::from_str(&text).with_context(|| {
                    format!(
                        "metadata field \"secretsFile\": {} is not JSON",
                        path.display()
                    )
                })?;
                Ok(SecretStore::File {
                    secrets: file_secrets(&json, &separator, multi_valued)?,
                })
            }
            other => bail!(
                "{other:?} is not a supported secret store (supported: {ENV_STORE}, {FILE_STORE})"
            ),
        }
    }

    /// The value of `key` in secret `name`, as Dapr's `secretKeyRef` reads it.
    pub fn get(&self, name: &str, key: &str) -> Option<String> {
        match self {
            // A single-valued secret is a map of one key: its own name.
            SecretStore::Env { prefix } => (name == key)
                .then(|| std::env::var(format!("{prefix}{name}")).ok())
                .flatten(),
            SecretStore::File { secrets } => secrets.get(name)?.get(key).cloned(),
        }
    }
}

/// Flattens the JSON document into secrets. Nested objects join their keys with
/// `separator`. Single-valued: each flattened key is a secret holding itself. Multi-valued:
/// each top-level key is a secret whose keys are its flattened contents.
fn file_secrets(
    json: &serde_json::Value,
    separator: &str,
    multi_valued: bool,
) -> anyhow::Result<BTreeMap<String, BTreeMap<String, String>>> {
    let serde_json::Value::Object(top) = json else {
        bail!("metadata field \"secretsFile\": the file must hold a JSON object");
    };
    let mut secrets = BTreeMap::new();
    if multi_valued {
        for (name, value) in top {
            let mut keys = BTreeMap::new();
            match value {
                serde_json::Value::Object(_) => flatten("", value, separator, &mut keys),
                scalar => flatten(name, scalar, separator, &mut keys),
            }
            secrets.insert(name.clone(), keys);
        }
    } else {
        let mut flat = BTreeMap::new();
        flatten("", json, separator, &mut flat);
        for (name, value) in flat {
            secrets.insert(name.clone(), BTreeMap::from([(name, value)]));
        }
    }
    Ok(secrets)
}

fn flatten(
    prefix: &str,
    value: &serde_json::Value,
    separator: &str,
    out: &mut BTreeMap<String, String>,
) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let name = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}{separator}{key}")
                };
                flatten(&name, inner, separator, out);
            }
        }
        serde_json::Value::String(text) => {
            out.insert(prefix.to_string(), text.clone());
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> serde_json::Value {
        serde_json::from_str(text).expect("json")
    }

    #[test]
    fn single_valued_files_flatten_with_the_separator() {
        let store = SecretStore::File {
            secrets: file_secrets(
                &json(r#"{"mqtt": {"password": "p", "port": 1883}, "plain": "v"}"#),
                ":",
                false,
            )
            .expect("ok"),
        };
        assert_eq!(
            store.get("mqtt:password", "mqtt:password").as_deref(),
            Some("p")
        );
        assert_eq!(store.get("mqtt:port", "mqtt:port").as_deref(), Some("1883"));
        assert_eq!(store.get("plain", "plain").as_deref(), Some("v"));
        assert_eq!(store.get("mqtt:password", "other"), None);
        assert_eq!(store.get("missing", "missing"), None);
    }

    #[test]
    fn multi_valued_files_have_keys_under_each_secret() {
        let store = SecretStore::File {
            secrets: file_secrets(
                &json(r#"{"mqtt": {"user": "u", "tls": {"key": "k"}}}"#),
                ".",
                true,
            )
            .expect("ok"),
        };
        assert_eq!(store.get("mqtt", "user").as_deref(), Some("u"));
        assert_eq!(store.get("mqtt", "tls.key").as_deref(), Some("k"));
        assert_eq!(store.get("mqtt", "mqtt"), None);
    }

    #[test]
    fn env_store_reads_variables_with_its_prefix() {
        let name = format!("MQTT_BINDING_TEST_SECRET_{}", std::process::id());
        let value = std::env::var("PATH").expect("PATH is set");
        let store = SecretStore::Env {
            prefix: String::new(),
        };
        assert_eq!(store.get("PATH", "PATH"), Some(value));
        assert_eq!(store.get(&name, &name), None);
        let prefixed = SecretStore::Env {
            prefix: "PA".into(),
        };
        assert!(prefixed.get("TH", "TH").is_some());
    }
}

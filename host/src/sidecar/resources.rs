//! A `--resources-path` folder: every Component document in its YAML files, the secret
//! stores among them, and the MQTT bindings with their `secretKeyRef`s resolved. Running
//! them is left to the sidecar.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};

use super::secrets::{ENV_STORE, FILE_STORE, SecretStore};
use crate::component_file::{self, ComponentSpec, MetadataValue};

/// An MQTT binding ready to start.
#[derive(Clone)]
pub struct BindingSpec {
    pub name: String,
    /// Secrets resolved; never logged.
    pub metadata: Vec<(String, String)>,
    pub direction: Direction,
    /// The app path input events are POSTed to: `route` metadata, else the name.
    pub route: String,
    /// `spec.ignoreErrors`: failing to start does not stop the sidecar.
    pub ignore_errors: bool,
}

impl std::fmt::Debug for BindingSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BindingSpec")
            .field("name", &self.name)
            .field("direction", &self.direction)
            .finish_non_exhaustive()
    }
}

/// Dapr's `direction` metadata: which sides of the binding run. Unset, output runs and
/// input runs if the app answers the OPTIONS probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Direction {
    pub input: Option<bool>,
    pub output: bool,
}

/// What the folder held.
#[derive(Debug, Default)]
pub struct Resources {
    pub bindings: Vec<BindingSpec>,
    /// Components that cannot start, with the reason (named, never quoting a secret).
    pub failed: Vec<(ComponentSummary, String)>,
    /// Every component found, for `/v1.0/metadata`.
    pub components: Vec<ComponentSummary>,
    /// Files, or documents in them, that hold no usable component, with the reason.
    pub skipped: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentSummary {
    pub name: String,
    pub component_type: String,
    pub version: String,
    pub ignore_errors: bool,
}

impl From<&ComponentSpec> for ComponentSummary {
    fn from(spec: &ComponentSpec) -> Self {
        Self {
            name: spec.name.clone(),
            component_type: spec.component_type.clone(),
            version: spec.version.clone(),
            ignore_errors: spec.ignore_errors,
        }
    }
}

/// Loads every `.yaml`/`.yml` file directly in `dir` (several documents per file allowed).
pub fn load(dir: &Path) -> anyhow::Result<Resources> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("--resources-path {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    let mut resources = Resources::default();
    let mut specs = Vec::new();
    for file in files {
        let name = file
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        match component_file::read_file(&file) {
            Ok(found) => {
                specs.extend(found.components);
                for why in found.skipped {
                    tracing::info!("{}: skipped {why}", file.display());
                    resources.skipped.push((name.clone(), why));
                }
            }
            Err(error) => {
                tracing::error!("skipping {}: {error:#}", file.display());
                resources.skipped.push((name, format!("{error:#}")));
            }
        }
    }

    let base = std::env::current_dir().unwrap_or_default();
    let mut stores = BTreeMap::new();
    let mut seen = BTreeMap::new();
    for spec in &specs {
        let summary = ComponentSummary::from(spec);
        if seen.insert(spec.name.clone(), ()).is_some() {
            resources.failed.push((
                summary,
                format!(
                    "component {:?} is defined twice; the later one is ignored",
                    spec.name
                ),
            ));
            continue;
        }
        resources.components.push(summary.clone());
        match spec.component_type.as_str() {
            ENV_STORE | FILE_STORE => match SecretStore::load(spec, &base) {
                Ok(store) => {
                    stores.insert(spec.name.clone(), store);
                }
                Err(error) => resources
                    .failed
                    .push((summary, format!("secret store {:?}: {error:#}", spec.name))),
            },
            _ if spec.is_mqtt_binding() => {}
            other => {
                tracing::info!(component = %spec.name, "ignoring component of type {other}: this sidecar runs bindings.mqtt only")
            }
        }
    }
    for spec in specs.iter().filter(|spec| spec.is_mqtt_binding()) {
        if resources.bindings.iter().any(|b| b.name == spec.name) {
            continue;
        }
        let summary = ComponentSummary::from(spec);
        match binding(spec, &stores) {
            Ok(binding) => resources.bindings.push(binding),
            Err(error) => resources.failed.push((summary, format!("{error:#}"))),
        }
    }
    warn_shared_client_ids(&resources.bindings);
    Ok(resources)
}

/// MQTT allows one connection per client ID: a second binding connecting with the same ID
/// makes the broker drop the first, and the two keep taking over each other's session.
/// Bindings without `consumerID` all use the app ID.
fn warn_shared_client_ids(bindings: &[BindingSpec]) {
    let defaulted: Vec<&str> = bindings
        .iter()
        .filter(|b| {
            component_file::lookup(&b.metadata, "consumerID").is_none_or(|id| id.trim().is_empty())
        })
        .map(|b| b.name.as_str())
        .collect();
    if defaulted.len() > 1 {
        tracing::warn!(
            "bindings {} have no consumerID, so all connect with the app ID as MQTT client ID and will disconnect each other on a shared broker; give each its own consumerID",
            defaulted.join(", ")
        );
    }
}

fn binding(
    spec: &ComponentSpec,
    stores: &BTreeMap<String, SecretStore>,
) -> anyhow::Result<BindingSpec> {
    let mut metadata = Vec::with_capacity(spec.metadata.len());
    for item in &spec.metadata {
        let value = match &item.value {
            MetadataValue::Plain(value) => value.clone(),
            MetadataValue::SecretRef { name, key } => {
                let store_name = spec.secret_store.as_deref().with_context(|| {
                    format!(
                        "component {:?}: metadata field {:?} uses secretKeyRef {name:?} but the component has no auth.secretStore",
                        spec.name, item.name
                    )
                })?;
                let store = stores.get(store_name).with_context(|| {
                    format!(
                        "component {:?}: metadata field {:?}: secret store {store_name:?} (auth.secretStore) is not a loaded secret store component",
                        spec.name, item.name
                    )
                })?;
                store.get(name, key).with_context(|| {
                    format!(
                        "component {:?}: metadata field {:?}: secret store {store_name:?} has no secret {name:?} with key {key:?}",
                        spec.name, item.name
                    )
                })?
            }
        };
        metadata.push((item.name.clone(), value));
    }
    let get = |field: &str| {
        component_file::lookup(&metadata, field).map(|value| value.trim().to_string())
    };
    let direction = match get("direction").filter(|d| !d.is_empty()) {
        None => Direction {
            input: None,
            output: true,
        },
        Some(text) => {
            parse_direction(&text).with_context(|| format!("component {:?}", spec.name))?
        }
    };
    let route = get("route")
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| spec.name.clone());
    Ok(BindingSpec {
        name: spec.name.clone(),
        metadata,
        direction,
        route: route.trim_start_matches('/').to_string(),
        ignore_errors: spec.ignore_errors,
    })
}

fn parse_direction(text: &str) -> anyhow::Result<Direction> {
    let mut direction = Direction {
        input: Some(false),
        output: false,
    };
    for part in text.split(',').map(|p| p.trim().to_ascii_lowercase()) {
        match part.as_str() {
            "input" => direction.input = Some(true),
            "output" => direction.output = true,
            _ => bail!(
                "metadata field \"direction\": expected \"input\", \"output\" or \"input, output\", got {text:?}"
            ),
        }
    }
    Ok(direction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_forms() {
        assert_eq!(
            parse_direction("input").expect("ok"),
            Direction {
                input: Some(true),
                output: false
            }
        );
        assert_eq!(
            parse_direction("output").expect("ok"),
            Direction {
                input: Some(false),
                output: true
            }
        );
        assert_eq!(
            parse_direction("Input, Output").expect("ok"),
            Direction {
                input: Some(true),
                output: true
            }
        );
        assert_eq!(
            parse_direction("both").expect_err("bad").to_string(),
            r#"metadata field "direction": expected "input", "output" or "input, output", got "both""#
        );
    }
}

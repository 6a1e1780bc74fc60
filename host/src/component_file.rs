//! Dapr Component YAML: reading the documents of a file into [`ComponentSpec`]s. Resolving
//! `secretKeyRef` values through secret stores is left to the caller.

use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// The component types this host runs.
pub const MQTT_BINDING_TYPES: [&str; 2] = ["bindings.mqtt", "bindings.mqtt3"];

/// One `kind: Component` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentSpec {
    pub name: String,
    pub component_type: String,
    pub version: String,
    pub metadata: Vec<MetadataItem>,
    /// `auth.secretStore`: where `secretKeyRef`s are resolved.
    pub secret_store: Option<String>,
}

/// One `spec.metadata` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataItem {
    pub name: String,
    pub value: MetadataValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataValue {
    Plain(String),
    SecretRef { name: String, key: String },
}

impl ComponentSpec {
    pub fn is_mqtt_binding(&self) -> bool {
        MQTT_BINDING_TYPES.contains(&self.component_type.as_str())
    }

    /// The metadata as name/value pairs, for a caller with no secret store: a
    /// `secretKeyRef` is an error naming the field and the reference.
    pub fn plain_metadata(&self) -> anyhow::Result<Vec<(String, String)>> {
        self.metadata
            .iter()
            .map(|item| match &item.value {
                MetadataValue::Plain(value) => Ok((item.name.clone(), value.clone())),
                MetadataValue::SecretRef { name, key } => bail!(
                    "metadata field {:?}: secretKeyRef {name:?}/{key:?} needs a secret store, which this command does not load; use `mqtt-binding run --resources-path` or give the value inline",
                    item.name
                ),
            })
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Document {
    kind: Option<String>,
    #[serde(default)]
    metadata: DocumentMetadata,
    spec: Option<Spec>,
    auth: Option<Auth>,
}

#[derive(Deserialize, Default)]
struct DocumentMetadata {
    name: Option<String>,
}

#[derive(Deserialize)]
struct Spec {
    #[serde(rename = "type")]
    component_type: Option<String>,
    version: Option<serde_yaml::Value>,
    #[serde(default)]
    metadata: Vec<RawItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawItem {
    name: Option<String>,
    value: Option<serde_yaml::Value>,
    secret_key_ref: Option<RawSecretRef>,
}

#[derive(Deserialize)]
struct RawSecretRef {
    name: Option<String>,
    key: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Auth {
    secret_store: Option<String>,
}

/// Reads every `kind: Component` document of a file; other kinds are skipped.
pub fn read_file(path: &Path) -> anyhow::Result<Vec<ComponentSpec>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| format!("component file {}", path.display()))
}

/// Parses the documents of one YAML text.
pub fn parse(text: &str) -> anyhow::Result<Vec<ComponentSpec>> {
    let mut components = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let document = Document::deserialize(document)
            .with_context(|| format!("document {}: not a Dapr Component", index + 1))?;
        if document.kind.as_deref() != Some("Component") {
            continue;
        }
        let component = convert(document).with_context(|| format!("document {}", index + 1))?;
        components.push(component);
    }
    Ok(components)
}

fn convert(document: Document) -> anyhow::Result<ComponentSpec> {
    let name = match document.metadata.name {
        Some(name) if !name.trim().is_empty() => name,
        _ => bail!("metadata.name is missing; a component needs a name"),
    };
    let spec = document
        .spec
        .with_context(|| format!("component {name:?}: spec is missing"))?;
    let component_type = spec
        .component_type
        .with_context(|| format!("component {name:?}: spec.type is missing"))?;
    let version = match spec.version {
        Some(value) => {
            scalar(&value).with_context(|| format!("component {name:?}: spec.version"))?
        }
        None => String::new(),
    };
    let mut metadata = Vec::with_capacity(spec.metadata.len());
    for (index, item) in spec.metadata.into_iter().enumerate() {
        let field = match item.name {
            Some(field) if !field.is_empty() => field,
            _ => bail!("component {name:?}: spec.metadata[{index}] has no name"),
        };
        let value = match (item.value, item.secret_key_ref) {
            (Some(_), Some(_)) => {
                bail!(
                    "component {name:?}: metadata field {field:?} has both value and secretKeyRef; give one"
                )
            }
            (None, Some(reference)) => match (reference.name, reference.key) {
                (Some(secret), key) => MetadataValue::SecretRef {
                    key: key.unwrap_or_else(|| secret.clone()),
                    name: secret,
                },
                (None, _) => bail!(
                    "component {name:?}: metadata field {field:?}: secretKeyRef.name is missing"
                ),
            },
            (Some(value), None) => MetadataValue::Plain(
                scalar(&value)
                    .with_context(|| format!("component {name:?}: metadata field {field:?}"))?,
            ),
            (None, None) => MetadataValue::Plain(String::new()),
        };
        metadata.push(MetadataItem { name: field, value });
    }
    Ok(ComponentSpec {
        name,
        component_type,
        version,
        metadata,
        secret_store: document.auth.and_then(|auth| auth.secret_store),
    })
}

/// A metadata value as Dapr reads it: strings as they are, numbers and booleans as their
/// text (`qos: 1` is `"1"`), null as empty.
fn scalar(value: &serde_yaml::Value) -> anyhow::Result<String> {
    Ok(match value {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        serde_yaml::Value::Null => String::new(),
        serde_yaml::Value::Sequence(_) => bail!("expected a string, number or boolean, got a list"),
        serde_yaml::Value::Mapping(_) => {
            bail!("expected a string, number or boolean, got a mapping")
        }
        serde_yaml::Value::Tagged(_) => {
            bail!("expected a string, number or boolean, got a tagged value")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: orders
  namespace: default
spec:
  type: bindings.mqtt
  version: v1
  metadata:
  - name: url
    value: "tcp://localhost:1883"
  - name: qos
    value: 1
  - name: retain
    value: false
  - name: consumerID
  - name: clientKey
    secretKeyRef:
      name: mqtt-secrets
      key: clientKey
auth:
  secretStore: localsecrets
"#;

    #[test]
    fn reads_a_dapr_component() {
        let components = parse(DOC).expect("valid");
        assert_eq!(
            components,
            vec![ComponentSpec {
                name: "orders".into(),
                component_type: "bindings.mqtt".into(),
                version: "v1".into(),
                metadata: vec![
                    MetadataItem {
                        name: "url".into(),
                        value: MetadataValue::Plain("tcp://localhost:1883".into())
                    },
                    MetadataItem {
                        name: "qos".into(),
                        value: MetadataValue::Plain("1".into())
                    },
                    MetadataItem {
                        name: "retain".into(),
                        value: MetadataValue::Plain("false".into())
                    },
                    MetadataItem {
                        name: "consumerID".into(),
                        value: MetadataValue::Plain(String::new())
                    },
                    MetadataItem {
                        name: "clientKey".into(),
                        value: MetadataValue::SecretRef {
                            name: "mqtt-secrets".into(),
                            key: "clientKey".into()
                        }
                    },
                ],
                secret_store: Some("localsecrets".into()),
            }]
        );
        assert!(components[0].is_mqtt_binding());
    }

    #[test]
    fn secret_refs_without_a_store_are_an_error_naming_the_field() {
        let error = parse(DOC).expect("valid")[0]
            .plain_metadata()
            .expect_err("has a secretKeyRef");
        assert!(
            error.to_string().starts_with(
                r#"metadata field "clientKey": secretKeyRef "mqtt-secrets"/"clientKey""#
            ),
            "{error}"
        );
    }

    #[test]
    fn several_documents_and_other_kinds() {
        let text = format!(
            "{DOC}\n---\nkind: Configuration\nmetadata: {{name: c}}\n---\n{}",
            DOC.replace("orders", "two")
        );
        let names: Vec<String> = parse(&text)
            .expect("valid")
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["orders", "two"]);
    }

    #[test]
    fn malformed_documents_say_where() {
        let error = parse("kind: Component\nmetadata: {name: x}\n").expect_err("no spec");
        assert_eq!(
            format!("{error:#}"),
            r#"document 1: component "x": spec is missing"#
        );
        let error = parse("kind: Component\nmetadata: {name: x}\nspec: {type: bindings.mqtt, metadata: [{name: url, value: [1]}]}\n")
            .expect_err("list value");
        assert_eq!(
            format!("{error:#}"),
            r#"document 1: component "x": metadata field "url": expected a string, number or boolean, got a list"#
        );
        let error = parse("kind: [").expect_err("bad yaml");
        assert!(
            format!("{error:#}").starts_with("document 1: not a Dapr Component: "),
            "{error:#}"
        );
    }
}

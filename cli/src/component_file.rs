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
    /// `spec.ignoreErrors`: a failure of this component does not stop the sidecar.
    pub ignore_errors: bool,
}

/// What one file held: its components, and why any other document was skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentFile {
    pub components: Vec<ComponentSpec>,
    pub skipped: Vec<String>,
}

/// Largest component file read, in bytes: far beyond any real component (certificates
/// included), small enough that a mistaken path cannot exhaust memory.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;
/// Deepest nesting of YAML flow collections (`[`, `{`) accepted. The YAML parser's time
/// grows with the square of the depth; real components nest a few levels.
pub const MAX_NESTING: usize = 64;

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

/// Whether two metadata names are the same name: Dapr matches them ignoring ASCII case.
/// The one rule for every lookup in the host.
pub fn same_name(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// The value of the first pair called `name` (see [`same_name`]).
pub fn lookup<'a>(metadata: &'a [(String, String)], name: &str) -> Option<&'a str> {
    metadata
        .iter()
        .find(|(key, _)| same_name(key, name))
        .map(|(_, value)| value.as_str())
}

impl ComponentSpec {
    /// The `spec.metadata` entry called `name` (see [`same_name`]).
    pub fn item(&self, name: &str) -> Option<&MetadataItem> {
        self.metadata
            .iter()
            .find(|item| same_name(&item.name, name))
    }

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
    version: Option<Scalar>,
    #[serde(default)]
    metadata: Vec<RawItem>,
    #[serde(default, rename = "ignoreErrors")]
    ignore_errors: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawItem {
    name: Option<String>,
    value: Option<Scalar>,
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

/// Reads every `kind: Component` document of a file; other documents are skipped, with the
/// reason. Only a regular file of at most [`MAX_FILE_BYTES`] is read, and opening it never
/// blocks (a FIFO named `x.yaml` is refused, not waited on).
pub fn read_file(path: &Path) -> anyhow::Result<ComponentFile> {
    use std::io::Read as _;
    let file =
        open_without_blocking(path).with_context(|| format!("reading {}", path.display()))?;
    let kind = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !kind.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    if kind.len() > MAX_FILE_BYTES {
        bail!(
            "{} is {} bytes, over the limit of {MAX_FILE_BYTES} bytes for a component file",
            path.display(),
            kind.len()
        );
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        bail!(
            "{} grew over the limit of {MAX_FILE_BYTES} bytes for a component file while being read",
            path.display()
        );
    }
    parse(&text).with_context(|| format!("component file {}", path.display()))
}

#[cfg(unix)]
fn open_without_blocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
}

/// WASI has no FIFOs to create, and no flag to open one without blocking.
#[cfg(not(unix))]
fn open_without_blocking(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

/// The one MQTT binding component of a file, as `invoke` and `read` take it.
pub fn single_binding(path: &Path) -> anyhow::Result<ComponentSpec> {
    let mut bindings: Vec<ComponentSpec> = read_file(path)?
        .components
        .into_iter()
        .filter(ComponentSpec::is_mqtt_binding)
        .collect();
    match bindings.len() {
        1 => Ok(bindings.remove(0)),
        0 => bail!(
            "component file {}: no component of type {} found",
            path.display(),
            MQTT_BINDING_TYPES.join(" or ")
        ),
        n => bail!(
            "component file {}: {n} MQTT binding components found; give a file with one",
            path.display()
        ),
    }
}

/// Parses the documents of one YAML text.
pub fn parse(text: &str) -> anyhow::Result<ComponentFile> {
    check_nesting(text)?;
    let mut parsed = ComponentFile::default();
    let mut options = serde_saphyr::Options::default();
    // An error must not quote the file: it may hold a password.
    options.with_snippet = false;
    // The parser's own depth budget sits above ours, so that `check_nesting` answers first,
    // naming the line; the parser's stays as the backstop.
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_NESTING + 16;
    options.budget = Some(budget);
    let documents: Vec<Document> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|error| {
            let document = document_at(text, error.location().map(|at| at.line()));
            anyhow::anyhow!("{}", error.without_snippet())
                .context(format!("document {document}: not a Dapr Component"))
        })?;
    for (index, document) in documents.into_iter().enumerate() {
        match document.kind.as_deref() {
            Some("Component") => {}
            Some(kind) => {
                parsed.skipped.push(format!(
                    "document {}: kind {kind:?} is not Component",
                    index + 1
                ));
                continue;
            }
            None => {
                parsed.skipped.push(format!(
                    "document {}: it has no kind (expected kind: Component)",
                    index + 1
                ));
                continue;
            }
        }
        let component = convert(document).with_context(|| format!("document {}", index + 1))?;
        parsed.components.push(component);
    }
    Ok(parsed)
}

/// Refuses flow collections nested deeper than [`MAX_NESTING`], before the parser sees
/// them. Brackets inside quotes and comments do not count.
fn check_nesting(text: &str) -> anyhow::Result<()> {
    // Flow collections may span lines, so the depth carries over; a quote does not.
    let mut depth = 0usize;
    for (number, line) in text.lines().enumerate() {
        let mut quote = None;
        for c in line.chars() {
            match (quote, c) {
                (Some(open), c) if c == open => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '#') => break,
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        bail!(
                            "line {}: YAML nested more than {MAX_NESTING} levels deep",
                            number + 1
                        );
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
    }
    Ok(())
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
        ignore_errors: spec.ignore_errors,
    })
}

/// A metadata value as YAML gave it: Dapr takes strings as they are, numbers and booleans as
/// their text (`qos: 1` is `"1"`), null as empty, and nothing else.
enum Scalar {
    Text(String),
    Null,
    List,
    Mapping,
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, value: &str) -> Result<Scalar, E> {
                Ok(Scalar::Text(value.to_string()))
            }
            fn visit_string<E>(self, value: String) -> Result<Scalar, E> {
                Ok(Scalar::Text(value))
            }
            fn visit_bool<E>(self, value: bool) -> Result<Scalar, E> {
                Ok(Scalar::Text(value.to_string()))
            }
            fn visit_i64<E>(self, value: i64) -> Result<Scalar, E> {
                Ok(Scalar::Text(value.to_string()))
            }
            fn visit_u64<E>(self, value: u64) -> Result<Scalar, E> {
                Ok(Scalar::Text(value.to_string()))
            }
            fn visit_f64<E>(self, value: f64) -> Result<Scalar, E> {
                Ok(Scalar::Text(value.to_string()))
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Scalar, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Scalar::List)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Scalar, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(Scalar::Mapping)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn scalar(value: &Scalar) -> anyhow::Result<String> {
    Ok(match value {
        Scalar::Text(text) => text.clone(),
        Scalar::Null => String::new(),
        Scalar::List => bail!("expected a string, number or boolean, got a list"),
        Scalar::Mapping => bail!("expected a string, number or boolean, got a mapping"),
    })
}

/// Which document (1-based) of `text` holds `line`: the number of documents begun up to
/// it, as the YAML parser sees them.
fn document_at(text: &str, line: Option<u64>) -> usize {
    use serde_saphyr::granit_parser::{Event, Parser};
    let Some(line) = line else {
        return 1;
    };
    let mut documents = 0;
    for event in Parser::new_from_str(text) {
        match event {
            Ok((Event::DocumentStart(..), span)) if span.start.line() as u64 <= line => {
                documents += 1
            }
            Ok((_, span)) if span.start.line() as u64 > line => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    documents.max(1)
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
        let components = parse(DOC).expect("valid").components;
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
                ignore_errors: false,
            }]
        );
        assert!(components[0].is_mqtt_binding());
    }

    #[test]
    fn secret_refs_without_a_store_are_an_error_naming_the_field() {
        let error = parse(DOC).expect("valid").components[0]
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
        let parsed = parse(&text).expect("valid");
        let names: Vec<String> = parsed.components.into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["orders", "two"]);
        assert_eq!(
            parsed.skipped,
            [r#"document 2: kind "Configuration" is not Component"#]
        );
    }

    #[test]
    fn a_yaml_error_says_where_and_never_quotes_the_file() {
        let text = "kind: Component\nmetadata: {name: x}\n---\nkind: Component\nspec:\n  metadata:\n  - name: url\n    value: \"tcp://user:hunter2@broker\n  - [\n";
        let error = format!("{:#}", parse(text).expect_err("broken YAML"));
        assert!(
            error.starts_with("document 2: not a Dapr Component: "),
            "{error}"
        );
        assert!(error.contains("line"), "says where: {error}");
        assert!(!error.contains("hunter2"), "quotes the file: {error}");
    }

    #[test]
    fn a_document_without_kind_is_reported() {
        let parsed = parse(
            "metadata: {name: x}
spec: {type: bindings.mqtt}
",
        )
        .expect("valid");
        assert!(parsed.components.is_empty());
        assert_eq!(
            parsed.skipped,
            ["document 1: it has no kind (expected kind: Component)"]
        );
    }

    #[test]
    fn ignore_errors_is_read_from_the_spec() {
        let text = DOC.replace("  version: v1\n", "  version: v1\n  ignoreErrors: true\n");
        assert!(parse(&text).expect("valid").components[0].ignore_errors);
    }

    #[test]
    fn nesting_at_the_limit_passes_and_one_deeper_is_refused() {
        let nested = |depth: usize| {
            format!(
                "kind: Other\nx: {}{}\n",
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        parse(&nested(MAX_NESTING)).expect("at the limit");
        let error = parse(&nested(MAX_NESTING + 1)).expect_err("too deep");
        assert_eq!(
            error.to_string(),
            "line 2: YAML nested more than 64 levels deep"
        );
        // Across lines too, and fast for a hostile depth.
        let hostile = format!("x:\n{}", "[\n".repeat(100_000));
        assert!(parse(&hostile).is_err());
        // Brackets in quotes and comments do not count.
        let quoted = format!(
            "kind: Other\nx: \"{}\" # {}\n",
            "[".repeat(100),
            "{".repeat(100)
        );
        parse(&quoted).expect("quoted brackets");
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = dir.path().join("x.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let error = read_file(&fifo).expect_err("a FIFO");
        assert!(
            error.to_string().ends_with("is not a regular file"),
            "{error}"
        );
    }

    #[test]
    fn a_file_at_the_size_limit_is_read_and_one_byte_over_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("big.yaml");
        let at_limit = format!("# {}\n", "x".repeat(MAX_FILE_BYTES as usize - 3));
        std::fs::write(&path, &at_limit).expect("write");
        read_file(&path).expect("at the limit");
        std::fs::write(&path, format!("{at_limit} ")).expect("write");
        let error = read_file(&path).expect_err("one byte over");
        assert!(
            error
                .to_string()
                .contains("over the limit of 1048576 bytes"),
            "{error}"
        );
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

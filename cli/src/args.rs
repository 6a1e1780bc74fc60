//! The arguments of `invoke` and `read`, one definition for the native command and the
//! portable driver, so that both take the same flags with the same help and errors.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// Dapr Component YAML of type bindings.mqtt (or bindings.mqtt3).
    #[arg(long, value_name = "FILE")]
    pub component: PathBuf,
    /// The binding operation.
    #[arg(long, default_value = "create")]
    pub operation: String,
    /// The payload, as text.
    #[arg(long, group = "payload", required = true)]
    pub data: Option<String>,
    /// The payload, read from a file byte for byte.
    #[arg(long, group = "payload", value_name = "PATH")]
    pub data_file: Option<PathBuf>,
    /// Request metadata, e.g. --metadata topic=orders/1 (repeatable).
    #[arg(long = "metadata", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub metadata: Vec<(String, String)>,
    /// The application ID, the default MQTT client ID; without it a unique one is made.
    #[arg(long, value_name = "ID")]
    pub app_id: Option<String>,
}

impl InvokeArgs {
    /// The payload: `--data`'s text, or `--data-file`'s bytes.
    pub fn payload(&self) -> anyhow::Result<Vec<u8>> {
        match (&self.data, &self.data_file) {
            (Some(text), _) => Ok(text.clone().into_bytes()),
            (None, Some(path)) => std::fs::read(path)
                .with_context(|| format!("reading --data-file {}", path.display())),
            (None, None) => anyhow::bail!("give --data or --data-file"),
        }
    }
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Dapr Component YAML of type bindings.mqtt (or bindings.mqtt3).
    #[arg(long, value_name = "FILE")]
    pub component: PathBuf,
    /// Exit 0 after this many messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// The application ID, the default MQTT client ID; defaults to the component's name, so
    /// that a persistent session (cleanSession=false) is found again on the next run.
    #[arg(long, value_name = "ID")]
    pub app_id: Option<String>,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

//! Parses the arguments, reads the Component file through `wasi:filesystem`, and calls the
//! binding: `init`, then one `invoke` or `read`, then the plug's `close`, so that
//! acknowledgements and DISCONNECT go out before the process ends.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mqtt_binding_broker::{BrokerError, Field, Rejection};
use mqtt_binding_cli::args::{InvokeArgs, ReadArgs};
use mqtt_binding_cli::component_file;

mod bindings {
    wit_bindgen::generate!({
        path: ["../../wit", "../../wit/portable"],
        world: "mqtt-binding:portable/driver-command",
        // The interfaces of `binding.wit` are another package: generate them here too.
        generate_all,
    });
}

use bindings::mqtt_binding::binding::binding::{self, InvokeRequest};
use bindings::mqtt_binding::binding::broker;
use bindings::mqtt_binding::binding::logging::Level;
use bindings::mqtt_binding::portable::{control, plug};

/// Dapr's MQTT binding as one WebAssembly component, for any WASI runtime.
#[derive(Parser)]
#[command(name = "mqtt-binding", version)]
struct Cli {
    /// Least severe log level written to stderr: error, warn, info, debug, trace, or off.
    #[arg(long, global = true, default_value = "warn", env = "MQTT_BINDING_LOG", value_parser = log_level)]
    log_level: LogLevel,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy)]
struct LogLevel(Option<Level>);

fn log_level(text: &str) -> Result<LogLevel, String> {
    Ok(LogLevel(match text.to_ascii_lowercase().as_str() {
        "error" => Some(Level::Error),
        "warn" => Some(Level::Warn),
        "info" => Some(Level::Info),
        "debug" => Some(Level::Debug),
        "trace" => Some(Level::Trace),
        "off" => None,
        _ => {
            return Err(format!(
                "expected error, warn, info, debug, trace or off, got {text:?}"
            ));
        }
    }))
}

#[derive(Subcommand)]
enum Command {
    /// Load a Dapr Component file, run one output binding request and exit.
    Invoke(InvokeArgs),
    /// Run the input binding, writing each message to stdout as one JSON line.
    Read(ReadArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Invoke(args) => invoke(cli.log_level, args),
        Command::Read(args) => read(cli.log_level, args),
    };
    // Acknowledgements given and DISCONNECT go out before the process ends, however it
    // ends.
    plug::close();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("mqtt-binding: {error:#}");
            // `wasi:cli/exit` with an error, not an error from `run`: runtimes report the
            // latter as a failure of their own (jco prints a stack trace).
            std::process::exit(1)
        }
    }
}

fn invoke(level: LogLevel, args: InvokeArgs) -> anyhow::Result<()> {
    let component = component_file::single_binding(&args.component)?;
    let metadata = component
        .plain_metadata()
        .with_context(|| format!("component {:?}", component.name))?;
    let data = args.payload()?;
    // No process id in WASI: a random suffix keeps two invocations from taking over each
    // other's session, as the native command's pid does.
    let app_id = args
        .app_id
        .unwrap_or_else(|| format!("mqtt-binding-{:016x}", random_u64()));
    control::configure(level.0, None);
    binding::init(&app_id, &metadata, true)
        .map_err(binding_error)
        .with_context(|| format!("starting binding {:?}", component.name))?;
    let request = InvokeRequest {
        operation: args.operation.clone(),
        data: plug::make_payload(&data),
        metadata: args.metadata,
    };
    let response = binding::invoke(request)
        .map_err(binding_error)
        .with_context(|| {
            format!(
                "binding {:?}: operation {:?}",
                component.name, args.operation
            )
        })?;
    if let Some(data) = response.data {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(&data)?;
        stdout.flush()?;
    }
    Ok(())
}

fn read(level: LogLevel, args: ReadArgs) -> anyhow::Result<()> {
    let component = component_file::single_binding(&args.component)?;
    let metadata = component
        .plain_metadata()
        .with_context(|| format!("component {:?}", component.name))?;
    let app_id = args.app_id.unwrap_or_else(|| component.name.clone());
    control::configure(level.0, args.count);
    binding::init(&app_id, &metadata, true)
        .map_err(binding_error)
        .with_context(|| format!("starting binding {:?}", component.name))?;
    binding::read()
        .map_err(binding_error)
        .with_context(|| format!("binding {:?}: reading", component.name))
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    // std seeds its hash keys from `wasi:random`.
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// The binding's error as the native command prints it (its `BindingError`).
fn binding_error(error: binding::Error) -> anyhow::Error {
    match error {
        binding::Error::InvalidMetadata(text) | binding::Error::InvalidRequest(text) => {
            anyhow::Error::msg(text)
        }
        binding::Error::Broker(error) => broker_error(error).into(),
        binding::Error::NotInitialized => {
            anyhow::Error::msg("the binding was called before init succeeded")
        }
    }
}

fn broker_error(error: broker::Error) -> BrokerError {
    match error {
        broker::Error::InvalidOption(option) => BrokerError::InvalidOption {
            field: match option.field {
                broker::ConnectField::Host => Field::Host,
                broker::ConnectField::Path => Field::Path,
                broker::ConnectField::ClientId => Field::ClientId,
                broker::ConnectField::CaCert => Field::CaCert,
                broker::ConnectField::ClientCert => Field::ClientCert,
                broker::ConnectField::ClientKey => Field::ClientKey,
            },
            reason: option.reason,
        },
        broker::Error::Unreachable(s) => BrokerError::Unreachable(s),
        broker::Error::Tls(s) => BrokerError::Tls(s),
        broker::Error::NotAuthorized(s) => BrokerError::NotAuthorized(s),
        broker::Error::Timeout(s) => BrokerError::Timeout(s),
        broker::Error::Unconfirmed(s) => BrokerError::Unconfirmed(s),
        broker::Error::TooLarge(s) => BrokerError::TooLarge(s),
        broker::Error::Closed => BrokerError::Closed,
        broker::Error::Other(s) => BrokerError::Other(s),
        broker::Error::Rejected(rejection) => BrokerError::Rejected(Rejection {
            code: rejection.reason_code,
            reason: rejection.reason,
            retryable: rejection.retryable,
        }),
    }
}

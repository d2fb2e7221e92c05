//! The settings: one table of environment variables with their defaults, meanings and parsers.
//! `--help` prints it, `Settings::from_env` reads it, and the tests hold the README and the
//! Dockerfile to it.

use std::time::Duration;

use crate::auth::Algorithm;
use crate::logging::Format;

/// One row of the table, as `--help` and the README show it.
pub struct Setting {
    pub name: &'static str,
    /// The value when the variable is unset or empty; "" means unset.
    pub default: &'static str,
    pub meaning: &'static str,
}

/// Declares `Settings` (one typed field per row), `SETTINGS` (the rows, in `--help`'s order) and
/// `Settings::from_env`, from one list: each fact is written once.
macro_rules! settings {
    ($($field:ident: $type:ty = $name:literal, $default:literal, $parse:expr, $meaning:literal;)*) => {
        pub struct Settings {
            $(pub $field: $type,)*
        }

        pub const SETTINGS: &[Setting] = &[$(Setting { name: $name, default: $default, meaning: $meaning },)*];

        impl Settings {
            /// Every setting from the environment; a bad value is an error that names it.
            pub fn from_env() -> Result<Settings, String> {
                Ok(Settings { $($field: read($name, $default, $parse)?,)* })
            }
        }
    };
}

settings! {
    listen: Vec<String> = "TYK_PLUGIN_LISTEN", "[::]:50051", listen_addresses,
        "comma-separated addresses; `unix:/path` for a Unix socket";
    max_message_bytes: i32 = "TYK_PLUGIN_MAX_MESSAGE_BYTES", "67108864", message_bytes,
        "largest message received or sent (64 MiB); larger calls get `RESOURCE_EXHAUSTED`";
    memory_limit: usize = "TYK_PLUGIN_MEMORY_LIMIT", "268435456", memory_bytes,
        "bytes the calls in flight may take (256 MiB): gRPC's buffers and each call's copies; a call beyond it gets `RESOURCE_EXHAUSTED`";
    workers: usize = "TYK_PLUGIN_WORKERS", "64", workers,
        "most threads running hook logic at once: as many as cores, more while hooks wait on I/O; calls beyond them queue in order";
    hmac_keys_file: Option<String> = "TYK_PLUGIN_HMAC_KEYS_FILE", "", path,
        "JSON keys file (see HMAC custom authentication); unset: the tyk-demo's public key, with a warning";
    clock_skew: Duration = "TYK_PLUGIN_HMAC_CLOCK_SKEW", "300", seconds,
        "seconds a signed date may be off from now; `0` turns the check off";
    hmac_required_headers: Vec<String> = "TYK_PLUGIN_HMAC_REQUIRED_HEADERS", "date", header_names,
        "headers every signature must cover, space-separated, e.g. `(request-target) host date digest`";
    hmac_algorithms: Vec<Algorithm> = "TYK_PLUGIN_HMAC_ALGORITHMS", "hmac-sha1,hmac-sha256,hmac-sha384,hmac-sha512,rsa-sha256", algorithms,
        "signature algorithms accepted, comma-separated";
    log_secrets: bool = "TYK_PLUGIN_LOG_SECRETS", "0", flag,
        "`1` logs secrets unredacted (debugging only)";
    log_redact_headers: Vec<String> = "TYK_PLUGIN_LOG_REDACT_HEADERS", "", header_names,
        "more request headers to log as `[redacted]`, space-separated (credential headers always are)";
    log_bodies: bool = "TYK_PLUGIN_LOG_BODIES", "1", flag,
        "`0` leaves request and response bodies out of the log";
    max_connection_age: Duration = "TYK_PLUGIN_MAX_CONNECTION_AGE", "30", seconds,
        "seconds before a connection is asked to reconnect (±10%), so clients spread onto new replicas and a drain loses no call; `0`: never";
    shutdown_grace: Duration = "TYK_PLUGIN_SHUTDOWN_GRACE", "10", seconds,
        "seconds to answer calls in flight once new calls are refused";
    max_connection_age_grace: Duration = "TYK_PLUGIN_MAX_CONNECTION_AGE_GRACE", "30", seconds,
        "seconds an aged connection gets to finish its calls";
    keepalive_time: Duration = "TYK_PLUGIN_KEEPALIVE_TIME", "60", seconds,
        "seconds between pings on a connection, so dead gateways' connections are closed; `0`: no pings";
    keepalive_timeout: Duration = "TYK_PLUGIN_KEEPALIVE_TIMEOUT", "20", seconds,
        "seconds to wait for a ping's answer";
    metrics_listen: Option<String> = "TYK_PLUGIN_METRICS_LISTEN", "", metrics_address,
        "host:port to serve Prometheus metrics on, at `GET /metrics`; unset: no metrics";
    log_format: Format = "TYK_PLUGIN_LOG_FORMAT", "text", log_format,
        "`json`: each log line one JSON object (timestamp, level, message; a call's hook, name, api, trace and object as fields)";
    log_filter: String = "RUST_LOG", "info", log_filter,
        "`info` logs every object; `warn` logs only problems (and builds no JSON at all)";
}

/// `--help`: usage, then the table.
pub fn help() -> String {
    let width = SETTINGS.iter().map(|setting| setting.name.len()).max().unwrap_or(0);
    let rows: Vec<String> = SETTINGS
        .iter()
        .map(|setting| {
            let default = if setting.default.is_empty() { "(unset)" } else { setting.default };
            format!("  {:width$}  {default:10}  {}", setting.name, setting.meaning.replace('`', ""))
        })
        .collect();
    format!(
        "tyk-grpc-plugin: a gRPC plugin server for Tyk Gateway (service coprocess.Dispatcher)

Usage: tyk-grpc-plugin [--help | --version | --health-check]

  --health-check  ask the server at the first TYK_PLUGIN_LISTEN address for its gRPC health;
                  exit 0 when SERVING (for container health checks)

Settings, from the environment (an empty value counts as unset; seconds may have decimals):
{}

Signals: SIGTERM or SIGINT drain and exit (a second one exits at once); SIGHUP re-reads the keys file.
",
        rows.join("\n")
    )
}

/// A setting from the environment (`default` when unset or empty), parsed; a bad value is an error
/// that names the setting and says what it should be.
pub fn read<T>(name: &str, default: &str, parse: fn(&str) -> Result<T, &'static str>) -> Result<T, String> {
    let value = match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value.trim().to_owned(),
        Ok(_) | Err(std::env::VarError::NotPresent) => default.to_owned(),
        Err(std::env::VarError::NotUnicode(_)) => return Err(format!("{name} is not UTF-8")),
    };
    parse(&value).map_err(|expected| format!("{name}={value:?} is not {expected}"))
}

pub fn listen_addresses(value: &str) -> Result<Vec<String>, &'static str> {
    let addresses: Vec<String> = value.split(',').map(|address| address.trim().to_owned()).collect();
    match addresses.iter().all(|address| is_listen_address(address)) {
        true => Ok(addresses),
        false => Err("host:port or unix:/path, comma-separated"),
    }
}

fn is_listen_address(address: &str) -> bool {
    match address.strip_prefix("unix:") {
        Some(path) => !path.is_empty(),
        None => address.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
    }
}

fn message_bytes(value: &str) -> Result<i32, &'static str> {
    value.parse().ok().filter(|&bytes: &i32| bytes > 0).ok_or("a whole number of bytes from 1 to 2147483647")
}

fn metrics_address(value: &str) -> Result<Option<String>, &'static str> {
    match value {
        "" => Ok(None),
        _ if !value.starts_with("unix:") && is_listen_address(value) => Ok(Some(value.to_owned())),
        _ => Err("host:port"),
    }
}

fn memory_bytes(value: &str) -> Result<usize, &'static str> {
    value.parse().ok().filter(|&bytes: &usize| bytes >= 1 << 20).ok_or("a whole number of bytes, 1048576 or more")
}

fn workers(value: &str) -> Result<usize, &'static str> {
    value.parse().ok().filter(|workers| (1..=4096).contains(workers)).ok_or("a whole number from 1 to 4096")
}

fn path(value: &str) -> Result<Option<String>, &'static str> {
    Ok((!value.is_empty()).then(|| value.to_owned()))
}

fn seconds(value: &str) -> Result<Duration, &'static str> {
    value
        .parse::<f64>()
        .ok()
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or("a number of seconds (0 or more)")
}

fn flag(value: &str) -> Result<bool, &'static str> {
    match value {
        "0" | "false" => Ok(false),
        "1" | "true" => Ok(true),
        _ => Err("0 or 1"),
    }
}

/// Lower-case header names, separated by spaces or commas; `(request-target)` is one too.
fn header_names(value: &str) -> Result<Vec<String>, &'static str> {
    let names: Vec<String> =
        value.split([' ', ',']).filter(|name| !name.is_empty()).map(str::to_ascii_lowercase).collect();
    let valid = |name: &String| {
        name == "(request-target)" || name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
    };
    names.iter().all(valid).then_some(names).ok_or("header names separated by spaces")
}

fn algorithms(value: &str) -> Result<Vec<Algorithm>, &'static str> {
    let names = value.split(',').map(str::trim);
    let algorithms: Option<Vec<Algorithm>> = names.map(Algorithm::from_name).collect();
    algorithms
        .filter(|algorithms| !algorithms.is_empty())
        .ok_or("a comma-separated list of hmac-sha1, hmac-sha256, hmac-sha384, hmac-sha512, rsa-sha256")
}

fn log_format(value: &str) -> Result<Format, &'static str> {
    match value {
        "text" => Ok(Format::Text),
        "json" => Ok(Format::Json),
        _ => Err("text or json"),
    }
}

fn log_filter(value: &str) -> Result<String, &'static str> {
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_parses() {
        for setting in SETTINGS {
            std::env::remove_var(setting.name);
        }
        let settings = Settings::from_env().unwrap();
        assert_eq!(settings.listen, ["[::]:50051"]);
        assert_eq!(settings.workers, 64);
        assert_eq!(settings.hmac_keys_file, None);
        assert_eq!(settings.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn listen_addresses_are_host_port_or_unix_paths() {
        assert_eq!(listen_addresses(" 127.0.0.1:1 , unix:/run/p.sock").unwrap(), ["127.0.0.1:1", "unix:/run/p.sock"]);
        assert_eq!(listen_addresses("[::1]:50051").unwrap(), ["[::1]:50051"]);
        for bad in ["localhost", ":1", "h:", "h:65536", "h:-1", "unix:", "127.0.0.1:0,,", ""] {
            assert!(listen_addresses(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn numbers_and_flags_are_checked() {
        assert_eq!(seconds("0.5"), Ok(Duration::from_millis(500)));
        for bad in ["-1", "NaN", "1e400", "1s", "ten", "inf"] {
            assert!(seconds(bad).is_err(), "{bad:?}");
        }
        assert_eq!(message_bytes("1"), Ok(1));
        assert!(message_bytes("0").is_err() && message_bytes("4294967296").is_err());
        assert!(workers("0").is_err() && workers("4097").is_err() && workers("8").is_ok());
        assert_eq!((flag("1"), flag("false")), (Ok(true), Ok(false)));
        assert!(flag("yes").is_err());
        assert_eq!(
            header_names("(Request-Target) Host,date"),
            Ok(vec!["(request-target)".into(), "host".into(), "date".into()])
        );
        assert!(header_names("date\nx").is_err() && header_names("a:b").is_err());
        assert_eq!(algorithms("HMAC-SHA256, rsa-sha256"), Ok(vec![Algorithm::HmacSha256, Algorithm::RsaSha256]));
        assert!(algorithms("hmac-md5").is_err() && algorithms("").is_err());
    }

    #[test]
    fn a_bad_value_names_the_setting_and_what_it_should_be() {
        std::env::set_var("TYK_PLUGIN_TEST_SETTING", " ten ");
        assert_eq!(
            read("TYK_PLUGIN_TEST_SETTING", "1", seconds).unwrap_err(),
            "TYK_PLUGIN_TEST_SETTING=\"ten\" is not a number of seconds (0 or more)"
        );
        std::env::set_var("TYK_PLUGIN_TEST_SETTING", " ");
        assert_eq!(read("TYK_PLUGIN_TEST_SETTING", "2", seconds), Ok(Duration::from_secs(2)), "empty is unset");
    }

    #[test]
    fn help_prints_every_row() {
        let help = help();
        for setting in SETTINGS {
            let line = help.lines().find(|line| line.trim_start().starts_with(setting.name)).unwrap();
            let default = if setting.default.is_empty() { "(unset)" } else { setting.default };
            assert_eq!(line.split_whitespace().nth(1), Some(default), "{line}");
        }
    }
}

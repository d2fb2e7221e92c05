//! tyk-grpc-plugin: a gRPC plugin server for Tyk Gateway, a drop-in for the Tyk demo's Python one.
//!
//! The gateway calls `coprocess.Dispatcher/Dispatch` once per configured plugin per API request,
//! and `DispatchEvent` for events. This file is the whole service, top to bottom: the settings,
//! the wiring (gRPC server, health, reflection, signals, graceful drain), then the handlers. The
//! handler is where your own hook logic goes. HMAC authentication lives in auth.rs, the log
//! lines' JSON printer in json.rs.

mod auth;
mod health;
mod json;
mod proto;
mod reflection;

use std::io::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, RwLock};
use std::time::{Duration, Instant};

use grpcio::{
    ChannelBuilder, Environment, RpcContext, RpcStatus, RpcStatusCode, Server, ServerBuilder, ServerCredentials,
    ServiceBuilder, UnarySink, UnarySinkResult,
};
use log::{info, log_enabled, warn, Level};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use auth::Keys;
use health::Health;
use json::Json;
use proto::{Event, EventReply, HookType, Object};

const VERSION: &str = env!("CARGO_PKG_VERSION");

const HELP: &str = "\
tyk-grpc-plugin: a gRPC plugin server for Tyk Gateway (service coprocess.Dispatcher)

Usage: tyk-grpc-plugin [--help | --version | --health-check]

  --health-check  ask the server at the first TYK_PLUGIN_LISTEN address for its gRPC health;
                  exit 0 when SERVING (for container health checks)

Settings, from the environment (an empty value counts as unset):
  TYK_PLUGIN_LISTEN                    [::]:50051  comma-separated addresses; unix:/path for a Unix socket
  TYK_PLUGIN_MAX_MESSAGE_BYTES         67108864    largest message received or sent (64 MiB)
  TYK_PLUGIN_HMAC_KEYS_FILE            (unset)     JSON keys file; unset: the tyk-demo's key, with a warning
  TYK_PLUGIN_HMAC_CLOCK_SKEW           300         seconds a signed date may differ from now; 0: no check
  TYK_PLUGIN_LOG_SECRETS               0           1: log secrets unredacted (debugging only)
  TYK_PLUGIN_DRAIN_DELAY               0           seconds to keep serving after SIGTERM/SIGINT with health
                                                   NOT_SERVING, so health-checking clients leave first
  TYK_PLUGIN_SHUTDOWN_GRACE            10          seconds to answer calls in flight after that
  TYK_PLUGIN_MAX_CONNECTION_AGE        300         seconds before a connection is asked to reconnect; 0: never
  TYK_PLUGIN_MAX_CONNECTION_AGE_GRACE  30          seconds an aged connection gets to finish its calls
  TYK_PLUGIN_KEEPALIVE_TIME            60          seconds between pings on an idle connection; 0: no pings
  TYK_PLUGIN_KEEPALIVE_TIMEOUT         20          seconds to wait for a ping's answer before closing
  RUST_LOG                             info        log level: info logs every object; warn logs problems only

Signals: SIGTERM or SIGINT drain and exit (a second one exits at once); SIGHUP re-reads the keys file.
";

struct Settings {
    listen: Vec<String>,
    max_message_bytes: i32,
    hmac_keys_file: Option<String>,
    clock_skew: Duration,
    log_secrets: bool,
    drain_delay: Duration,
    shutdown_grace: Duration,
    max_connection_age: Duration,
    max_connection_age_grace: Duration,
    keepalive_time: Duration,
    keepalive_timeout: Duration,
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        Ok(Settings {
            listen: setting("TYK_PLUGIN_LISTEN", "[::]:50051", "host:port or unix:/path, comma-separated", |value| {
                let addresses: Vec<String> = value.split(',').map(|address| address.trim().to_owned()).collect();
                addresses.iter().all(|address| is_listen_address(address)).then_some(addresses)
            })?,
            max_message_bytes: setting(
                "TYK_PLUGIN_MAX_MESSAGE_BYTES",
                "67108864",
                "a whole number of bytes from 1 to 2147483647",
                |value| value.parse().ok().filter(|&bytes: &i32| bytes > 0),
            )?,
            hmac_keys_file: setting("TYK_PLUGIN_HMAC_KEYS_FILE", "", "a path", |path| {
                Some((!path.is_empty()).then(|| path.to_owned()))
            })?,
            clock_skew: seconds("TYK_PLUGIN_HMAC_CLOCK_SKEW", "300")?,
            log_secrets: setting("TYK_PLUGIN_LOG_SECRETS", "0", "0 or 1", |value| match value {
                "0" | "false" => Some(false),
                "1" | "true" => Some(true),
                _ => None,
            })?,
            drain_delay: seconds("TYK_PLUGIN_DRAIN_DELAY", "0")?,
            shutdown_grace: seconds("TYK_PLUGIN_SHUTDOWN_GRACE", "10")?,
            max_connection_age: seconds("TYK_PLUGIN_MAX_CONNECTION_AGE", "300")?,
            max_connection_age_grace: seconds("TYK_PLUGIN_MAX_CONNECTION_AGE_GRACE", "30")?,
            keepalive_time: seconds("TYK_PLUGIN_KEEPALIVE_TIME", "60")?,
            keepalive_timeout: seconds("TYK_PLUGIN_KEEPALIVE_TIMEOUT", "20")?,
        })
    }
}

/// A setting from the environment (`default` when unset or empty), parsed; a bad value is an error
/// that names the setting and what it should be.
fn setting<T>(name: &str, default: &str, expected: &str, parse: impl Fn(&str) -> Option<T>) -> Result<T, String> {
    let value = match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => value.trim().to_owned(),
        Ok(_) | Err(std::env::VarError::NotPresent) => default.to_owned(),
        Err(std::env::VarError::NotUnicode(_)) => return Err(format!("{name} is not UTF-8")),
    };
    parse(&value).ok_or_else(|| format!("{name}={value:?} is not {expected}"))
}

fn seconds(name: &str, default: &str) -> Result<Duration, String> {
    setting(name, default, "a number of seconds (0 or more)", |value| {
        value.parse::<f64>().ok().and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
    })
}

fn is_listen_address(address: &str) -> bool {
    match address.strip_prefix("unix:") {
        Some(path) => !path.is_empty(),
        None => address.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok()),
    }
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("--help" | "-h") => return print!("{HELP}"),
        Some("--version" | "-V") => return println!("tyk-grpc-plugin {VERSION}"),
        Some("--health-check") => std::process::exit(health_check()),
        Some(other) => {
            eprintln!("tyk-grpc-plugin: unknown argument {other:?}; see --help");
            std::process::exit(2);
        }
    }
    // One line per record, in env_logger's usual layout, written as it is: no colour codes to strip
    // and no multi-line indenting to scan for, which the default writer does byte by byte.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|out, record| {
            writeln!(out, "[{} {:<5} {}] {}", out.timestamp(), record.level(), record.target(), record.args())
        })
        .init();
    // gRPC core's own lines go through the same logger; redirect_log takes core's verbosity from
    // the log level, and core is worth hearing at error level only.
    let level = log::max_level();
    log::set_max_level(level.min(log::LevelFilter::Warn));
    grpcio::redirect_log();
    log::set_max_level(level);
    let code = serve().unwrap_or_else(|error| {
        eprintln!("tyk-grpc-plugin: {error}");
        1
    });
    std::process::exit(code);
}

enum Notice {
    Signal(i32),
    Drained,
}

/// Serves until a signal ends it; returns the exit code.
fn serve() -> Result<i32, String> {
    let settings = Settings::from_env()?;
    let keys = Arc::new(RwLock::new(Arc::new(load_keys(settings.hmac_keys_file.as_deref())?)));
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| format!("cannot handle signals: {e}"))?;

    let env = Arc::new(Environment::new(std::thread::available_parallelism().map_or(2, |n| n.get())));
    let health = Health::default();
    let dispatcher =
        Dispatcher { keys: keys.clone(), clock_skew: settings.clock_skew, log_secrets: settings.log_secrets };
    let events = dispatcher.clone();
    let service = ServiceBuilder::new()
        .add_unary_handler(&proto::DISPATCH, move |ctx, object, sink| dispatcher.dispatch(ctx, object, sink))
        .add_unary_handler(&proto::DISPATCH_EVENT, move |ctx, event, sink| events.dispatch_event(ctx, event, sink))
        .build();
    let millis = |duration: Duration| match duration.as_millis() {
        0 => i32::MAX, // gRPC's "never"
        ms => ms.min(i32::MAX as u128) as i32,
    };
    let channel_args = ChannelBuilder::new(env.clone())
        .max_receive_message_len(settings.max_message_bytes)
        .max_send_message_len(settings.max_message_bytes)
        .raw_cfg_int(c"grpc.max_connection_age_ms".into(), millis(settings.max_connection_age))
        .raw_cfg_int(c"grpc.max_connection_age_grace_ms".into(), millis(settings.max_connection_age_grace))
        .raw_cfg_int(c"grpc.keepalive_time_ms".into(), millis(settings.keepalive_time))
        .raw_cfg_int(c"grpc.keepalive_timeout_ms".into(), millis(settings.keepalive_timeout))
        .raw_cfg_int(c"grpc.keepalive_permit_without_calls".into(), 1)
        .raw_cfg_int(c"grpc.http2.max_pings_without_data".into(), 0)
        .build_args();
    let mut server = ServerBuilder::new(env)
        .channel_args(channel_args)
        .register_service(service)
        .register_service(health.service())
        .register_service(reflection::service())
        .build()
        .map_err(|e| format!("cannot create the gRPC server: {e}"))?;
    let mut bound = Vec::new();
    for address in &settings.listen {
        let port = listen(&mut server, address)?;
        bound.push(match address.strip_suffix(":0") {
            Some(host) => format!("{host}:{port}"),
            None => address.clone(),
        });
    }
    server.start();
    if settings.hmac_keys_file.is_none() {
        warn!("TYK_PLUGIN_HMAC_KEYS_FILE is not set: accepting the tyk-demo's public HMAC key; set a keys file in production");
    }
    info!(
        "tyk-grpc-plugin {VERSION} listening on {}; {} HMAC key(s); messages up to {} bytes; clock skew {:?}; \
         drain delay {:?}, shutdown grace {:?}; connection age {:?} + {:?}; keepalive {:?}/{:?}",
        bound.join(", "),
        keys.read().map_or(0, |keys| keys.len()),
        settings.max_message_bytes,
        settings.clock_skew,
        settings.drain_delay,
        settings.shutdown_grace,
        settings.max_connection_age,
        settings.max_connection_age_grace,
        settings.keepalive_time,
        settings.keepalive_timeout,
    );

    let (notify, notices) = mpsc::channel();
    let signal_notify = notify.clone();
    std::thread::spawn(move || {
        for signal in signals.forever() {
            if signal_notify.send(Notice::Signal(signal)).is_err() {
                break;
            }
        }
    });
    loop {
        match notices.recv() {
            Ok(Notice::Signal(SIGHUP)) => reload_keys(settings.hmac_keys_file.as_deref(), &keys),
            Ok(Notice::Signal(signal)) => {
                info!("signal {signal}: draining");
                break;
            }
            Ok(Notice::Drained) | Err(_) => break,
        }
    }
    Ok(drain(&mut server, &health, &settings, notify, &notices))
}

fn load_keys(path: Option<&str>) -> Result<Keys, String> {
    match path {
        Some(path) => Keys::load(path.as_ref()).map_err(|e| format!("TYK_PLUGIN_HMAC_KEYS_FILE={path}: {e}")),
        None => Ok(Keys::demo()),
    }
}

/// Binds one address and returns its port. gRPC core says little about a failure, in a line of
/// its own: that line is muted, and the reason is found by trying the address directly.
fn listen(server: &mut Server, address: &str) -> Result<u16, String> {
    let level = log::max_level();
    log::set_max_level(log::LevelFilter::Off);
    let bound = server.add_listening_port(address, ServerCredentials::insecure());
    log::set_max_level(level);
    bound.map_err(|_| {
        let reason = match address.strip_prefix("unix:") {
            Some(path) => std::os::unix::net::UnixListener::bind(path.trim_start_matches("//")).err(),
            None => std::net::TcpListener::bind(address).err(),
        };
        let reason = reason.map_or_else(|| "refused by gRPC".to_owned(), |error| error.to_string());
        format!("TYK_PLUGIN_LISTEN: cannot listen on {address}: {reason}")
    })
}

/// SIGHUP: a good file replaces the keys in one step (a call uses the old set or the new, never
/// a mix); a bad one leaves them as they were.
fn reload_keys(path: Option<&str>, keys: &RwLock<Arc<Keys>>) {
    let Some(path) = path else {
        return warn!("SIGHUP: no TYK_PLUGIN_HMAC_KEYS_FILE to reload; keeping the demo key");
    };
    match Keys::load(path.as_ref()) {
        Ok(new_keys) => {
            info!("SIGHUP: reloaded {path}: {} HMAC key(s)", new_keys.len());
            *keys.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(new_keys);
        }
        Err(error) => warn!("SIGHUP: keeping the current keys: {path}: {error}"),
    }
}

/// Graceful drain: health turns NOT_SERVING and ends its Watch streams; for the drain delay calls
/// are still served, so health-checking clients and balancers leave first; then the server refuses
/// new calls (clients move to other replicas) and answers every call it has. Past the grace, what
/// is left is cancelled. A second signal exits at once. Returns the exit code.
fn drain(
    server: &mut Server,
    health: &Health,
    settings: &Settings,
    notify: mpsc::Sender<Notice>,
    notices: &mpsc::Receiver<Notice>,
) -> i32 {
    let started = Instant::now();
    health.start_drain();
    let refuse_from = started + settings.drain_delay;
    let mut deadline = None;
    loop {
        if deadline.is_none() && Instant::now() >= refuse_from {
            let shutdown = server.shutdown();
            let notify = notify.clone();
            std::thread::spawn(move || {
                let _ = futures_executor::block_on(shutdown);
                let _ = notify.send(Notice::Drained);
            });
            deadline = Some(Instant::now() + settings.shutdown_grace);
        }
        match notices.recv_timeout(deadline.unwrap_or(refuse_from).saturating_duration_since(Instant::now())) {
            Ok(Notice::Drained) => {
                let counts = CallCounts::read().map_or_else(String::new, |c| {
                    format!("; since start {} calls answered OK, {} not", c.succeeded, c.failed)
                });
                info!("drained in {} ms{counts}", started.elapsed().as_millis());
                return 0;
            }
            Ok(Notice::Signal(SIGHUP)) => info!("SIGHUP ignored while draining"),
            Ok(Notice::Signal(signal)) => {
                warn!("signal {signal} during the drain: exiting at once");
                return 128 + signal;
            }
            Err(_) if deadline.is_some() => break,
            Err(_) => {} // the drain delay is over
        }
    }
    let open = CallCounts::read().map_or_else(|| "the".into(), |c| c.open().to_string());
    warn!("shutdown grace of {:?} is over: cancelling {open} call(s) still open", settings.shutdown_grace);
    server.cancel_all_calls();
    let _ = notices.recv_timeout(Duration::from_secs(2));
    0
}

/// The server's call counters from gRPC's channelz.
struct CallCounts {
    started: i64,
    succeeded: i64,
    failed: i64,
}

impl CallCounts {
    fn read() -> Option<CallCounts> {
        let options = protobuf_json_mapping::ParseOptions { ignore_unknown_fields: true, ..Default::default() };
        let servers: proto::tyk_grpc_plugin::ChannelzServers = grpcio::channelz::get_servers(0, |json| {
            protobuf_json_mapping::parse_from_str_with_options(json, &options).ok()
        })?;
        Some(servers.server.iter().fold(CallCounts { started: 0, succeeded: 0, failed: 0 }, |total, server| {
            CallCounts {
                started: total.started + server.data.calls_started,
                succeeded: total.succeeded + server.data.calls_succeeded,
                failed: total.failed + server.data.calls_failed,
            }
        }))
    }

    fn open(&self) -> i64 {
        self.started - self.succeeded - self.failed
    }
}

/// `--health-check`: the gRPC health of the server at the first TYK_PLUGIN_LISTEN address.
fn health_check() -> i32 {
    let address = setting("TYK_PLUGIN_LISTEN", "[::]:50051", "", |value| Some(value.to_owned())).unwrap_or_default();
    let first = address.split(',').next().unwrap_or_default().trim();
    let target = match first.rsplit_once(':') {
        Some(("[::]" | "0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        _ => first.to_owned(),
    };
    let env = Arc::new(Environment::new(1));
    let channel = ChannelBuilder::new(env).connect(&target);
    let options = grpcio::CallOption::default().timeout(Duration::from_secs(3));
    match grpcio::Client::new(channel).unary_call(&proto::HEALTH_CHECK, &Default::default(), options) {
        Ok(reply) if reply.status == proto::ServingStatus::SERVING.into() => 0,
        Ok(reply) => {
            eprintln!("tyk-grpc-plugin at {target}: {:?}", reply.status.enum_value_or_default());
            1
        }
        Err(error) => {
            eprintln!("tyk-grpc-plugin at {target}: {error}");
            1
        }
    }
}

/// The coprocess.Dispatcher handlers. grpcio calls them on its completion-queue threads and each
/// one sends its reply before returning: plain blocking code, no async runtime.
#[derive(Clone)]
struct Dispatcher {
    keys: Arc<RwLock<Arc<Keys>>>,
    clock_skew: Duration,
    log_secrets: bool,
}

impl Dispatcher {
    fn dispatch(&self, ctx: RpcContext, object: Object, sink: UnarySink<Object>) {
        // At INFO a copy of the received object is kept for its log line, written once the reply is
        // on its way, so logging adds nothing to the gateway's wait. At WARN nothing is copied or
        // formatted.
        let received = log_enabled!(Level::Info).then(|| object.clone());
        // A panic in hook logic fails this one call instead of killing a grpcio thread.
        let (sent, note) = match std::panic::catch_unwind(AssertUnwindSafe(|| self.handle(object, received.is_some())))
        {
            Ok((reply, note)) => (sink.success(reply), note),
            Err(_) => {
                let status = RpcStatus::with_message(RpcStatusCode::INTERNAL, "the plugin failed on this call".into());
                (sink.fail(status), Some("failed: the handler panicked".into()))
            }
        };
        finish(&ctx, sent);
        if let Some(received) = received {
            self.log(&ctx, received, note);
        }
    }

    /// The reply to one call, and what its log line should add (only when `logging`).
    fn handle(&self, mut object: Object, logging: bool) -> (Object, Option<String>) {
        let mut note = None;
        // The demo's edits per hook: add your own logic here. The reply is the received object,
        // edited: the gateway reads url, method and raw_body back from it.
        match object.hook_type.enum_value() {
            Ok(HookType::Pre) => {
                let request = object.request.mut_or_insert_default();
                request.add_params.insert("new-param".into(), "new-value".into());
                request.extended_params.insert("extended-param".into(), "extended-value".into());
            }
            Ok(HookType::PostKeyAuth) => object.request.mut_or_insert_default().delete_params.push("new-param".into()),
            Ok(HookType::CustomKeyCheck) => {
                let keys = self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
                let decision = auth::authenticate(&mut object, &keys, self.clock_skew);
                note = logging.then(|| match decision {
                    Ok(key) => format!("authorised keyId={:?}", shorten(&key.id)),
                    Err(refusal) => format!("refused {}: {}", refusal.status, refusal.reason),
                });
            }
            Ok(HookType::Post | HookType::Response | HookType::Unknown) | Err(_) => {}
        }
        (object, note)
    }

    /// One line with the received object as proto3 JSON (secrets redacted unless
    /// TYK_PLUGIN_LOG_SECRETS=1), and one more for the note, if any.
    fn log(&self, ctx: &RpcContext, mut received: Object, note: Option<String>) {
        let label = call_label(ctx, &received);
        if !self.log_secrets {
            redact(&mut received);
        }
        info!("{label} {}", Json(&received));
        if let Some(note) = note {
            info!("{label} {note}");
        }
    }

    fn dispatch_event(&self, ctx: RpcContext, event: Event, sink: UnarySink<EventReply>) {
        if log_enabled!(Level::Warn) {
            match serde_json::from_str::<serde_json::Value>(&event.payload) {
                Ok(payload) => info!("DispatchEvent {payload}"),
                Err(error) => warn!("DispatchEvent payload is not JSON ({error}): {:?}", shorten(&event.payload)),
            }
        }
        finish(&ctx, sink.success(EventReply::new()));
    }
}

/// Lets a unary reply run to completion. gRPC cancels a call whose result is dropped before the
/// client's side has closed, so the result is kept on the call's queue until it resolves.
pub fn finish(ctx: &RpcContext, sent: UnarySinkResult) {
    ctx.spawn(async move {
        let _ = sent.await;
    });
}

/// `hook=Pre name="MyPreHook" api="<APIID>" trace=<W3C trace id or ->`: what joins a log line to
/// the API definition and to the gateway's trace.
fn call_label(ctx: &RpcContext, object: &Object) -> String {
    let hook = match object.hook_type.enum_value() {
        Ok(hook) => format!("{hook:?}"),
        Err(number) => number.to_string(),
    };
    let api = object.spec.get("APIID").map_or("", String::as_str);
    let trace = ctx
        .request_headers()
        .iter()
        .find(|(name, _)| *name == "traceparent")
        .and_then(|(_, value)| trace_id(value))
        .unwrap_or("-");
    format!("hook={hook} name={:?} api={:?} trace={trace}", shorten(&object.hook_name), shorten(api))
}

/// The trace id of a W3C traceparent, `version-traceid-parentid-flags`.
fn trace_id(traceparent: &[u8]) -> Option<&str> {
    let id = std::str::from_utf8(traceparent).ok()?.split('-').nth(1)?;
    let valid = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0');
    valid.then_some(id)
}

/// At most 200 characters of a client-supplied string, for a log line.
fn shorten(text: &str) -> &str {
    text.char_indices().nth(200).map_or(text, |(end, _)| &text[..end])
}

const REDACTED: &str = "[redacted]";
const SECRET_HEADERS: [&str; 4] = ["authorization", "proxy-authorization", "cookie", "x-api-key"];

/// Replaces the object's secrets with "[redacted]": credential headers and the session's secrets.
fn redact(object: &mut Object) {
    let hide = |value: &mut String| {
        if !value.is_empty() {
            *value = REDACTED.into();
        }
    };
    if let Some(request) = object.request.as_mut() {
        for (name, value) in request.headers.iter_mut() {
            if SECRET_HEADERS.iter().any(|secret| name.eq_ignore_ascii_case(secret)) {
                hide(value);
            }
        }
    }
    if let Some(session) = object.session.as_mut() {
        hide(&mut session.hmac_secret);
        if let Some(basic_auth) = session.basic_auth_data.as_mut() {
            hide(&mut basic_auth.password);
        }
        if let Some(jwt) = session.jwt_data.as_mut() {
            hide(&mut jwt.secret);
        }
        session.oauth_keys.values_mut().for_each(hide);
    }
}

//! What the integration tests and the benchmark share: the real server binary started on a free
//! port, its log lines, gRPC clients, fixtures and external tools.
#![allow(dead_code)] // each test crate uses its own part of this file

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use grpcio::{
    CallOption, ChannelBuilder, Client, Environment, GrpcSlice, Marshaller, MessageReader, Method, MethodType,
};

pub use tyk_grpc_plugin::proto::{self, Event, EventReply, HookType, Object};

pub const BINARY: &str = env!("CARGO_BIN_EXE_tyk-grpc-plugin");

/// An example plugin's binary (examples/NAME.rs), which `cargo test` builds beside the tests.
pub fn example(name: &str) -> PathBuf {
    let deps = std::env::current_exe().unwrap().parent().unwrap().to_owned();
    deps.parent().unwrap().join("examples").join(name)
}
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running tyk-grpc-plugin, killed when dropped.
pub struct Plugin {
    child: Child,
    /// The first address it listens on, as a client dials it.
    pub address: String,
    /// Every address it listens on.
    pub addresses: Vec<String>,
    output: Arc<Output>,
}

#[derive(Default)]
struct Output {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

impl Plugin {
    /// Starts the server with these settings (and nothing else from the test's environment),
    /// listening on a free loopback port unless TYK_PLUGIN_LISTEN is given.
    pub fn start(settings: &[(&str, &str)]) -> Plugin {
        Plugin::launch(Path::new(BINARY), settings, None)
    }

    /// Starts the server logging to a file, as in a container; its log lines are not read.
    pub fn start_logging_to(settings: &[(&str, &str)], log_file: &Path) -> Plugin {
        Plugin::launch(Path::new(BINARY), settings, Some(log_file))
    }

    /// Starts another plugin binary built on the library, such as an example.
    pub fn start_binary(binary: &Path, settings: &[(&str, &str)]) -> Plugin {
        Plugin::launch(binary, settings, None)
    }

    fn launch(binary: &Path, settings: &[(&str, &str)], log_file: Option<&Path>) -> Plugin {
        let logs_start = settings.iter().all(|(name, value)| *name != "RUST_LOG" || value.contains("info"));
        let reads_start_line = logs_start && log_file.is_none();
        let given = settings.iter().find(|(name, _)| *name == "TYK_PLUGIN_LISTEN").map(|(_, value)| value.to_string());
        // The start line names the bound port; without it, the port is chosen here.
        let listen = given.unwrap_or_else(|| match reads_start_line {
            true => "127.0.0.1:0".into(),
            false => format!("127.0.0.1:{}", free_port()),
        });
        let mut command = binary_command(binary, settings);
        command.env("TYK_PLUGIN_LISTEN", &listen);
        let stderr = match log_file {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::piped(),
        };
        let mut child = command.stderr(stderr).stdout(Stdio::null()).spawn().expect("the server starts");
        let output = Arc::new(Output::default());
        if let Some(stderr) = child.stderr.take() {
            let sink = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    sink.lines.lock().unwrap().push(line);
                    sink.changed.notify_all();
                }
            });
        }
        let mut plugin = Plugin { child, address: String::new(), addresses: Vec::new(), output };
        plugin.addresses = if reads_start_line {
            let started = plugin.wait_for_line(" listening on ", START_TIMEOUT);
            let addresses = started.split(" listening on ").nth(1).unwrap().split(';').next().unwrap();
            addresses.split(", ").map(str::to_owned).collect()
        } else {
            listen.split(',').map(str::to_owned).collect()
        };
        plugin.address = plugin.addresses[0].clone();
        let health = proto::HealthCheckRequest::new();
        let options = CallOption::default().timeout(START_TIMEOUT).wait_for_ready(true);
        let serving =
            plugin.client().unary_call(&proto::HEALTH_CHECK, &health, options).expect("the server is healthy");
        assert_eq!(serving.status, proto::ServingStatus::SERVING.into());
        plugin
    }

    /// The first log line holding `text`, waiting for it up to `timeout`.
    pub fn wait_for_line(&mut self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut lines = self.output.lines.lock().unwrap();
        loop {
            if let Some(line) = lines.iter().find(|line| line.contains(text)) {
                return line.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                let log = lines.join("\n");
                drop(lines);
                let _ = self.child.kill();
                panic!("no log line with {text:?} within {timeout:?}; the log:\n{log}");
            }
            lines = self.output.changed.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.output.lines.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "signal {signal} sent");
    }

    /// Waits for the process to exit; panics if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("the server did not exit within {timeout:?}; the log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Client {
        client(&self.address)
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The server binary with exactly these settings in its environment (plus PATH).
pub fn plugin_command(settings: &[(&str, &str)]) -> Command {
    binary_command(Path::new(BINARY), settings)
}

fn binary_command(binary: &Path, settings: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary);
    command.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).env("RUST_LOG", "info");
    command.envs(settings.iter().copied());
    command
}

/// Runs the server expecting it to refuse to start: its exit status and what it printed.
pub fn start_failure(settings: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut command = plugin_command(settings);
    command.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("the server starts");
    let deadline = Instant::now() + START_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server kept running with {settings:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    (child.wait().unwrap(), stderr)
}

/// A client for `address` that takes messages of any size.
pub fn client(address: &str) -> Client {
    let env = Arc::new(Environment::new(1));
    let channel = ChannelBuilder::new(env).max_receive_message_len(-1).max_send_message_len(-1).connect(address);
    Client::new(channel)
}

pub fn call_options() -> CallOption {
    CallOption::default().timeout(Duration::from_secs(60)).wait_for_ready(true)
}

pub fn dispatch(client: &Client, object: &Object) -> grpcio::Result<Object> {
    client.unary_call(&proto::DISPATCH, object, call_options())
}

pub fn dispatch_event(client: &Client, payload: &str) -> grpcio::Result<EventReply> {
    let event = Event { payload: payload.into(), ..Default::default() };
    client.unary_call(&proto::DISPATCH_EVENT, &event, call_options())
}

/// Dispatch with the request body as raw bytes, whatever they are.
pub const DISPATCH_RAW: Method<Vec<u8>, Vec<u8>> = Method {
    ty: MethodType::Unary,
    name: proto::DISPATCH.name,
    req_mar: Marshaller { ser: raw_ser, de: raw_de },
    resp_mar: Marshaller { ser: raw_ser, de: raw_de },
};

#[allow(clippy::ptr_arg)] // the signature grpcio's Marshaller takes for Vec<u8> messages
fn raw_ser(bytes: &Vec<u8>, buffer: &mut GrpcSlice) -> grpcio::Result<()> {
    *buffer = GrpcSlice::from(bytes.clone());
    Ok(())
}

fn raw_de(mut reader: MessageReader) -> grpcio::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).map_err(|error| grpcio::Error::Codec(Box::new(error)))?;
    Ok(bytes)
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The gateway's own Response-hook object (tests/fixtures/response_example.json).
pub fn gateway_response_object() -> Object {
    let json = std::fs::read_to_string(fixture("response_example.json")).unwrap();
    protobuf_json_mapping::parse_from_str(&json).unwrap()
}

pub fn object_with_hook(hook: HookType) -> Object {
    let mut object = gateway_response_object();
    object.hook_type = hook.into();
    object.hook_name = format!("My{hook:?}Hook");
    object
}

pub const DEMO_KEY_ID: &str = tyk_grpc_plugin::auth::DEMO_KEY_ID;
pub const DEMO_SECRET: &str = tyk_grpc_plugin::auth::DEMO_SECRET;

pub fn now() -> String {
    httpdate::fmt_http_date(std::time::SystemTime::now())
}

/// The base64 HMAC of `signing_string`: what a client puts in `signature="..."`.
pub fn sign(algorithm: ring::hmac::Algorithm, secret: &str, signing_string: &str) -> String {
    use base64::Engine as _;
    let tag = ring::hmac::sign(&ring::hmac::Key::new(algorithm, secret.as_bytes()), signing_string.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

pub fn percent_encoded(signature: &str) -> String {
    signature.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
}

pub fn authorization(key_id: &str, algorithm: &str, signature: &str) -> String {
    format!("Signature keyId=\"{key_id}\",algorithm=\"{algorithm}\",signature=\"{signature}\"")
}

/// A CustomKeyCheck object as the gateway sends it: headers, method, URI, response_code -1.
pub fn key_check(headers: &[(&str, &str)]) -> Object {
    let mut object = Object::new();
    object.hook_type = HookType::CustomKeyCheck.into();
    object.hook_name = "CustomHMACCheck".into();
    object.spec.insert("APIID".into(), "grpc-custom-auth".into());
    let request = object.request.mut_or_insert_default();
    for (name, value) in headers {
        request.headers.insert(name.to_string(), value.to_string());
    }
    request.method = "GET".into();
    request.url = "/grpc-custom-auth/get?x=1".into();
    request.request_uri = "/grpc-custom-auth/get?x=1".into();
    request.return_overrides.mut_or_insert_default().response_code = -1;
    object
}

/// A CustomKeyCheck signed now with hmac-sha512 over the date, as the demo's hmac.sh signs.
pub fn signed_key_check(key_id: &str, secret: &str) -> Object {
    let date = now();
    let signature = percent_encoded(&sign(ring::hmac::HMAC_SHA512, secret, &format!("date: {date}")));
    key_check(&[("Date", &date), ("Authorization", &authorization(key_id, "hmac-sha512", &signature))])
}

/// An external program a test needs: on PATH or in the repository's .tools/bin (where .ci/run
/// installs the Python-packaged ones). Tests that need one are `#[ignore = "needs …"]`, so plain
/// `cargo test` lists them as ignored; `cargo test -- --include-ignored` runs them, and then a
/// missing tool is a failure.
pub fn tool(name: &str) -> PathBuf {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found =
        std::iter::once(local).chain(std::env::split_paths(&path)).map(|dir| dir.join(name)).find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("{name} is not installed: see the README's Run it and test it"))
}

/// A fresh directory under the system's temporary directory.
pub fn temp_dir(label: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tyk-grpc-plugin-{label}-{}-{unique}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

//! `cargo bench`: drives the release server with a grpcio client, one scenario after another, and
//! prints a row each: calls/s, p50/p99/p99.9 latency, and the server's peak RSS.
//!
//! A no-op echo server (this binary, started again with --echo-server) runs the same scenarios to
//! show what grpcio itself allows on the machine. With TYK_BENCH_PEER=host:port (and optionally
//! TYK_BENCH_PEER_PID) the Response-payload scenarios also run against another server, e.g. the
//! Python original, in the same run. TYK_BENCH_SECONDS sets each scenario's length (default 5).
//! `--write-frame PATH` writes the Response payload as a gRPC frame for h2load (benches/h2load.sh);
//! With TYK_BENCH_SLEEPING_HOOK_MS=MS set, it serves the plugin with a hook that sleeps MS
//! milliseconds a call (the plugin's own settings and arguments otherwise).
//! Under `cargo test` (no `--bench` argument) every scenario runs for a tenth of a second against
//! the debug build: a check that the harness works, whose figures mean nothing.
//! See docs/benchmarks.md.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use grpcio::{CallOption, ChannelBuilder, Client, Environment, ServerBuilder, ServerCredentials, ServiceBuilder};
use tyk_grpc_plugin::auth::{DEMO_KEY_ID, DEMO_SECRET};
use tyk_grpc_plugin::proto::{self, HookType, Object};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|arg| arg == "--echo-server") {
        return echo_server();
    }
    if let Ok(millis) = std::env::var("TYK_BENCH_SLEEPING_HOOK_MS") {
        // The plugin with a hook that waits like a slow lookup: the server's settings as usual.
        let wait = Duration::from_millis(millis.parse().expect("TYK_BENCH_SLEEPING_HOOK_MS: milliseconds"));
        tyk_grpc_plugin::run(
            move |object, _| {
                std::thread::sleep(wait);
                object
            },
            |_| {},
        );
    }
    if let Some(path) = args.iter().position(|arg| arg == "--write-frame").and_then(|at| args.get(at + 1)) {
        return write_frame(path);
    }
    let measuring = args.iter().any(|arg| arg == "--bench");
    let seconds: f64 = std::env::var("TYK_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(if measuring {
        5.0
    } else {
        0.1
    });
    let length = Duration::from_secs_f64(seconds);
    let response = gateway_response_object();
    let key_check = demo_signed_key_check();
    let mut one_mib = response.clone();
    one_mib.hook_type = HookType::Pre.into();
    one_mib.request.mut_or_insert_default().raw_body = vec![b'x'; 1 << 20];

    let log_dir = std::env::temp_dir().join(format!("tyk-grpc-plugin-bench-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir).unwrap();
    println!("{} s a scenario; server logs in {}; {} cores", seconds, log_dir.display(), cores());
    println!();
    println!("| scenario | server | log | in flight | calls/s | p50 µs | p99 µs | p99.9 µs | peak RSS MiB |");
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|");
    let peer = std::env::var("TYK_BENCH_PEER").ok();
    let peer_pid = std::env::var("TYK_BENCH_PEER_PID").ok().and_then(|pid| pid.parse().ok());
    for in_flight in [1, 256] {
        for level in ["info", "warn"] {
            let server = Server::plugin(level, &log_dir);
            row("Response payload", &server, level, in_flight, &response, length);
        }
        row("Response payload", &Server::echo(), "-", in_flight, &response, length);
        if let Some(address) = &peer {
            row("Response payload", &Server::external(address, peer_pid), "its own", in_flight, &response, length);
        }
    }
    for in_flight in [1, 256] {
        let server = Server::plugin("info", &log_dir);
        let reply = client(&server.address).unary_call(&proto::DISPATCH, &key_check, options()).unwrap();
        assert!(reply.metadata.contains_key("token"), "the signed call is accepted");
        row("CustomKeyCheck, signed", &server, "info", in_flight, &key_check, length);
    }
    for in_flight in [1, 16] {
        row("1 MiB body (Pre)", &Server::plugin("warn", &log_dir), "warn", in_flight, &one_mib, length);
        row("1 MiB body (Pre)", &Server::echo(), "-", in_flight, &one_mib, length);
    }
    let _ = std::fs::remove_dir_all(&log_dir);
}

/// Runs one scenario and prints its row.
fn row(scenario: &str, server: &Server, log: &str, in_flight: usize, object: &Object, length: Duration) {
    let result = drive(&server.address, object, in_flight, length);
    let peak = server.pid.and_then(peak_rss_mib).map_or("-".into(), |mib| format!("{mib:.1}"));
    println!(
        "| {scenario} | {} | {log} | {in_flight} | {:.0} | {} | {} | {} | {peak} |",
        server.name,
        result.calls_per_second,
        result.percentile(50.0),
        result.percentile(99.0),
        result.percentile(99.9),
    );
}

struct Measured {
    calls_per_second: f64,
    /// Microseconds, sorted.
    latencies: Vec<u32>,
}

impl Measured {
    fn percentile(&self, percent: f64) -> u32 {
        let rank = ((percent / 100.0) * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }
}

/// Keeps `in_flight` calls going for `length` after a short warm-up; every call must succeed.
fn drive(address: &str, object: &Object, in_flight: usize, length: Duration) -> Measured {
    let client = client(address);
    client.unary_call(&proto::DISPATCH, object, options()).expect("the server answers");

    let warm_up = Instant::now() + Duration::from_millis(500);
    let stop = Arc::new(AtomicBool::new(false));
    let (done, results) = mpsc::channel();
    for _ in 0..in_flight {
        let (client_for_slot, object, stop, done) = (client.clone(), object.clone(), stop.clone(), done.clone());
        client.spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let receiver = client_for_slot.unary_call_async(&proto::DISPATCH, &object, options()).unwrap();
                let reply = receiver.await.expect("every call succeeds");
                if sent >= warm_up {
                    latencies.push(sent.elapsed().as_micros() as u32);
                }
                drop(reply);
            }
            let _ = done.send(latencies);
        });
    }
    std::thread::sleep(warm_up - Instant::now());
    let started = Instant::now();
    std::thread::sleep(length);
    stop.store(true, Ordering::Relaxed);
    let mut latencies: Vec<u32> = results.iter().take(in_flight).flatten().collect();
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    Measured { calls_per_second: latencies.len() as f64 / elapsed.as_secs_f64(), latencies }
}

fn client(address: &str) -> Client {
    let env = Arc::new(Environment::new(1));
    Client::new(ChannelBuilder::new(env).max_receive_message_len(-1).max_send_message_len(-1).connect(address))
}

fn options() -> CallOption {
    CallOption::default().timeout(Duration::from_secs(30)).wait_for_ready(true)
}

/// A server under test, stopped when dropped.
struct Server {
    name: &'static str,
    address: String,
    pid: Option<u32>,
    process: Process,
}

enum Process {
    Child(Child),
    External,
}

impl Server {
    /// tyk-grpc-plugin at this log level, logging to a file as in a container.
    fn plugin(level: &str, log_dir: &std::path::Path) -> Server {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let log_file = log_dir.join(format!("plugin-{level}-{}.log", STARTED.fetch_add(1, Ordering::Relaxed)));
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_tyk-grpc-plugin"))
            .env("RUST_LOG", level)
            .env("TYK_PLUGIN_LISTEN", &address)
            .stderr(std::fs::File::create(log_file).unwrap())
            .spawn()
            .unwrap();
        let health = proto::HealthCheckRequest::new();
        let started = client(&address).unary_call(&proto::HEALTH_CHECK, &health, options());
        assert_eq!(started.expect("the server starts").status, proto::ServingStatus::SERVING.into());
        Server { name: "tyk-grpc-plugin", address, pid: Some(child.id()), process: Process::Child(child) }
    }

    /// This binary as a bare grpcio server whose handler only echoes.
    fn echo() -> Server {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--echo-server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        let address = line.trim().strip_prefix("listening on ").expect("the echo server starts").to_owned();
        Server { name: "no-op echo", address, pid: Some(child.id()), process: Process::Child(child) }
    }

    fn external(address: &str, pid: Option<u32>) -> Server {
        Server { name: "peer", address: address.to_owned(), pid, process: Process::External }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Process::Child(child) = &mut self.process {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The no-op server: the same grpcio, message limits and threads as the plugin, and a handler
/// that returns what it gets. Serves until its standard input closes.
fn echo_server() {
    let env = Arc::new(Environment::new(cores()));
    let service = ServiceBuilder::new()
        .add_unary_handler(&proto::DISPATCH, |ctx, object, sink: grpcio::UnarySink<Object>| {
            // Kept until done, as the plugin does: gRPC cancels a call whose result is dropped early.
            let sent = sink.success(object);
            ctx.spawn(async move {
                let _ = sent.await;
            });
        })
        .build();
    let args =
        ChannelBuilder::new(env.clone()).max_receive_message_len(64 << 20).max_send_message_len(64 << 20).build_args();
    let mut server = ServerBuilder::new(env).channel_args(args).register_service(service).build().unwrap();
    let port = server.add_listening_port("127.0.0.1:0", ServerCredentials::insecure()).unwrap();
    server.start();
    println!("listening on 127.0.0.1:{port}");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read(&mut [0]);
}

/// The gateway's Response payload as one gRPC frame (uncompressed flag, length, message), the body
/// h2load sends (benches/h2load.sh).
fn write_frame(path: &str) {
    let message = protobuf::Message::write_to_bytes(&gateway_response_object()).unwrap();
    let mut frame = vec![0];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    std::fs::write(path, frame).unwrap();
}

/// The gateway's own Response-hook object (tests/fixtures/response_example.json).
fn gateway_response_object() -> Object {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/response_example.json");
    protobuf_json_mapping::parse_from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A CustomKeyCheck signed now with the demo key, as hmac.sh signs: hmac-sha512 over the date.
fn demo_signed_key_check() -> Object {
    let date = httpdate::fmt_http_date(SystemTime::now());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA512, DEMO_SECRET.as_bytes());
    let tag = ring::hmac::sign(&key, format!("date: {date}").as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    let mut object = Object::new();
    object.hook_type = HookType::CustomKeyCheck.into();
    object.spec.insert("APIID".into(), "grpc-custom-auth".into());
    let headers = &mut object.request.mut_or_insert_default().headers;
    headers.insert("Date".into(), date);
    let authorization = format!("keyId=\"{DEMO_KEY_ID}\",algorithm=\"hmac-sha512\",signature=\"{signature}\"");
    headers.insert("Authorization".into(), authorization);
    object
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// VmHWM, the peak resident set, of a process.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

//! Scale-out: three replicas behind one round-robin client, as a gateway with
//! grpc_round_robin_load_balancing sees them, with no health checking. Rolling restarts with
//! SIGTERM lose no call, under grpc-go (the gateway's own gRPC library) as under gRPC's C core; a
//! replica killed with SIGKILL fails only the calls it had, and the client carries on with the rest.

mod common;

use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use grpcio::{CallOption, ChannelBuilder, Client, Environment};

const IN_FLIGHT: usize = 32;

/// Round robin over every address, without health checking, as the gateway dials.
fn round_robin_client(addresses: &[String]) -> Client {
    let service_config = r#"{"loadBalancingConfig": [{"round_robin": {}}]}"#;
    let channel = ChannelBuilder::new(Arc::new(Environment::new(2)))
        .raw_cfg_string(CString::new("grpc.service_config").unwrap(), CString::new(service_config).unwrap())
        .connect(&format!("ipv4:{}", addresses.join(",")));
    Client::new(channel)
}

/// Keeps IN_FLIGHT calls going until stopped, counting successes and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    running: Arc<AtomicUsize>,
}

impl Load {
    fn start(client: &Client) -> Load {
        let load = Load {
            stop: Arc::default(),
            ok: Arc::default(),
            failures: Arc::default(),
            running: Arc::new(AtomicUsize::new(IN_FLIGHT)),
        };
        let object = object_with_hook(HookType::Post);
        for _ in 0..IN_FLIGHT {
            let (client_for_slot, object) = (client.clone(), object.clone());
            let (stop, ok, failures, running) =
                (load.stop.clone(), load.ok.clone(), load.failures.clone(), load.running.clone());
            client.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let options = CallOption::default().timeout(Duration::from_secs(10)).wait_for_ready(true);
                    match client_for_slot.unary_call_async(&proto::DISPATCH, &object, options) {
                        Ok(receiver) => match receiver.await {
                            Ok(_) => _ = ok.fetch_add(1, Ordering::Relaxed),
                            Err(error) => failures.lock().unwrap().push(error.to_string()),
                        },
                        Err(error) => failures.lock().unwrap().push(error.to_string()),
                    }
                }
                running.fetch_sub(1, Ordering::Relaxed);
            });
        }
        load
    }

    fn failed(&self) -> usize {
        self.failures.lock().unwrap().len()
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Lets the load run until `more` further calls have succeeded.
    fn run_for(&self, more: usize) {
        let target = self.ok() + more;
        for _ in 0..3000 {
            if self.ok() >= target {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the load stalled at {} calls; failures: {:?}", self.ok(), self.failures.lock().unwrap());
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        while self.running.load(Ordering::Relaxed) > 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A replica whose connections age out after a second, so that a drain takes about that long.
fn replica(address: &str, log_file: &Path) -> Plugin {
    let settings = [
        ("TYK_PLUGIN_LISTEN", address),
        ("TYK_PLUGIN_MAX_CONNECTION_AGE", "1"),
        ("RUST_LOG", "warn,tyk_grpc_plugin=info"),
    ];
    Plugin::start_logging_to(&settings, log_file)
}

/// Three replicas on free ports, each logging to its `log_file` of generation 0.
fn three_replicas(dir: &Path) -> (Vec<String>, Vec<Plugin>) {
    let addresses: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let replicas = addresses.iter().enumerate().map(|(i, address)| replica(address, &log_file(dir, i, 0))).collect();
    (addresses, replicas)
}

/// Where replica number `replica` logs after `generation` restarts.
fn log_file(dir: &Path, replica: usize, generation: usize) -> PathBuf {
    dir.join(format!("replica-{replica}-{generation}.log"))
}

/// The calls a drained replica answered, from its last log line.
fn answered(log_file: &Path) -> usize {
    let log = std::fs::read_to_string(log_file).unwrap();
    let line = log.lines().find(|line| line.contains("drained in")).unwrap_or_else(|| panic!("no drain line:\n{log}"));
    line.split("since start ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_rolling_restart_loses_no_call_and_a_killed_replica_only_its_own() {
    let dir = temp_dir("scale-out");
    let (addresses, mut replicas) = three_replicas(&dir);
    let client = round_robin_client(&addresses);
    let load = Load::start(&client);
    load.run_for(2000);

    for (i, address) in addresses.iter().enumerate() {
        replicas[i].signal(libc::SIGTERM);
        let status = replicas[i].wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0));
        let served = answered(&log_file(&dir, i, 0));
        assert!(served > 100, "replica {i} served calls before its restart: {served}");
        eprintln!("replica {i} drained after serving {served} calls");
        replicas[i] = replica(address, &log_file(&dir, i, 1));
        load.run_for(2000);
    }
    let after_rolling = load.ok();
    assert_eq!(load.failed(), 0, "no call failed in the rolling restart: {:?}", load.failures.lock().unwrap());

    replicas[0].signal(libc::SIGKILL);
    replicas[0].wait_exit(Duration::from_secs(10));
    load.run_for(3000);
    let failed_by_kill = load.failed();
    load.run_for(2000);
    load.stop();
    eprintln!(
        "rolling restart: {after_rolling} calls, 0 failed; SIGKILL of one replica: {failed_by_kill} failed ({:?}), \
         then {} more calls on the other two",
        load.failures.lock().unwrap().first(),
        load.ok() - after_rolling,
    );
    assert!(failed_by_kill <= IN_FLIGHT, "only the calls in flight on the killed replica fail: {failed_by_kill}");
    assert_eq!(load.failed(), failed_by_kill, "the client recovered: no failures after the kill");
}

/// The grpc-go load client (tests/goclient/main.go), built once, in GOPATH mode against Debian's
/// golang-google-grpc-dev.
fn go_client() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let work = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let binary = work.join("goclient");
        let built = Command::new(tool("go"))
            .args(["build", "-o"])
            .arg(&binary)
            .arg(".")
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/goclient"))
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", work.join("go-cache"))
            .output()
            .unwrap();
        assert!(built.status.success(), "go build: {}", String::from_utf8_lossy(&built.stderr));
        binary
    })
}

/// The grpc-go client running: its latest counts, read from its output.
struct GoLoad {
    child: Child,
    latest: Arc<Mutex<String>>,
}

impl GoLoad {
    fn start(addresses: &[String], in_flight: usize, payload: &Path) -> GoLoad {
        let mut child = Command::new(go_client())
            .arg(format!("-targets={}", addresses.join(",")))
            .arg(format!("-in-flight={in_flight}"))
            .arg(format!("-payload={}", payload.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let latest = Arc::new(Mutex::new(String::new()));
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let written = latest.clone();
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|line| *written.lock().unwrap() = line));
        GoLoad { child, latest }
    }

    /// (calls OK, calls failed, calls OK by replica address).
    fn counts(&self) -> (usize, usize, Vec<(String, usize)>) {
        let line = self.latest.lock().unwrap().clone();
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |at: usize| words.get(at).and_then(|word| word.parse().ok()).unwrap_or(0);
        let by = words.get(5).map_or_else(Vec::new, |by| {
            by.split(',')
                .filter_map(|pair| pair.split_once('='))
                .map(|(a, n)| (a.to_owned(), n.parse().unwrap()))
                .collect()
        });
        (number(1), number(3), by)
    }

    /// Waits until `condition` holds of the counts.
    fn wait_for(&self, what: &str, condition: impl Fn(usize, &[(String, usize)]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, failed, by) = self.counts();
            if condition(ok, &by) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: stalled at {ok} OK, {failed} failed, {by:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the load: its last line, "done ok N failed M codes ...".
    fn stop(mut self) -> String {
        drop(self.child.stdin.take());
        assert!(self.child.wait().unwrap().success());
        std::thread::sleep(Duration::from_millis(100));
        let done = self.latest.lock().unwrap().clone();
        assert!(done.starts_with("done "), "{done}");
        done
    }
}

#[test]
#[ignore = "needs go and grpc-go (golang-go, golang-google-grpc-dev)"]
fn rolling_restarts_under_the_gateways_grpc_go_client_lose_no_call() {
    let dir = temp_dir("grpc-go");
    let (addresses, mut replicas) = three_replicas(&dir);
    let payload = dir.join("object.bin");
    std::fs::write(&payload, protobuf::Message::write_to_bytes(&object_with_hook(HookType::Post)).unwrap()).unwrap();
    let load = GoLoad::start(&addresses, 48, &payload);
    load.wait_for("warm-up", |ok, by| ok > 2000 && by.len() == 3);

    let rounds = 3;
    for generation in 1..=rounds {
        for (i, address) in addresses.iter().enumerate() {
            replicas[i].signal(libc::SIGTERM);
            assert_eq!(replicas[i].wait_exit(Duration::from_secs(30)).code(), Some(0), "replica {i} drained");
            replicas[i] = replica(address, &log_file(&dir, i, generation));
            // The client finds the replica again before the next one goes.
            let before = load.counts().2.iter().find(|(a, _)| a == address).map_or(0, |(_, n)| *n);
            load.wait_for("the restarted replica serves", |_, by| {
                by.iter().any(|(a, n)| a == address && *n > before + 100)
            });
        }
        let (ok, failed, _) = load.counts();
        eprintln!("round {generation}: {ok} calls OK, {failed} failed so far");
    }
    let done = load.stop();
    eprintln!("grpc-go, 3 replicas, {rounds} rolling restarts of each: {done}");
    assert!(done.contains(" failed 0 "), "no call failed: {done}");
}

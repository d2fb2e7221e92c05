//! Scale-out: three replicas behind one round-robin client, as a gateway with
//! grpc_round_robin_load_balancing sees them. A rolling restart with SIGTERM loses no call; a
//! replica killed with SIGKILL fails only the calls it had, and the client carries on with the rest.

mod common;

use std::ffi::CString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use grpcio::{CallOption, ChannelBuilder, Client, Environment};

const IN_FLIGHT: usize = 32;

/// Round robin over every address, with gRPC client-side health checking: a replica whose health
/// turns NOT_SERVING gets no new calls.
fn round_robin_client(addresses: &[String]) -> Client {
    let service_config = r#"{"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": ""}}"#;
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

fn replica(address: &str, log_file: &Path) -> Plugin {
    let settings =
        [("TYK_PLUGIN_LISTEN", address), ("TYK_PLUGIN_DRAIN_DELAY", "1"), ("RUST_LOG", "warn,tyk_grpc_plugin=info")];
    Plugin::start_logging_to(&settings, log_file)
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
    let addresses: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let log_file = |replica: usize, generation: usize| dir.join(format!("replica-{replica}-{generation}.log"));
    let mut replicas: Vec<Plugin> =
        addresses.iter().enumerate().map(|(i, address)| replica(address, &log_file(i, 0))).collect();
    let client = round_robin_client(&addresses);
    let load = Load::start(&client);
    load.run_for(2000);

    for (i, address) in addresses.iter().enumerate() {
        replicas[i].signal(libc::SIGTERM);
        let status = replicas[i].wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0));
        let served = answered(&log_file(i, 0));
        assert!(served > 100, "replica {i} served calls before its restart: {served}");
        eprintln!("replica {i} drained after serving {served} calls");
        replicas[i] = replica(address, &log_file(i, 1));
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

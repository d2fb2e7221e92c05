//! Running it like a service: reflection (grpcurl with no proto files), health checks, graceful
//! drain on real signals, key reload on SIGHUP, trace ids in the log, connection age.

mod common;

use std::collections::VecDeque;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proto::reflection_v1::server_reflection_request::Message_request;
use common::proto::reflection_v1::server_reflection_response::Message_response;
use common::proto::reflection_v1::{ServerReflectionRequest, ServerReflectionResponse};
use common::proto::{HealthCheckRequest, ServingStatus, HEALTH_CHECK, HEALTH_WATCH, REFLECTION_V1};
use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use grpcio::{CallOption, ClientDuplexReceiver, RpcStatusCode, StreamingCallSink, WriteFlags};
use protobuf::descriptor::FileDescriptorProto;
use protobuf::Message as _;

fn grpcurl(args: &[&str]) -> String {
    let grpcurl = tool("grpcurl");
    let output = Command::new(grpcurl).arg("-plaintext").args(args).output().unwrap();
    assert!(output.status.success(), "grpcurl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
#[ignore = "needs grpcurl"]
fn grpcurl_lists_describes_and_calls_through_reflection_alone() {
    let socket = temp_dir("reflection").join("plugin.sock").display().to_string();
    let listen = format!("127.0.0.1:0,unix:{socket}");
    let plugin = Plugin::start(&[("TYK_PLUGIN_LISTEN", &listen)]);
    for server in [vec![plugin.address.as_str()], vec!["-unix", socket.as_str()]] {
        // grpcurl [options] server [list | describe symbol | method]
        let call = |options: &[&str], words: &[&str]| {
            let args: Vec<&str> = options.iter().chain(&server).chain(words).copied().collect();
            grpcurl(&args)
        };
        let listed = call(&[], &["list"]);
        for service in [
            "coprocess.Dispatcher",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(listed.lines().any(|line| line == service), "{service} in {listed}");
        }
        let describe = |symbol: &str| call(&[], &["describe", symbol]);
        assert!(describe("coprocess.Object").contains(".coprocess.MiniRequestObject request = 3;"));
        assert!(describe("coprocess.Dispatcher").contains("rpc DispatchEvent ( .coprocess.Event )"));
        assert!(describe("coprocess.Dispatcher.Dispatch").contains("rpc Dispatch"));
        assert!(describe("coprocess.HookType").contains("CustomKeyCheck = 4;"));
        assert!(describe("coprocess.SessionState").contains("hmac_secret = 17;"));
        assert!(describe("grpc.health.v1.HealthCheckResponse.ServingStatus").contains("NOT_SERVING = 2;"));
        let compact = |text: String| text.split_whitespace().collect::<String>();
        assert_eq!(compact(call(&["-d", "{}"], &["coprocess.Dispatcher/Dispatch"])), "{}");
        let pre = call(&["-d", r#"{"hookType": "Pre", "request": {"url": "/x"}}"#], &["coprocess.Dispatcher/Dispatch"]);
        assert!(pre.contains("\"new-param\": \"new-value\""), "{pre}");
        let event =
            call(&["-d", r#"{"payload": "{\"event\": \"KeyExpired\"}"}"#], &["coprocess.Dispatcher/DispatchEvent"]);
        assert_eq!(compact(event), "{}");
        assert!(call(&[], &["grpc.health.v1.Health/Check"]).contains("\"status\": \"SERVING\""));
        let dispatcher = call(&["-d", r#"{"service": "coprocess.Dispatcher"}"#], &["grpc.health.v1.Health/Check"]);
        assert!(dispatcher.contains("\"status\": \"SERVING\""));
    }
}

/// One reflection v1 exchange over a grpcio client (grpcurl 1.8 speaks only v1alpha).
fn reflect(client: &grpcio::Client, request: Message_request) -> Message_response {
    let (mut sink, mut replies) = client.duplex_streaming(&REFLECTION_V1, call_options()).unwrap();
    let request = ServerReflectionRequest { message_request: Some(request), ..Default::default() };
    futures_executor::block_on(async {
        sink.send((request, WriteFlags::default())).await.unwrap();
        sink.close().await.unwrap();
        let reply: ServerReflectionResponse = replies.next().await.unwrap().unwrap();
        reply.message_response.unwrap()
    })
}

fn file_names(response: Message_response) -> Vec<String> {
    let Message_response::FileDescriptorResponse(files) = response else { panic!("not files: {response:?}") };
    files
        .file_descriptor_proto
        .iter()
        .map(|bytes| FileDescriptorProto::parse_from_bytes(bytes).unwrap().name().to_owned())
        .collect()
}

#[test]
fn reflection_v1_answers_files_symbols_with_their_imports_and_not_found() {
    let plugin = Plugin::start(&[]);
    let client = plugin.client();
    let Message_response::ListServicesResponse(list) = reflect(&client, Message_request::ListServices(String::new()))
    else {
        panic!("not a list")
    };
    assert_eq!(list.service.len(), 4);

    let object_file = file_names(reflect(&client, Message_request::FileByFilename("coprocess_object.proto".into())));
    assert_eq!(object_file[0], "coprocess_object.proto");
    for import in [
        "coprocess_common.proto",
        "coprocess_mini_request_object.proto",
        "coprocess_response_object.proto",
        "coprocess_session_state.proto",
        "coprocess_return_overrides.proto",
    ] {
        assert!(object_file.contains(&import.to_owned()), "{import} comes along: {object_file:?}");
    }
    for (symbol, file) in [
        ("coprocess.Dispatcher", "coprocess_object.proto"),
        (".coprocess.Dispatcher", "coprocess_object.proto"),
        ("coprocess.Dispatcher.DispatchEvent", "coprocess_object.proto"),
        ("coprocess.Object", "coprocess_object.proto"),
        ("coprocess.HookType", "coprocess_common.proto"),
        ("coprocess.Header", "coprocess_response_object.proto"),
        ("grpc.health.v1.Health.Watch", "health.proto"),
        ("grpc.health.v1.HealthCheckResponse.ServingStatus", "health.proto"),
        ("grpc.reflection.v1alpha.ServerReflection", "reflection_v1alpha.proto"),
    ] {
        let files = file_names(reflect(&client, Message_request::FileContainingSymbol(symbol.into())));
        assert_eq!(files[0], file, "{symbol}");
    }
    for missing in [
        Message_request::FileByFilename("nope.proto".into()),
        Message_request::FileContainingSymbol("coprocess.Nope".into()),
        Message_request::AllExtensionNumbersOfType("coprocess.Nope".into()),
    ] {
        let Message_response::ErrorResponse(error) = reflect(&client, missing) else { panic!("not an error") };
        assert_eq!(error.error_code, i32::from(RpcStatusCode::NOT_FOUND));
    }
}

/// Keeps one reflection stream open: a call in flight that only the client ends.
fn open_stream(
    client: &grpcio::Client,
) -> (StreamingCallSink<ServerReflectionRequest>, ClientDuplexReceiver<ServerReflectionResponse>) {
    let (mut sink, mut replies) = client.duplex_streaming(&REFLECTION_V1, call_options()).unwrap();
    futures_executor::block_on(async {
        sink.send((list_services(), WriteFlags::default())).await.unwrap();
        replies.next().await.unwrap().unwrap();
    });
    (sink, replies)
}

fn list_services() -> ServerReflectionRequest {
    ServerReflectionRequest {
        message_request: Some(Message_request::ListServices(String::new())),
        ..Default::default()
    }
}

#[test]
fn health_turns_not_serving_on_sigterm_while_a_call_drains_then_the_process_exits_0() {
    let mut plugin = Plugin::start(&[("TYK_PLUGIN_SHUTDOWN_GRACE", "20"), ("TYK_PLUGIN_MAX_CONNECTION_AGE", "1")]);
    let client = plugin.client();
    let check = |service: &str| {
        let request = HealthCheckRequest { service: service.into(), ..Default::default() };
        client.unary_call(&HEALTH_CHECK, &request, call_options())
    };
    assert_eq!(check("").unwrap().status, ServingStatus::SERVING.into());
    assert_eq!(check("coprocess.Dispatcher").unwrap().status, ServingStatus::SERVING.into());
    assert!(matches!(check("other"), Err(grpcio::Error::RpcFailure(s)) if s.code() == RpcStatusCode::NOT_FOUND));

    let mut watch = client.server_streaming(&HEALTH_WATCH, &HealthCheckRequest::new(), call_options()).unwrap();
    let first = futures_executor::block_on(watch.next()).unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::SERVING.into());
    let (mut in_flight, mut replies) = open_stream(&client);

    let signalled = Instant::now();
    plugin.signal(libc::SIGTERM);
    let flipped = futures_executor::block_on(watch.next()).unwrap().unwrap();
    assert_eq!(flipped.status, ServingStatus::NOT_SERVING.into());
    assert!(futures_executor::block_on(watch.next()).is_none(), "the Watch stream ends so it cannot hold the drain");

    // The call in flight is still served while the drain waits for it.
    std::thread::sleep(Duration::from_millis(300));
    futures_executor::block_on(async {
        in_flight.send((list_services(), WriteFlags::default())).await.unwrap();
        assert!(replies.next().await.unwrap().is_ok(), "served during the drain");
        // Once it has answered, the draining server may end the stream before the client does.
        let _ = in_flight.close().await;
        assert!(replies.next().await.is_none(), "the stream ended without an error");
    });
    let status = plugin.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", plugin.log());
    assert!(signalled.elapsed() < Duration::from_secs(10), "it did not wait out the grace");
    assert!(plugin.log().contains("drained in"), "{}", plugin.log());
}

/// The numbers in "since start N calls answered OK, M not".
fn drained_counts(line: &str) -> (usize, usize) {
    let counts = line.split("since start ").nth(1).unwrap();
    let numbers: Vec<usize> =
        counts.split_whitespace().filter_map(|word| word.trim_end_matches(',').parse().ok()).collect();
    (numbers[0], numbers[1])
}

#[test]
fn sigterm_under_load_answers_every_call_the_server_received() {
    let mut plugin =
        Plugin::start(&[("RUST_LOG", "warn,tyk_grpc_plugin=info"), ("TYK_PLUGIN_MAX_CONNECTION_AGE", "1")]);
    // Calls fail fast once the server is gone instead of waiting for it.
    let options = || CallOption::default().timeout(Duration::from_secs(30));
    let client = plugin.client();
    let object = object_with_hook(HookType::Response);
    // Connect first, so every later failure is about the drain.
    dispatch(&client, &object).unwrap();
    let mut in_flight = VecDeque::new();
    let (mut ok, mut refused, mut sent) = (1, 0, 1);
    let mut signalled = false;
    let mut stop_sending = false;
    while let Some(receiver) = {
        while !stop_sending && in_flight.len() < 300 {
            match client.unary_call_async(&proto::DISPATCH, &object, options()) {
                Ok(receiver) => {
                    in_flight.push_back(receiver);
                    sent += 1;
                }
                Err(_) => stop_sending = true,
            }
        }
        in_flight.pop_front()
    } {
        match futures_executor::block_on(receiver) {
            Ok(reply) => {
                assert_eq!(reply, object);
                ok += 1;
            }
            // Not received: no server to reach, or refused by gRPC core because it arrived after
            // the shutdown began (CANCELLED: core refuses such calls before any handler runs).
            Err(grpcio::Error::RpcFailure(status))
                if [RpcStatusCode::UNAVAILABLE, RpcStatusCode::CANCELLED].contains(&status.code()) =>
            {
                refused += 1;
                stop_sending = true;
            }
            Err(other) => panic!("a call failed otherwise than by not being received: {other:?}"),
        }
        if ok == 2000 && !signalled {
            plugin.signal(libc::SIGTERM);
            signalled = true;
        }
        if signalled && ok > 20_000 {
            stop_sending = true;
        }
    }
    let status = plugin.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", plugin.log());
    let line = plugin.wait_for_line("drained in", Duration::from_secs(1));
    let (answered, not_ok) = drained_counts(&line);
    eprintln!("sent {sent}: {ok} answered, {refused} not received; server: {line}");
    assert_eq!(ok + refused, sent);
    let health_check_at_start = 1;
    assert_eq!(
        (answered, not_ok),
        (ok + health_check_at_start, 0),
        "every call the server received was answered OK, and the client got each answer"
    );
}

#[test]
fn past_the_grace_open_calls_are_cancelled_and_counted_and_a_second_signal_exits_at_once() {
    let mut plugin = Plugin::start(&[("TYK_PLUGIN_SHUTDOWN_GRACE", "0.5"), ("TYK_PLUGIN_MAX_CONNECTION_AGE", "1")]);
    let client = plugin.client();
    let _streams = [open_stream(&client), open_stream(&client)];
    let started = Instant::now();
    plugin.signal(libc::SIGTERM);
    let status = plugin.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", plugin.log());
    assert!(started.elapsed() >= Duration::from_millis(500));
    let line = plugin.wait_for_line("is over", Duration::from_secs(1));
    assert!(line.contains("WARN") && line.contains("cancelling 2 call(s) still open"), "{line}");

    let mut plugin = Plugin::start(&[("TYK_PLUGIN_SHUTDOWN_GRACE", "30")]);
    let client = plugin.client();
    let _stream = open_stream(&client);
    plugin.signal(libc::SIGINT);
    plugin.wait_for_line("draining", Duration::from_secs(5));
    let started = Instant::now();
    plugin.signal(libc::SIGTERM);
    let status = plugin.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(started.elapsed() < Duration::from_secs(5));
    plugin.wait_for_line("exiting at once", Duration::from_secs(1));
}

#[test]
fn sighup_reloads_the_keys_file_under_load_and_keeps_the_old_keys_when_the_new_file_is_bad() {
    let dir = temp_dir("reload");
    let keys_file = dir.join("keys.json");
    let write_keys = |secret: &str, policy: &str| {
        let next = dir.join("keys.json.next");
        let text = format!(r#"{{"keys": [{{"keyId": "rotated", "secret": "{secret}", "policies": ["{policy}"]}}]}}"#);
        std::fs::write(&next, if secret.is_empty() { "{\"keys\": [".into() } else { text }).unwrap();
        std::fs::rename(&next, &keys_file).unwrap();
    };
    write_keys("first secret", "first-policy");
    let settings =
        [("TYK_PLUGIN_HMAC_KEYS_FILE", keys_file.to_str().unwrap()), ("RUST_LOG", "warn,tyk_grpc_plugin=info")];
    let mut plugin = Plugin::start(&settings);
    // The policies of the key set that accepted a call signed with `secret`, if one did.
    let policies = |client: &grpcio::Client, secret: &str| {
        let reply = dispatch(client, &signed_key_check("rotated", secret)).expect("no call fails");
        reply.metadata.contains_key("token").then(|| reply.session.apply_policies.clone())
    };

    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, calls, address) = (stop.clone(), calls.clone(), plugin.address.clone());
            std::thread::spawn(move || {
                let client = client(&address);
                let mut rotated = false;
                while !stop.load(Ordering::Relaxed) {
                    // Each call sees one whole key set: a secret with its own policies, never a mix.
                    match policies(&client, "first secret") {
                        Some(policies) => assert!(!rotated && policies == ["first-policy"], "{policies:?}"),
                        None => rotated = true,
                    }
                    match policies(&client, "second secret") {
                        Some(policies) => assert!(
                            policies == ["second-policy"] && {
                                rotated = true;
                                true
                            }
                        ),
                        None => assert!(!rotated, "once rotated, the new key stays"),
                    }
                    calls.fetch_add(2, Ordering::Relaxed);
                }
            })
        })
        .collect();

    let client = plugin.client();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(policies(&client, "first secret").unwrap(), ["first-policy"]);
    write_keys("second secret", "second-policy");
    plugin.signal(libc::SIGHUP);
    plugin.wait_for_line("reloaded", Duration::from_secs(10));
    assert_eq!(policies(&client, "second secret").unwrap(), ["second-policy"]);
    assert_eq!(policies(&client, "first secret"), None);
    std::thread::sleep(Duration::from_millis(300));

    write_keys("", "");
    plugin.signal(libc::SIGHUP);
    let kept = plugin.wait_for_line("keeping the current keys", Duration::from_secs(10));
    assert!(kept.contains("not a keys file"), "{kept}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(policies(&client, "second secret").unwrap(), ["second-policy"], "a bad file keeps the keys");

    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().expect("no worker saw a failed call or a mixed key set");
    }
    assert!(calls.load(Ordering::Relaxed) > 20, "the workers made calls across both reloads");
}

#[test]
fn the_trace_id_of_a_traceparent_is_in_the_log_line() {
    let mut plugin = Plugin::start(&[]);
    let client = plugin.client();
    let call = |traceparent: &str, name: &str| {
        let mut metadata = grpcio::MetadataBuilder::new();
        metadata.add_str("traceparent", traceparent).unwrap();
        let mut object = object_with_hook(HookType::Pre);
        object.hook_name = name.into();
        client.unary_call(&proto::DISPATCH, &object, call_options().headers(metadata.build())).unwrap();
    };
    call("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "traced");
    let line = plugin.wait_for_line("name=\"traced\"", Duration::from_secs(10));
    assert!(line.contains("trace=4bf92f3577b34da6a3ce929d0e0e4736 "), "{line}");
    for (bad, name) in [
        ("garbage", "bad-1"),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "bad-2"),
        ("00-xyz-1-01", "bad-3"),
    ] {
        call(bad, name);
        let line = plugin.wait_for_line(&format!("name=\"{name}\""), Duration::from_secs(10));
        assert!(line.contains("trace=- "), "{line}");
    }
}

#[test]
fn connections_older_than_the_max_age_are_closed_after_their_grace() {
    let plugin =
        Plugin::start(&[("TYK_PLUGIN_MAX_CONNECTION_AGE", "0.5"), ("TYK_PLUGIN_MAX_CONNECTION_AGE_GRACE", "0.5")]);
    let line = plugin.log();
    assert!(line.contains("connection age 500ms + 500ms"), "{line}");
    let client = plugin.client();
    let (_sink, mut replies) = open_stream(&client);
    let opened = Instant::now();
    let ended = futures_executor::block_on(replies.next());
    assert!(matches!(ended, Some(Err(_)) | None), "the aged connection's stream ends: {ended:?}");
    assert!(opened.elapsed() < Duration::from_secs(5), "{:?}", opened.elapsed());
    // The client reconnects and carries on.
    let sent = object_with_hook(HookType::Post);
    assert_eq!(dispatch(&client, &sent).unwrap(), sent);

    // With the default age the same stream is still open after that time.
    let lasting = Plugin::start(&[]);
    let client = lasting.client();
    let (mut sink, mut replies) = open_stream(&client);
    std::thread::sleep(Duration::from_millis(1500));
    futures_executor::block_on(async {
        sink.send((list_services(), WriteFlags::default())).await.unwrap();
        assert!(replies.next().await.unwrap().is_ok());
    });
}

/// Opens an HTTP/2 connection that never answers a PING, as a gateway that died would, and returns
/// how long the server kept it (None: still open after `wait`).
fn silent_connection_lifetime(address: &str, wait: Duration) -> Option<Duration> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    // The client preface and an empty SETTINGS frame; nothing more, not even a SETTINGS ack.
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let opened = Instant::now();
    let mut buffer = [0u8; 4096];
    while opened.elapsed() < wait {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(opened.elapsed()),
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Some(opened.elapsed()),
        }
    }
    None
}

#[test]
fn keepalive_pings_close_connections_that_stop_answering() {
    let pinging = Plugin::start(&[("TYK_PLUGIN_KEEPALIVE_TIME", "0.3"), ("TYK_PLUGIN_KEEPALIVE_TIMEOUT", "0.3")]);
    let closed = silent_connection_lifetime(&pinging.address, Duration::from_secs(10));
    assert!(closed.is_some_and(|after| after < Duration::from_secs(5)), "reaped after {closed:?}");

    let default = Plugin::start(&[]);
    assert_eq!(silent_connection_lifetime(&default.address, Duration::from_secs(2)), None, "kept with the defaults");
}

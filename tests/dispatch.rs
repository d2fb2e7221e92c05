//! The plugin server over real gRPC: hooks, the gateway's payload, events, bad input, big
//! messages, many calls at once, Unix sockets, start-up errors, and grpcurl as an outside client.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use grpcio::RpcStatusCode;

fn status_code(result: grpcio::Result<impl Sized>) -> RpcStatusCode {
    match result {
        Err(grpcio::Error::RpcFailure(status)) => status.code(),
        Err(other) => panic!("not an RPC status: {other:?}"),
        Ok(_) => RpcStatusCode::OK,
    }
}

#[test]
fn the_gateways_payload_comes_back_equal_field_for_field() {
    let mut plugin = Plugin::start(&[]);
    let started = plugin.wait_for_line(" listening on ", Duration::from_secs(1));
    let version =
        format!("tyk-grpc-plugin {} listening on {}; 1 HMAC key(s);", env!("CARGO_PKG_VERSION"), plugin.address);
    assert!(started.contains(&version) && started.contains("messages up to 67108864 bytes"), "{started}");
    assert!(started.contains("shutdown grace 10s") && started.contains("connection age 30s"), "{started}");
    let sent = gateway_response_object();
    assert_eq!(sent.hook_type, HookType::Response.into());
    assert_eq!(dispatch(&plugin.client(), &sent).unwrap(), sent);
}

#[test]
fn each_hook_gets_the_demo_edits_and_nothing_else() {
    let plugin = Plugin::start(&[]);
    let client = plugin.client();

    let sent = object_with_hook(HookType::Pre);
    let reply = dispatch(&client, &sent).unwrap();
    assert_eq!(reply.request.add_params["new-param"], "new-value");
    assert_eq!(reply.request.extended_params["extended-param"], "extended-value");
    let mut expected = sent.clone();
    expected.request.mut_or_insert_default().add_params.insert("new-param".into(), "new-value".into());
    expected.request.mut_or_insert_default().extended_params.insert("extended-param".into(), "extended-value".into());
    assert_eq!(reply, expected);

    let sent = object_with_hook(HookType::PostKeyAuth);
    let reply = dispatch(&client, &sent).unwrap();
    assert_eq!(reply.request.delete_params, ["new-param"]);
    let mut expected = sent.clone();
    expected.request.mut_or_insert_default().delete_params.push("new-param".into());
    assert_eq!(reply, expected);

    for hook in [HookType::Post, HookType::Response, HookType::Unknown] {
        let sent = object_with_hook(hook);
        assert_eq!(dispatch(&client, &sent).unwrap(), sent, "{hook:?} only logs");
    }

    // CustomKeyCheck without a signature: refused, never authorised (auth has its own tests).
    let reply = dispatch(&client, &object_with_hook(HookType::CustomKeyCheck)).unwrap();
    assert_eq!(reply.request.return_overrides.response_code, 400);
    assert!(reply.session.is_none() && !reply.metadata.contains_key("token"));

    // A hook number from a newer gateway is echoed, not refused.
    let mut future_hook = object_with_hook(HookType::Pre);
    future_hook.hook_type = protobuf::EnumOrUnknown::from_i32(42);
    assert_eq!(dispatch(&client, &future_hook).unwrap(), future_hook);
}

#[test]
fn every_object_is_logged_as_one_line_of_json_with_hook_name_and_api() {
    let mut plugin = Plugin::start(&[]);
    let client = plugin.client();
    for hook in [HookType::Pre, HookType::Post, HookType::PostKeyAuth, HookType::Response, HookType::CustomKeyCheck] {
        dispatch(&client, &object_with_hook(hook)).unwrap();
        let line = plugin.wait_for_line(&format!("hook={hook:?} name=\"My{hook:?}Hook\""), Duration::from_secs(10));
        assert!(line.contains("api=\"ce6528c0af7b43206b9cf736a5e5d1b4\" trace=- {"), "{line}");
        let json = &line[line.find(" {").unwrap() + 1..];
        let logged: Object = protobuf_json_mapping::parse_from_str(json).unwrap();
        assert_eq!(logged, object_with_hook(hook), "the line holds the received object");
        assert!(json.contains(&format!("\"hookType\": \"{hook:?}\"")), "enum names, json names: {json}");
    }
}

#[test]
fn at_warn_level_no_object_is_logged() {
    let plugin = Plugin::start(&[("RUST_LOG", "warn")]);
    for _ in 0..3 {
        dispatch(&plugin.client(), &object_with_hook(HookType::Pre)).unwrap();
    }
    dispatch_event(&plugin.client(), "{\"event\": 1}").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let log = plugin.log();
    assert!(!log.contains("hook=") && !log.contains("DispatchEvent"), "{log}");
}

#[test]
fn events_are_logged_as_compact_json_and_bad_ones_warned_about_in_bounded_length() {
    let mut plugin = Plugin::start(&[]);
    let client = plugin.client();
    let payload = r#"{ "event": "AuthFailure",  "message": { "Key": "abc", "count": 9007199254740993 } }"#;
    assert_eq!(dispatch_event(&client, payload).unwrap(), EventReply::new());
    let line = plugin.wait_for_line("DispatchEvent {", Duration::from_secs(10));
    assert!(
        line.ends_with(r#"DispatchEvent {"event":"AuthFailure","message":{"Key":"abc","count":9007199254740993}}"#),
        "{line}"
    );

    let not_json = format!("not json {}", "x".repeat(100_000));
    assert_eq!(dispatch_event(&client, &not_json).unwrap(), EventReply::new());
    let line = plugin.wait_for_line("payload is not JSON", Duration::from_secs(10));
    assert!(line.contains("WARN") && line.contains("not json xxx") && line.len() < 600, "{line}");

    let too_deep = "[".repeat(100_000);
    assert_eq!(dispatch_event(&client, &too_deep).unwrap(), EventReply::new());
    plugin.wait_for_line("recursion limit exceeded", Duration::from_secs(10));
}

#[test]
fn garbage_bytes_get_an_error_status_and_the_server_serves_on() {
    let plugin = Plugin::start(&[]);
    let client = plugin.client();
    for garbage in [vec![0xff; 64], b"\x0a\xff\xff\xff\xff\x0f".to_vec(), b"not a protobuf message at all".to_vec()] {
        let result = client.unary_call(&DISPATCH_RAW, &garbage, call_options());
        let code = status_code(result);
        assert!(code != RpcStatusCode::OK, "{garbage:?} was accepted");
    }
    let sent = object_with_hook(HookType::Post);
    assert_eq!(dispatch(&client, &sent).unwrap(), sent);
}

#[test]
fn a_16_mib_body_goes_both_ways_and_the_limit_answers_resource_exhausted() {
    let plugin = Plugin::start(&[]);
    let mut big = object_with_hook(HookType::Pre);
    let request = big.request.mut_or_insert_default();
    request.raw_body = (0..16 << 20).map(|i| (i % 251) as u8).collect();
    request.body = "b".repeat(1 << 20);
    let reply = dispatch(&plugin.client(), &big).unwrap();
    assert_eq!(reply.request.raw_body, big.request.raw_body);
    assert_eq!(reply.request.body, big.request.body);

    let small = Plugin::start(&[("TYK_PLUGIN_MAX_MESSAGE_BYTES", "1048576")]);
    let client = small.client();
    assert_eq!(status_code(dispatch(&client, &big)), RpcStatusCode::RESOURCE_EXHAUSTED);
    let sent = object_with_hook(HookType::Post);
    assert_eq!(dispatch(&client, &sent).unwrap(), sent, "it serves on");
}

#[test]
fn a_thousand_calls_in_flight_at_once_are_all_answered() {
    let plugin = Plugin::start(&[("RUST_LOG", "warn")]);
    let client = plugin.client();
    let mut sent = Vec::new();
    let receivers: Vec<_> = (0..1000)
        .map(|i| {
            let mut object = object_with_hook(HookType::Response);
            object.hook_name = format!("call-{i}");
            let receiver = client.unary_call_async(&proto::DISPATCH, &object, call_options()).unwrap();
            sent.push(object);
            receiver
        })
        .collect();
    for (receiver, object) in receivers.into_iter().zip(&sent) {
        assert_eq!(&futures_executor::block_on(receiver).unwrap(), object);
    }
}

#[test]
fn serves_a_unix_socket_and_tcp_together() {
    let dir = temp_dir("unix");
    let socket = dir.join("plugin.sock");
    let listen = format!("unix:{},127.0.0.1:0", socket.display());
    let plugin = Plugin::start(&[("TYK_PLUGIN_LISTEN", &listen)]);
    let sent = object_with_hook(HookType::Post);
    // The gateway dials unix:///path; both spellings reach the socket.
    for target in [format!("unix:{}", socket.display()), format!("unix://{}", socket.display())] {
        assert_eq!(dispatch(&client(&target), &sent).unwrap(), sent, "{target}");
    }
    assert!(plugin.addresses[1].starts_with("127.0.0.1:"));
    assert_eq!(dispatch(&client(&plugin.addresses[1]), &sent).unwrap(), sent);
}

#[test]
fn each_startup_error_is_one_line_naming_the_setting() {
    let occupied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = occupied.local_addr().unwrap().to_string();
    let not_a_file = temp_dir("keys").join("missing.json");
    let malformed = temp_dir("keys").join("keys.json");
    std::fs::write(&malformed, r#"{"keys": [{"keyId": "a", "secret": "s"}, {"keyId": "a", "secret": "t"}]}"#).unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("TYK_PLUGIN_LISTEN", in_use.clone(), "Address already in use"),
        ("TYK_PLUGIN_LISTEN", "localhost".into(), "not host:port"),
        ("TYK_PLUGIN_LISTEN", "127.0.0.1:0,,".into(), "not host:port"),
        ("TYK_PLUGIN_LISTEN", "unix:/no/such/dir/plugin.sock".into(), "No such file or directory"),
        ("TYK_PLUGIN_LISTEN", "192.0.2.1:50051".into(), "Cannot assign requested address"),
        ("TYK_PLUGIN_MAX_MESSAGE_BYTES", "64MB".into(), "is not a whole number of bytes"),
        ("TYK_PLUGIN_MAX_MESSAGE_BYTES", "0".into(), "is not a whole number of bytes"),
        ("TYK_PLUGIN_MAX_MESSAGE_BYTES", "4294967296".into(), "is not a whole number of bytes"),
        ("TYK_PLUGIN_HMAC_CLOCK_SKEW", "-1".into(), "not a number of seconds"),
        ("TYK_PLUGIN_SHUTDOWN_GRACE", "ten".into(), "not a number of seconds"),
        ("TYK_PLUGIN_MAX_CONNECTION_AGE", "NaN".into(), "not a number of seconds"),
        ("TYK_PLUGIN_KEEPALIVE_TIME", "1e400".into(), "not a number of seconds"),
        ("TYK_PLUGIN_LOG_SECRETS", "yes".into(), "not 0 or 1"),
        ("TYK_PLUGIN_WORKERS", "0".into(), "not a whole number from 1 to 4096"),
        ("TYK_PLUGIN_HMAC_KEYS_FILE", not_a_file.display().to_string(), "cannot read it"),
        ("TYK_PLUGIN_HMAC_KEYS_FILE", malformed.display().to_string(), "appears twice"),
    ];
    for (name, value, reason) in cases {
        let mut settings = vec![(name, value.as_str())];
        if name != "TYK_PLUGIN_LISTEN" {
            settings.push(("TYK_PLUGIN_LISTEN", "127.0.0.1:0"));
        }
        let (status, stderr) = start_failure(&settings);
        assert_eq!(status.code(), Some(1), "{name}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}={value}: one line: {stderr}");
        assert!(stderr.contains(name) && stderr.contains(reason), "{name}={value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    drop(occupied);
}

#[test]
fn help_prints_the_settings_table_and_version_prints_the_version() {
    let help = Command::new(BINARY).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    let rows: Vec<(String, String, String)> = help
        .lines()
        .filter(|line| line.trim_start().starts_with("TYK_PLUGIN_") || line.trim_start().starts_with("RUST_LOG"))
        .map(|line| {
            let mut words = line.split_whitespace();
            let (name, default) = (words.next().unwrap().to_owned(), words.next().unwrap().to_owned());
            (name, default.replace("(unset)", ""), words.collect::<Vec<_>>().join(" "))
        })
        .collect();
    let table: Vec<(String, String, String)> = tyk_grpc_plugin::settings::SETTINGS
        .iter()
        .map(|s| (s.name.to_owned(), s.default.to_owned(), s.meaning.replace('`', "")))
        .collect();
    assert_eq!(rows, table);
    assert!(help.contains("TYK_PLUGIN_WORKERS") && help.contains("--health-check"), "{help}");

    let version = Command::new(BINARY).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8(version.stdout).unwrap().trim(),
        format!("tyk-grpc-plugin {}", env!("CARGO_PKG_VERSION"))
    );
    let unknown = Command::new(BINARY).arg("--frobnicate").output().unwrap();
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
#[ignore = "needs grpcurl"]
fn grpcurl_calls_dispatch_with_the_proto_files() {
    let grpcurl = tool("grpcurl");
    let plugin = Plugin::start(&[]);
    let payload = std::fs::read_to_string(fixture("response_example.json")).unwrap();
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");
    let output = Command::new(grpcurl)
        .args(["-plaintext", "-import-path", proto_dir, "-proto", "coprocess_object.proto", "-d", &payload])
        .args([plugin.address.as_str(), "coprocess.Dispatcher/Dispatch"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let reply: Object = protobuf_json_mapping::parse_from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    assert_eq!(reply, gateway_response_object());
}

/// VmHWM, the peak resident set, of a process, in bytes.
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

#[test]
fn big_bodies_beyond_the_memory_budget_get_resource_exhausted_and_the_server_serves_on() {
    const BUDGET: u64 = 256 << 20;
    const MARGIN: u64 = 96 << 20;
    // Logging every object, bodies and all, to nowhere: the most memory a call takes.
    let plugin = Plugin::start_logging_to(
        &[("TYK_PLUGIN_MEMORY_LIMIT", &BUDGET.to_string()), ("RUST_LOG", "info")],
        Path::new("/dev/null"),
    );
    let client = plugin.client();
    let mut big = object_with_hook(HookType::Pre);
    big.request.mut_or_insert_default().raw_body = (0..30 << 20).map(|i| (i % 251) as u8).collect();
    let receivers: Vec<_> =
        (0..16).map(|_| client.unary_call_async(&proto::DISPATCH, &big, call_options()).unwrap()).collect();
    let (mut ok, mut exhausted) = (0, 0);
    for receiver in receivers {
        match futures_executor::block_on(receiver) {
            Ok(reply) => {
                assert_eq!(reply.request.raw_body.len(), 30 << 20);
                ok += 1;
            }
            Err(grpcio::Error::RpcFailure(status)) if status.code() == RpcStatusCode::RESOURCE_EXHAUSTED => {
                exhausted += 1
            }
            // gRPC core under memory pressure also closes a connection that has no stream open at
            // that instant (benign_reclaimer_locked in chttp2_transport.cc: a GOAWAY, "Buffers
            // full"); a call racing it is refused so. Rare: 1 run in about 100.
            Err(grpcio::Error::RpcFailure(status))
                if status.code() == RpcStatusCode::UNAVAILABLE && status.message().contains("Buffers full") =>
            {
                exhausted += 1
            }
            Err(other) => panic!("neither answered nor RESOURCE_EXHAUSTED: {other:?}"),
        }
    }
    let peak = peak_rss(plugin.pid());
    eprintln!(
        "16 calls of 30 MiB under a {} MiB budget: {ok} answered, {exhausted} RESOURCE_EXHAUSTED; peak RSS {} MiB",
        BUDGET >> 20,
        peak >> 20
    );
    // The margin: the process itself (about 25 MiB), and what gRPC core's buffers take beyond their
    // quota before it reacts.
    assert!(peak < BUDGET + MARGIN, "peak RSS {} MiB within the budget and {} MiB", peak >> 20, MARGIN >> 20);
    let sent = object_with_hook(HookType::Post);
    assert_eq!(dispatch(&client, &sent).unwrap(), sent, "it serves on");
    // Of a burst, all may be refused: with 16 messages half-received at once, gRPC core's buffers
    // can fill before any is complete, and core then cancels every stream (RST_STREAM
    // ENHANCE_YOUR_CALM). A big call that fits, alone, is served.
    let reply = dispatch(&client, &big).expect("a call that fits is served");
    assert_eq!(reply.request.raw_body.len(), 30 << 20);
}

//! The example plugins (examples/), run as their own servers over real gRPC: the per-API headers
//! from config_data, and the custom auth hook that waits on an outside key service, which also
//! shows that a blocked hook holds up neither other calls nor health checks.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::proto::{HealthCheckRequest, ServingStatus, HEALTH_CHECK};
use common::*;

#[test]
fn config_headers_adds_the_headers_each_apis_config_data_names() {
    let mut plugin = Plugin::start_binary(&example("config_headers"), &[]);
    let client = plugin.client();
    let mut sent = object_with_hook(HookType::Pre);
    sent.spec.insert("config_data".into(), r#"{"add_headers": {"X-Team": "payments", "X-Count": 3}}"#.into());
    let reply = dispatch(&client, &sent).unwrap();
    let mut expected = sent.clone();
    expected.request.mut_or_insert_default().set_headers.insert("X-Team".into(), "payments".into());
    assert_eq!(reply, expected, "X-Team is set; the number is left out");
    plugin.wait_for_line("add_headers.X-Count is not a string", Duration::from_secs(10));

    let mut other_hook = sent.clone();
    other_hook.hook_type = HookType::Post.into();
    assert_eq!(dispatch(&client, &other_hook).unwrap(), other_hook, "only Pre hooks add headers");
    let without_config = object_with_hook(HookType::Pre);
    assert_eq!(dispatch(&client, &without_config).unwrap(), without_config);
    let mut broken = object_with_hook(HookType::Pre);
    broken.spec.insert("config_data".into(), "{not json".into());
    assert_eq!(dispatch(&client, &broken).unwrap(), broken, "a broken config passes the request on");
    plugin.wait_for_line("config_data is not JSON", Duration::from_secs(10));
}

/// A key service on a free port: `GET /keys/<token>` answers 200 with a policy id for `good` and
/// for `slow`, 404 otherwise. `slow` waits for the test to release it.
fn key_service() -> (String, mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (release, released) = mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let (mut stream, released) = (stream.unwrap(), released.clone());
            std::thread::spawn(move || {
                // The whole request is read: closing with unread bytes would reset the connection.
                let request: Vec<String> =
                    BufReader::new(&stream).lines().map_while(Result::ok).take_while(|line| !line.is_empty()).collect();
                let request_line = request.first().cloned().unwrap_or_default();
                let answer = match request_line.split_whitespace().nth(1) {
                    Some("/keys/good") => "200 OK\r\n\r\ngold-policy",
                    Some("/keys/slow") => {
                        let _ = released.lock().unwrap().recv();
                        "200 OK\r\n\r\nslow-policy"
                    }
                    _ => "404 Not Found\r\n\r\n",
                };
                let _ = write!(stream, "HTTP/1.0 {answer}");
            });
        }
    });
    (address, release)
}

fn bearer(token: &str) -> Object {
    key_check(&[("Authorization", &format!("Bearer {token}"))])
}

#[test]
fn lookup_auth_accepts_and_refuses_by_the_key_services_answer() {
    let (service, _release) = key_service();
    let plugin = Plugin::start_binary(&example("lookup_auth"), &[("KEY_SERVICE", &service)]);
    let client = plugin.client();
    let reply = dispatch(&client, &bearer("good")).unwrap();
    assert_eq!(
        (reply.session.apply_policies.as_slice(), reply.metadata["token"].as_str()),
        (&["gold-policy".to_owned()][..], "good")
    );
    let refused = |object: &Object| dispatch(&client, object).unwrap().request.return_overrides.response_code;
    assert_eq!(refused(&bearer("unknown")), 401);
    assert_eq!(refused(&bearer("../admin")), 400, "a token that is not a path segment is never sent on");
    assert_eq!(refused(&key_check(&[])), 400);

    let unreachable =
        Plugin::start_binary(&example("lookup_auth"), &[("KEY_SERVICE", &format!("127.0.0.1:{}", free_port()))]);
    let reply = dispatch(&unreachable.client(), &bearer("good")).unwrap();
    assert_eq!(reply.request.return_overrides.response_code, 503);
    assert!(reply.session.is_none() && !reply.metadata.contains_key("token"));
}

#[test]
fn a_hook_waiting_on_io_holds_up_neither_other_calls_nor_health_checks() {
    let (service, release) = key_service();
    let plugin = Plugin::start_binary(&example("lookup_auth"), &[("KEY_SERVICE", &service)]);
    let client = plugin.client();
    let blocked = client.unary_call_async(&proto::DISPATCH, &bearer("slow"), call_options()).unwrap();
    // The slow lookup is under way before the other calls are sent.
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..10 {
        let reply = dispatch(&client, &bearer("good")).unwrap();
        assert_eq!(reply.metadata["token"], "good");
        let health = client.unary_call(&HEALTH_CHECK, &HealthCheckRequest::new(), call_options()).unwrap();
        assert_eq!(health.status, ServingStatus::SERVING.into());
    }
    release.send(()).unwrap();
    let reply = futures_executor::block_on(blocked).unwrap();
    assert_eq!(reply.session.apply_policies, ["slow-policy"], "the blocked call is answered once its lookup is");
}

#[test]
fn with_every_worker_busy_calls_wait_their_turn_and_health_still_answers() {
    let (service, release) = key_service();
    let plugin =
        Plugin::start_binary(&example("lookup_auth"), &[("KEY_SERVICE", &service), ("TYK_PLUGIN_WORKERS", "1")]);
    let client = plugin.client();
    let blocked = client.unary_call_async(&proto::DISPATCH, &bearer("slow"), call_options()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let queued = client.unary_call_async(&proto::DISPATCH, &bearer("good"), call_options()).unwrap();
    let health = client.unary_call(&HEALTH_CHECK, &HealthCheckRequest::new(), call_options()).unwrap();
    assert_eq!(health.status, ServingStatus::SERVING.into());
    let (done, finished) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let reply = futures_executor::block_on(queued).unwrap();
        done.send(()).unwrap();
        reply
    });
    assert!(finished.recv_timeout(Duration::from_millis(500)).is_err(), "the queued call waits for the one worker");
    release.send(()).unwrap();
    assert_eq!(futures_executor::block_on(blocked).unwrap().session.apply_policies, ["slow-policy"]);
    assert_eq!(waiter.join().unwrap().metadata["token"], "good");
}

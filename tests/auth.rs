//! HMAC custom authentication over real gRPC: what the demo's clients send is accepted, what a
//! careful gateway refuses is refused with 400 or 401, secrets stay out of the log, and hmac.sh
//! (signing with openssl) agrees with the server.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;
use ring::hmac;

const ALGORITHMS: [(&str, hmac::Algorithm); 4] = [
    ("hmac-sha1", hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
    ("hmac-sha256", hmac::HMAC_SHA256),
    ("hmac-sha384", hmac::HMAC_SHA384),
    ("hmac-sha512", hmac::HMAC_SHA512),
];

fn demo_signed(algorithm: &str, ring_algorithm: hmac::Algorithm, date: &str) -> Object {
    let signature = percent_encoded(&sign(ring_algorithm, DEMO_SECRET, &format!("date: {date}")));
    key_check(&[("Date", date), ("Authorization", &authorization(DEMO_KEY_ID, algorithm, &signature))])
}

#[track_caller]
fn assert_accepted(reply: &Object, key_id: &str, secret: &str, policies: &[&str]) {
    let overrides = &reply.request.return_overrides;
    assert_eq!(overrides.response_code, -1, "accepted, left to the gateway: {}", overrides.response_error);
    assert_eq!(reply.metadata["token"], key_id);
    assert!(reply.session.hmac_enabled);
    assert_eq!(reply.session.hmac_secret, secret);
    assert_eq!(reply.session.apply_policies, policies);
}

#[track_caller]
fn assert_refused(reply: &Object, status: i32) {
    let overrides = &reply.request.return_overrides;
    assert_eq!(overrides.response_code, status, "{}", overrides.response_error);
    assert!(reply.session.is_none() && !reply.metadata.contains_key("token"));
    if status == 401 {
        assert_eq!(overrides.response_error, "Not authorised", "the same words whatever the reason");
        assert_eq!(overrides.headers["WWW-Authenticate"], "Signature headers=\"date\"");
    } else {
        assert!(overrides.response_error.starts_with("Bad request: "), "{}", overrides.response_error);
    }
}

#[test]
fn the_demo_key_is_accepted_with_every_algorithm_encoded_or_plain() {
    let plugin = Plugin::start(&[]);
    let warning = plugin.log().lines().find(|line| line.contains("demo's public HMAC key")).map(str::to_owned);
    assert!(warning.is_some_and(|line| line.contains("WARN")), "a start-up warning says the demo key is in use");
    let client = plugin.client();
    for (name, algorithm) in ALGORITHMS {
        let date = now();
        let reply = dispatch(&client, &demo_signed(name, algorithm, &date)).unwrap();
        assert_accepted(&reply, DEMO_KEY_ID, DEMO_SECRET, &[]);

        let plain = sign(algorithm, DEMO_SECRET, &format!("date: {date}"));
        let lower_case_escapes =
            percent_encoded(&plain).replace("%2B", "%2b").replace("%2F", "%2f").replace("%3D", "%3d");
        for signature in [plain, lower_case_escapes] {
            let object =
                key_check(&[("Date", &date), ("Authorization", &authorization(DEMO_KEY_ID, name, &signature))]);
            assert_accepted(&dispatch(&client, &object).unwrap(), DEMO_KEY_ID, DEMO_SECRET, &[]);
        }
    }
}

#[test]
fn a_keys_file_holds_several_keys_with_their_policies() {
    let keys_file = temp_dir("auth-keys").join("keys.json");
    std::fs::write(
        &keys_file,
        r#"{"keys": [
            {"keyId": "partner-a", "secret": "first secret", "policies": ["gold", "eu"]},
            {"keyId": "cGFydG5lci1i", "secret": "sécret ü", "policies": ["silver"]},
            {"keyId": "internal", "secret": "s3"}
        ]}"#,
    )
    .unwrap();
    let plugin = Plugin::start(&[("TYK_PLUGIN_HMAC_KEYS_FILE", keys_file.to_str().unwrap())]);
    let client = plugin.client();
    for (key_id, secret, policies) in [
        ("partner-a", "first secret", &["gold", "eu"][..]),
        ("cGFydG5lci1i", "sécret ü", &["silver"]),
        ("internal", "s3", &[]),
    ] {
        let date = now();
        let signature = sign(hmac::HMAC_SHA256, secret, &format!("date: {date}"));
        let object =
            key_check(&[("Date", &date), ("Authorization", &authorization(key_id, "hmac-sha256", &signature))]);
        assert_accepted(&dispatch(&client, &object).unwrap(), key_id, secret, policies);
    }
    let demo = demo_signed("hmac-sha512", hmac::HMAC_SHA512, &now());
    assert_refused(&dispatch(&client, &demo).unwrap(), 401);
    assert!(!plugin.log().contains("demo's public HMAC key"), "no demo warning with a keys file");
}

#[test]
fn each_malformed_request_is_a_400_and_each_failed_check_a_401() {
    let plugin = Plugin::start(&[]);
    let client = plugin.client();
    let date = now();
    let good = sign(hmac::HMAC_SHA256, DEMO_SECRET, &format!("date: {date}"));
    let refused = |headers: &[(&str, &str)], status: i32| {
        let reply = dispatch(&client, &key_check(headers)).unwrap();
        assert_refused(&reply, status);
    };
    let with_authorization = |value: &str, status: i32| refused(&[("Date", &date), ("Authorization", value)], status);

    // 400: malformed
    refused(&[("Date", &date)], 400);
    refused(&[("Authorization", &authorization(DEMO_KEY_ID, "hmac-sha256", &good))], 400);
    refused(
        &[("Date", "yesterday at noon"), ("Authorization", &authorization(DEMO_KEY_ID, "hmac-sha256", &good))],
        400,
    );
    with_authorization(&format!("Signature keyId=\"{DEMO_KEY_ID}\",algorithm=\"hmac-sha256\""), 400);
    with_authorization(&format!("Signature keyId=\"{DEMO_KEY_ID}\",signature=\"{good}\""), 400);
    with_authorization(&format!("Signature algorithm=\"hmac-sha256\",signature=\"{good}\""), 400);
    with_authorization(&authorization(DEMO_KEY_ID, "hmac-md5", &good), 400);
    with_authorization(&format!("{},realm=\"x\"", authorization(DEMO_KEY_ID, "hmac-sha256", &good)), 400);
    with_authorization("Bearer abc.def.ghi", 400);
    with_authorization(&format!("{},headers=\"host\"", authorization(DEMO_KEY_ID, "hmac-sha256", &good)), 400);

    // 401: not authorised, one message whatever the reason
    with_authorization(&authorization("someone-else", "hmac-sha256", &good), 401);
    with_authorization(&authorization(DEMO_KEY_ID, "hmac-sha256", &sign(hmac::HMAC_SHA256, "wrong", "date: x")), 401);
    with_authorization(&authorization(DEMO_KEY_ID, "hmac-sha512", &good), 401);
    with_authorization(&authorization(DEMO_KEY_ID, "hmac-sha256", "%%%not-base64"), 401);
    let skew = Duration::from_secs(301);
    for outside in [SystemTime::now() - skew, SystemTime::now() + skew] {
        let stale = httpdate::fmt_http_date(outside);
        let signature = sign(hmac::HMAC_SHA256, DEMO_SECRET, &format!("date: {stale}"));
        refused(&[("Date", &stale), ("Authorization", &authorization(DEMO_KEY_ID, "hmac-sha256", &signature))], 401);
    }

    // Each refusal's reason is in the log at INFO, and no signature or secret is.
    let mut plugin = plugin;
    for reason in [
        "refused 400: no Authorization header",
        "refused 400: the date is not an HTTP date",
        "refused 400: unsupported algorithm",
        "refused 401: unknown keyId",
        "refused 401: the signature does not match",
        "refused 401: the signature is not base64",
        "refused 401: the date is outside the allowed clock skew",
    ] {
        let line = plugin.wait_for_line(reason, Duration::from_secs(10));
        assert!(line.contains(" INFO ") && line.contains("name=\"CustomHMACCheck\""), "{line}");
    }
    let log = plugin.log();
    assert!(!log.contains(&good) && !log.contains(DEMO_SECRET), "no signature or secret in the log");
}

#[test]
fn a_zero_clock_skew_accepts_any_date_a_small_one_refuses_old_dates() {
    let old = "Sun, 06 Nov 1994 08:49:37 GMT";
    let object = demo_signed("hmac-sha256", hmac::HMAC_SHA256, old);
    let unchecked = Plugin::start(&[("TYK_PLUGIN_HMAC_CLOCK_SKEW", "0")]);
    assert_accepted(&dispatch(&unchecked.client(), &object).unwrap(), DEMO_KEY_ID, DEMO_SECRET, &[]);
    let strict = Plugin::start(&[("TYK_PLUGIN_HMAC_CLOCK_SKEW", "5")]);
    assert_refused(&dispatch(&strict.client(), &object).unwrap(), 401);
    let fresh = demo_signed("hmac-sha256", hmac::HMAC_SHA256, &now());
    assert_accepted(&dispatch(&strict.client(), &fresh).unwrap(), DEMO_KEY_ID, DEMO_SECRET, &[]);
}

#[test]
fn a_headers_list_with_request_target_and_x_aux_date_is_verified() {
    let plugin = Plugin::start(&[]);
    let client = plugin.client();
    let date = now();
    let signing_string =
        format!("(request-target): get /grpc-custom-auth/get?x=1\nhost: gateway.example\nx-aux-date: {date}");
    let signature = percent_encoded(&sign(hmac::HMAC_SHA384, DEMO_SECRET, &signing_string));
    let header = format!(
        "keyId=\"{DEMO_KEY_ID}\", algorithm=\"hmac-sha384\", headers=\"(request-target) Host date\", signature=\"{signature}\""
    );
    let headers = [("Host", "gateway.example"), ("X-Aux-Date", date.as_str()), ("Authorization", &header)];
    assert_accepted(&dispatch(&client, &key_check(&headers)).unwrap(), DEMO_KEY_ID, DEMO_SECRET, &[]);

    // Any change to a signed part fails the check.
    let mut moved = key_check(&headers);
    moved.request.mut_or_insert_default().request_uri = "/grpc-custom-auth/admin".into();
    assert_refused(&dispatch(&client, &moved).unwrap(), 401);
    let mut other_host = key_check(&headers);
    other_host.request.mut_or_insert_default().headers.insert("Host".into(), "evil.example".into());
    assert_refused(&dispatch(&client, &other_host).unwrap(), 401);
}

#[test]
fn absurd_header_values_get_a_400_or_401_never_an_rpc_error() {
    let plugin = Plugin::start(&[("RUST_LOG", "warn")]);
    let client = plugin.client();
    let date = now();
    let megabytes = "a".repeat(4 << 20);
    let long_key = format!("keyId=\"{megabytes}\",algorithm=\"hmac-sha256\",signature=\"c2ln\"");
    let long_signature = format!("keyId=\"k\",algorithm=\"hmac-sha256\",signature=\"{megabytes}\"");
    let many_names =
        format!("keyId=\"k\",algorithm=\"hmac-sha256\",signature=\"c2ln\",headers=\"{}\"", "date ".repeat(500_000));
    let many_pairs = "keyId=\"k\",".repeat(300_000);
    let values = [
        megabytes.clone(),
        long_key,
        long_signature,
        many_names,
        many_pairs,
        "keyId=\"k,algorithm=\"hmac-sha256\",signature=\"abc".into(),
        "\"\"\"\"\"\"".into(),
        "Signature keyId=\"ключ\",algorithm=\"hmac-sha256\",signature=\"✓✓✓\"".into(),
        "\u{0}\u{1}\u{7f}\u{feff}".into(),
        ",,,,=,=\"".into(),
    ];
    for value in &values {
        let reply = dispatch(&client, &key_check(&[("Date", &date), ("Authorization", value)])).unwrap();
        let code = reply.request.return_overrides.response_code;
        assert!(code == 400 || code == 401, "{}: {code}", &value[..value.len().min(40)]);
        assert!(reply.session.is_none());
    }
    let date_garbage = format!("{megabytes}\u{1F600}");
    let reply = dispatch(&client, &key_check(&[("Date", &date_garbage), ("Authorization", &values[7])])).unwrap();
    assert_eq!(reply.request.return_overrides.response_code, 400);
    assert_accepted(
        &dispatch(&client, &demo_signed("hmac-sha256", hmac::HMAC_SHA256, &now())).unwrap(),
        DEMO_KEY_ID,
        DEMO_SECRET,
        &[],
    );
}

#[test]
fn secrets_never_reach_the_log_unless_asked_for() {
    let mut plugin = Plugin::start(&[]);
    let client = plugin.client();
    let object = demo_signed("hmac-sha512", hmac::HMAC_SHA512, &now());
    let signature = object.request.headers["Authorization"].split("signature=\"").nth(1).unwrap().trim_end_matches('"');
    let reply = dispatch(&client, &object).unwrap();
    assert_accepted(&reply, DEMO_KEY_ID, DEMO_SECRET, &[]);
    assert_eq!(reply.request.headers["Authorization"], object.request.headers["Authorization"], "the reply keeps it");
    plugin.wait_for_line("authorised keyId=", Duration::from_secs(10));

    // Every hook's object: session secrets and credential headers.
    let mut post = object_with_hook(HookType::Post);
    let headers = &mut post.request.mut_or_insert_default().headers;
    for (name, value) in [
        ("Cookie", "session=cookie-secret"),
        ("X-Api-Key", "api-key-secret"),
        ("proxy-authorization", "Basic proxy-secret"),
    ] {
        headers.insert(name.into(), value.into());
    }
    let session = post.session.mut_or_insert_default();
    session.hmac_secret = "session-hmac-secret".into();
    session.basic_auth_data.mut_or_insert_default().password = "basic-password-secret".into();
    session.jwt_data.mut_or_insert_default().secret = "jwt-secret".into();
    session.oauth_keys.insert("client".into(), "oauth-secret".into());
    assert_eq!(dispatch(&client, &post).unwrap(), post, "redaction never alters the reply");
    let line = plugin.wait_for_line("hook=Post", Duration::from_secs(10));
    assert!(line.contains("\"Cookie\": \"[redacted]\"") && line.contains("\"hmacSecret\": \"[redacted]\""), "{line}");

    let secrets = [
        signature,
        DEMO_SECRET,
        "cookie-secret",
        "api-key-secret",
        "proxy-secret",
        "session-hmac-secret",
        "basic-password-secret",
        "jwt-secret",
        "oauth-secret",
    ];
    let log = plugin.log();
    for secret in secrets {
        assert!(!log.contains(secret), "{secret} is in the log:\n{log}");
    }

    let mut debugging = Plugin::start(&[("TYK_PLUGIN_LOG_SECRETS", "1")]);
    dispatch(&debugging.client(), &post).unwrap();
    let line = debugging.wait_for_line("hook=Post", Duration::from_secs(10));
    assert!(line.contains("session-hmac-secret") && line.contains("cookie-secret"), "{line}");
}

/// Runs hmac.sh against a listener that records the request and answers `status`; returns the
/// script's exit status and the headers it sent.
fn run_hmac_sh(algorithm: &str, status: u16) -> (std::process::ExitStatus, Vec<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let recorder = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut headers = Vec::new();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        assert_eq!(request_line.trim_end(), "GET /grpc-custom-auth/get HTTP/1.1");
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        write!(stream, "HTTP/1.1 {status} Whatever\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok").unwrap();
        headers
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hmac.sh");
    let output =
        Command::new("bash").arg(script).env("BASE_URL", base_url).env("HMAC_ALGORITHM", algorithm).output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("Authorization: Signature keyId="), "it prints what it sends: {printed}");
    assert!(printed.contains(&format!("HTTP {status}")), "{printed}");
    (output.status, recorder.join().unwrap())
}

#[test]
#[ignore = "needs openssl and curl"]
fn hmac_sh_signs_what_the_server_accepts() {
    tool("openssl");
    tool("curl");
    let plugin = Plugin::start(&[]);
    let client = plugin.client();
    for algorithm in ["hmac-sha512", "hmac-sha256", "hmac-sha384", "hmac-sha1"] {
        let (status, headers) = run_hmac_sh(algorithm, 200);
        assert!(status.success(), "{algorithm}: exit 0 on HTTP 200");
        let sent: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let reply = dispatch(&client, &key_check(&sent)).unwrap();
        assert_accepted(&reply, DEMO_KEY_ID, DEMO_SECRET, &[]);
    }
    let (status, _) = run_hmac_sh("hmac-sha512", 401);
    assert!(!status.success(), "non-zero on a refusal");
    let unsupported = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/hmac.sh"))
        .env("HMAC_ALGORITHM", "md5")
        .output()
        .unwrap();
    assert_eq!(unsupported.status.code(), Some(2));
}

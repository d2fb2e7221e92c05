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

/// The session token the README promises for a key without one of its own: the hex HMAC-SHA256,
/// under the key's secret, of "tyk-grpc-plugin session token\n" and the keyId.
fn derived_token(key_id: &str, secret: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, format!("tyk-grpc-plugin session token\n{key_id}").as_bytes());
    tag.as_ref().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Accepted, with exactly what the gateway needs of a custom-auth key: the token, the policies,
/// and access to the calling API alone (key_check's "grpc-custom-auth"). No secret.
#[track_caller]
fn assert_accepted(reply: &Object, token: &str, policies: &[&str]) {
    let overrides = &reply.request.return_overrides;
    assert_eq!(overrides.response_code, -1, "accepted, left to the gateway: {}", overrides.response_error);
    assert_eq!(reply.metadata["token"], token);
    let access = proto::coprocess_session_state::AccessDefinition {
        api_id: "grpc-custom-auth".into(),
        versions: vec!["Default".into()],
        ..Default::default()
    };
    let expected = proto::coprocess_session_state::SessionState {
        apply_policies: policies.iter().map(|policy| policy.to_string()).collect(),
        access_rights: [("grpc-custom-auth".to_owned(), access)].into(),
        ..Default::default()
    };
    assert_eq!(*reply.session, expected);
}

#[track_caller]
fn assert_refused(reply: &Object, status: i32) {
    let overrides = &reply.request.return_overrides;
    assert_eq!(overrides.response_code, status, "{}", overrides.response_error);
    assert!(reply.session.is_none() && !reply.metadata.contains_key("token"));
    if status == 401 {
        assert_eq!(overrides.response_error, "Not authorised", "the same words whatever the reason");
        assert!(overrides.headers["WWW-Authenticate"].starts_with("Signature headers=\""));
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
        assert_accepted(&reply, DEMO_KEY_ID, &[]);

        let plain = sign(algorithm, DEMO_SECRET, &format!("date: {date}"));
        let lower_case_escapes =
            percent_encoded(&plain).replace("%2B", "%2b").replace("%2F", "%2f").replace("%3D", "%3d");
        for signature in [plain, lower_case_escapes] {
            let object =
                key_check(&[("Date", &date), ("Authorization", &authorization(DEMO_KEY_ID, name, &signature))]);
            assert_accepted(&dispatch(&client, &object).unwrap(), DEMO_KEY_ID, &[]);
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
        assert_accepted(&dispatch(&client, &object).unwrap(), &derived_token(key_id, secret), policies);
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
    assert_accepted(&dispatch(&unchecked.client(), &object).unwrap(), DEMO_KEY_ID, &[]);
    let strict = Plugin::start(&[("TYK_PLUGIN_HMAC_CLOCK_SKEW", "5")]);
    assert_refused(&dispatch(&strict.client(), &object).unwrap(), 401);
    let fresh = demo_signed("hmac-sha256", hmac::HMAC_SHA256, &now());
    assert_accepted(&dispatch(&strict.client(), &fresh).unwrap(), DEMO_KEY_ID, &[]);
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
    assert_accepted(&dispatch(&client, &key_check(&headers)).unwrap(), DEMO_KEY_ID, &[]);

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
    assert_accepted(&reply, DEMO_KEY_ID, &[]);
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
        assert_accepted(&reply, DEMO_KEY_ID, &[]);
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

/// A signer written from Tyk's HMAC middleware (gateway/mw_http_signature_validation.go), not from
/// src/auth.rs: one line per listed header; `(request-target)` is the lower-case method and the
/// URL path (decoded, without its query); `date` reads X-Aux-Date when there is one; the MAC is
/// base64, query-escaped as Go's url.QueryEscape does. Returns the `signature` value.
fn tyk_signature(object: &Object, algorithm: hmac::Algorithm, secret: &str, headers: &[&str]) -> String {
    let request = &object.request;
    let get = |name: &str| {
        request.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.trim().to_owned())
    };
    let lines: Vec<String> = headers
        .iter()
        .map(|header| match header.to_ascii_lowercase().as_str() {
            "(request-target)" => {
                let path = request.request_uri.split('?').next().unwrap();
                let path = percent_encoding::percent_decode_str(path).decode_utf8().unwrap();
                format!("(request-target): {} {path}", request.method.to_ascii_lowercase())
            }
            "date" => match get("x-aux-date") {
                Some(aux) => format!("x-aux-date: {aux}"),
                None => format!("date: {}", get("date").unwrap_or_default()),
            },
            other => format!("{other}: {}", get(other).unwrap_or_default()),
        })
        .collect();
    percent_encoded(&sign(algorithm, secret, &lines.join("\n")))
}

/// A date in the form Go's time.Format writes with Tyk's layout, zone "UTC".
fn utc_date() -> String {
    now().replace(" GMT", " UTC")
}

#[test]
fn requests_signed_as_tyks_middleware_signs_them_are_accepted() {
    let mut plugin = Plugin::start(&[]);
    let client = plugin.client();
    let mut base = key_check(&[("Host", "gw.example.com")]);
    base.request.mut_or_insert_default().request_uri = "/grpc-custom-auth/a%20b/get?x=1&y=2".into();
    let lower_case_names = now().to_ascii_lowercase(); // "sun, 06 nov 1994 08:49:37 gmt"
    for (date, headers, style) in [
        (now(), &["(request-target)", "host", "date"][..], "quoted"),
        (utc_date(), &["date"][..], "unquoted"),
        (lower_case_names, &["(request-target)", "date"][..], "lower-case names"),
        (now(), &["date", "(request-target)"][..], "unquoted"),
    ] {
        let mut object = base.clone();
        object.request.mut_or_insert_default().headers.insert("Date".into(), date.clone());
        let signature = tyk_signature(&object, hmac::HMAC_SHA256, DEMO_SECRET, headers);
        let list = headers.join(" ");
        let authorization = match style {
            "quoted" => format!("Signature keyId=\"{DEMO_KEY_ID}\",algorithm=\"hmac-sha256\",headers=\"{list}\",signature=\"{signature}\""),
            "unquoted" if headers.len() == 1 => {
                format!("Signature keyId={DEMO_KEY_ID},algorithm=hmac-sha256,headers={list},signature={signature}")
            }
            "unquoted" => format!("signature keyId={DEMO_KEY_ID},algorithm=hmac-sha256,headers=\"{list}\",signature={signature}"),
            _ => format!("Signature keyid=\"{DEMO_KEY_ID}\",ALGORITHM=\"hmac-sha256\",Headers=\"{list}\",SIGNATURE=\"{signature}\""),
        };
        object.request.mut_or_insert_default().headers.insert("Authorization".into(), authorization.clone());
        let reply = dispatch(&client, &object).unwrap();
        assert_accepted(&reply, DEMO_KEY_ID, &[]);
        if headers.contains(&"(request-target)") {
            let line = plugin.wait_for_line("request-target) in Tyk's form", Duration::from_secs(10));
            assert!(line.contains("authorised keyId="), "the log says which form matched: {line}");
        }
    }

    // The draft's form (path and query) is accepted as well, and logged without the note.
    let mut draft = base.clone();
    let date = now();
    draft.request.mut_or_insert_default().headers.insert("Date".into(), date.clone());
    let signing_string = format!("(request-target): get /grpc-custom-auth/a%20b/get?x=1&y=2\ndate: {date}");
    let signature = percent_encoded(&sign(hmac::HMAC_SHA512, DEMO_SECRET, &signing_string));
    let authorization = format!(
        "keyId=\"{DEMO_KEY_ID}\",algorithm=\"hmac-sha512\",headers=\"(request-target) date\",signature=\"{signature}\""
    );
    draft.request.mut_or_insert_default().headers.insert("Authorization".into(), authorization);
    assert_accepted(&dispatch(&client, &draft).unwrap(), DEMO_KEY_ID, &[]);
    let count = plugin.log().matches("in Tyk's form").count();
    assert_eq!(count, 3, "only the three Tyk-form requests carry the note:\n{}", plugin.log());
}

#[test]
fn rsa_sha256_signatures_are_checked_against_the_keys_public_key() {
    let dir = temp_dir("rsa");
    let keys_file = dir.join("keys.json");
    let public_key = std::fs::read_to_string(fixture("rsa_public.pem")).unwrap();
    let keys = serde_json::json!({"keys": [{"keyId": "rsa-partner", "publicKey": public_key, "token": "rsa-partner-token", "policies": ["p"]}]});
    std::fs::write(&keys_file, keys.to_string()).unwrap();
    let plugin = Plugin::start(&[("TYK_PLUGIN_HMAC_KEYS_FILE", keys_file.to_str().unwrap())]);
    let client = plugin.client();

    // Signed as Tyk's clients sign rsa-sha256: PKCS #1 v1.5 over SHA-256, plain base64.
    let pem = std::fs::read_to_string(fixture("rsa_private_pkcs8.pem")).unwrap();
    let der = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        pem.lines().filter(|line| !line.starts_with("-----")).collect::<String>(),
    )
    .unwrap();
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
    let rsa_signed = |date: &str| {
        let mut signed = vec![0; pair.public().modulus_len()];
        let rng = ring::rand::SystemRandom::new();
        pair.sign(&ring::signature::RSA_PKCS1_SHA256, &rng, format!("date: {date}").as_bytes(), &mut signed).unwrap();
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, signed)
    };
    let date = now();
    let authorization =
        format!("Signature keyId=\"rsa-partner\",algorithm=\"rsa-sha256\",signature=\"{}\"", rsa_signed(&date));
    let reply = dispatch(&client, &key_check(&[("Date", &date), ("Authorization", &authorization)])).unwrap();
    assert_accepted(&reply, "rsa-partner-token", &["p"]);

    let stale = rsa_signed("Sun, 06 Nov 1994 08:49:37 GMT");
    let authorization = format!("keyId=\"rsa-partner\",algorithm=\"rsa-sha256\",signature=\"{stale}\"");
    assert_refused(&dispatch(&client, &key_check(&[("Date", &date), ("Authorization", &authorization)])).unwrap(), 401);
}

#[test]
fn required_headers_and_a_signed_digest_close_replays_against_another_target_or_body() {
    let plugin = Plugin::start(&[("TYK_PLUGIN_HMAC_REQUIRED_HEADERS", "(request-target) date digest")]);
    let mut plugin = plugin;
    let client = plugin.client();
    let body = b"{\"amount\": 100}";
    let digest = format!(
        "SHA-256={}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            ring::digest::digest(&ring::digest::SHA256, body)
        )
    );
    let signed = |uri: &str, body: &[u8], headers: &str| {
        let date = now();
        let mut object = key_check(&[("Date", &date), ("Digest", &digest)]);
        let request = object.request.mut_or_insert_default();
        request.raw_body = body.to_vec();
        let signing_string = format!("(request-target): get /grpc-custom-auth/get?x=1\ndate: {date}\ndigest: {digest}");
        let names: Vec<&str> = headers.split(' ').collect();
        let lines: Vec<&str> = signing_string
            .lines()
            .filter(|line| names.iter().any(|name| line.starts_with(&format!("{name}:"))))
            .collect();
        let signature = percent_encoded(&sign(hmac::HMAC_SHA256, DEMO_SECRET, &lines.join("\n")));
        let authorization = format!(
            "keyId=\"{DEMO_KEY_ID}\",algorithm=\"hmac-sha256\",headers=\"{headers}\",signature=\"{signature}\""
        );
        request.headers.insert("Authorization".into(), authorization);
        request.request_uri = uri.into();
        dispatch(&client, &object).unwrap()
    };
    let full = "(request-target) date digest";
    assert_accepted(&signed("/grpc-custom-auth/get?x=1", body, full), DEMO_KEY_ID, &[]);
    assert_refused(&signed("/grpc-custom-auth/get?x=2", body, full), 401);
    assert_refused(&signed("/grpc-custom-auth/get?x=1", b"{\"amount\": 999}", full), 401);
    plugin.wait_for_line("refused 401: the Digest does not match the body", Duration::from_secs(10));
    assert_refused(&signed("/grpc-custom-auth/get?x=1", body, "date digest"), 401);
    assert_refused(&signed("/grpc-custom-auth/get?x=1", body, "(request-target) date"), 401);
    let line =
        plugin.wait_for_line("refused 401: the signature does not cover a required header", Duration::from_secs(10));
    assert!(line.contains("hook=CustomKeyCheck"), "{line}");
    let reply = signed("/grpc-custom-auth/get?x=1", body, "date digest");
    assert_eq!(
        reply.request.return_overrides.headers["WWW-Authenticate"],
        "Signature headers=\"(request-target) date digest\""
    );
}

#[test]
fn the_algorithm_allow_list_refuses_the_others() {
    let plugin = Plugin::start(&[("TYK_PLUGIN_HMAC_ALGORITHMS", "hmac-sha256, hmac-sha512")]);
    let client = plugin.client();
    for (name, algorithm) in ALGORITHMS {
        let reply = dispatch(&client, &demo_signed(name, algorithm, &now())).unwrap();
        match name {
            "hmac-sha256" | "hmac-sha512" => assert_accepted(&reply, DEMO_KEY_ID, &[]),
            _ => assert_refused(&reply, 400),
        }
    }
    let (status, stderr) =
        start_failure(&[("TYK_PLUGIN_HMAC_ALGORITHMS", "hmac-md5"), ("TYK_PLUGIN_LISTEN", "127.0.0.1:0")]);
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("TYK_PLUGIN_HMAC_ALGORITHMS") && stderr.lines().count() == 1, "{stderr}");
}

#[test]
fn a_line_break_in_a_header_value_cannot_pass_one_signature_for_another_header_list() {
    let plugin = Plugin::start(&[]);
    let client = plugin.client();
    let date = now();
    // Signed honestly: three headers.
    let signature = percent_encoded(&sign(hmac::HMAC_SHA256, DEMO_SECRET, &format!("x-a: 1\nx-b: 2\ndate: {date}")));
    // Replayed with two, X-A carrying the second line.
    let authorization =
        format!("keyId=\"{DEMO_KEY_ID}\",algorithm=\"hmac-sha256\",headers=\"x-a date\",signature=\"{signature}\"");
    let forged = key_check(&[("Date", &date), ("X-A", "1\nx-b: 2"), ("Authorization", &authorization)]);
    assert_refused(&dispatch(&client, &forged).unwrap(), 400);
    for value in ["1\r", "1\0"] {
        let object = key_check(&[("Date", &date), ("X-A", value), ("Authorization", &authorization)]);
        assert_refused(&dispatch(&client, &object).unwrap(), 400);
    }
}

#[test]
fn an_accepted_reply_carries_no_secret_and_a_key_id_is_no_token() {
    let keys_file = temp_dir("tokens").join("keys.json");
    std::fs::write(
        &keys_file,
        r#"{"keys": [{"keyId": "partner", "secret": "partner-secret-bytes"},
                     {"keyId": "legacy", "secret": "legacy-secret-bytes", "token": "key-already-in-tyk"}]}"#,
    )
    .unwrap();
    let settings = [("TYK_PLUGIN_HMAC_KEYS_FILE", keys_file.to_str().unwrap())];
    let plugin = Plugin::start(&settings);
    let signed = |key_id: &str, secret: &str| {
        let date = now();
        let signature = sign(hmac::HMAC_SHA256, secret, &format!("date: {date}"));
        key_check(&[("Date", &date), ("Authorization", &authorization(key_id, "hmac-sha256", &signature))])
    };
    // What anyone who captured a signed request could replay straight to the port.
    let raw = plugin
        .client()
        .unary_call(
            &DISPATCH_RAW,
            &protobuf::Message::write_to_bytes(&signed("partner", "partner-secret-bytes")).unwrap(),
            call_options(),
        )
        .unwrap();
    assert!(!String::from_utf8_lossy(&raw).contains("partner-secret-bytes"), "the secret is not in the reply's bytes");
    let reply: Object = protobuf::Message::parse_from_bytes(&raw).unwrap();
    let token = reply.metadata["token"].clone();
    assert_eq!(token, derived_token("partner", "partner-secret-bytes"));
    assert_accepted(&reply, &token, &[]);
    assert_accepted(
        &dispatch(&plugin.client(), &signed("legacy", "legacy-secret-bytes")).unwrap(),
        "key-already-in-tyk",
        &[],
    );

    // Another replica (or a restart) derives the same token, so quotas carry over.
    let replica = Plugin::start(&settings);
    assert_eq!(
        dispatch(&replica.client(), &signed("partner", "partner-secret-bytes")).unwrap().metadata["token"],
        token
    );
}

#[test]
fn a_bad_keys_file_stops_the_start_naming_line_and_column_and_quoting_nothing() {
    let dir = temp_dir("bad-keys");
    for (text, expected) in [
        (r#"{"keys": [{"keyId": "k", "secret": "LEAK" "LEAK"}]}"#, "line 1, column 43: this is not JSON"),
        ("{\"keys\": [{\"keyId\": \"k\",\n \"secretLEAK\": \"LEAK\"}]}", "line 2, column 13: an unknown field"),
        (r#"{"keys": [{"keyId": "k", "secret": "LEAK", "secret": "LEAK"}]}"#, "a field appears twice"),
        (
            r#"{"keys": [{"keyId": "k", "secret": "LEAK"}], "keys": [{"keyId": "j", "secret": "LEAK"}]}"#,
            "a field appears twice",
        ),
        ("{\"keys\": [{\"keyId\": \"k\", \"secret\": \"s\"}]} LEAK", "there is more after the end"),
    ] {
        let file = dir.join("keys.json");
        std::fs::write(&file, text).unwrap();
        let (status, stderr) = start_failure(&[
            ("TYK_PLUGIN_HMAC_KEYS_FILE", file.to_str().unwrap()),
            ("TYK_PLUGIN_LISTEN", "127.0.0.1:0"),
        ]);
        assert_eq!(status.code(), Some(1), "{text}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains("TYK_PLUGIN_HMAC_KEYS_FILE") && stderr.contains(expected), "{text}: {stderr}");
        assert!(!stderr.contains("LEAK"), "{stderr}");
    }
}

#[test]
fn a_keys_file_every_user_can_read_is_warned_about_at_start_and_on_reload() {
    use std::os::unix::fs::PermissionsExt as _;
    let file = temp_dir("readable-keys").join("keys.json");
    std::fs::write(&file, r#"{"keys": [{"keyId": "k", "secret": "s"}]}"#).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let settings = [("TYK_PLUGIN_HMAC_KEYS_FILE", file.to_str().unwrap())];
    let mut private = Plugin::start(&settings);
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    private.signal(libc::SIGHUP);
    let line = private.wait_for_line("can be read by every user", Duration::from_secs(10));
    assert!(line.contains("WARN"), "{line}");
    assert_eq!(private.log().matches("can be read by every user").count(), 1, "not at start: it was 0600 then");
    let mut readable = Plugin::start(&settings);
    readable.wait_for_line("can be read by every user", Duration::from_secs(10));
}

#[test]
fn credentials_in_query_strings_custom_headers_and_bodies_stay_out_of_the_log() {
    let mut plugin =
        Plugin::start(&[("TYK_PLUGIN_LOG_REDACT_HEADERS", "X-Custom-Token"), ("TYK_PLUGIN_LOG_BODIES", "0")]);
    let mut object = object_with_hook(HookType::Pre);
    let request = object.request.mut_or_insert_default();
    request.url = "/get?api_key=query-secret-1&page=2".into();
    request.request_uri = "/get?ACCESS_TOKEN=query-secret-2&page=2".into();
    request.params.insert("password".into(), "query-secret-3".into());
    request.headers.insert("X-Custom-Token".into(), "header-secret".into());
    request.body = "body-secret".into();
    request.raw_body = b"body-secret".to_vec();
    let reply = dispatch(&plugin.client(), &object).unwrap();
    assert_eq!(reply.request.raw_body, b"body-secret", "the reply keeps them");
    let line = plugin.wait_for_line("hook=Pre", Duration::from_secs(10));
    for secret in
        ["query-secret-1", "query-secret-2", "query-secret-3", "header-secret", "body-secret", "Ym9keS1zZWNyZXQ="]
    {
        assert!(!line.contains(secret), "{secret} is in the log: {line}");
    }
    assert!(
        line.contains("api_key=[redacted]&page=2") && line.contains("\"X-Custom-Token\": \"[redacted]\""),
        "{line}"
    );
}

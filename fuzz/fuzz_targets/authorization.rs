//! Fuzzes the CustomKeyCheck decision: the Authorization parser (names in any case, values quoted
//! or not), the date, the signing string in both (request-target) forms, control characters, the
//! Digest check, the required headers, the signature decoding and the HMAC or RSA check, with
//! whatever the input holds. Every input must end in an acceptance or a 400/401 refusal, never a
//! panic.
//!
//! Input: Authorization, Date, Host, the request URI, Digest and the body, separated by NUL bytes.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use tyk_grpc_plugin::auth::{self, Algorithm, Keys, Policy};
use tyk_grpc_plugin::proto;

fuzz_target!(|data: &[u8]| {
    static KEYS: OnceLock<(Keys, Keys)> = OnceLock::new();
    let (demo, rsa) = KEYS.get_or_init(|| {
        let public_key = include_str!("../../tests/fixtures/rsa_public.pem").replace('\n', "\\n");
        let file = format!(r#"{{"keys": [{{"keyId": "rsa", "publicKey": "{public_key}", "token": "t"}}]}}"#);
        (Keys::demo(), Keys::parse(&file).expect("the fixture key loads"))
    });
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let mut request = proto::coprocess_mini_request_object::MiniRequestObject::new();
    for name in ["Authorization", "Date", "Host"] {
        if let Some(value) = parts.next() {
            request.headers.insert(name.into(), value.into());
        }
    }
    request.request_uri = parts.next().unwrap_or("/").into();
    if let Some(digest) = parts.next() {
        request.headers.insert("Digest".into(), digest.into());
    }
    request.raw_body = parts.next().unwrap_or_default().as_bytes().to_vec();
    request.method = "GET".into();
    let lenient = Policy { clock_skew: Duration::from_secs(300), algorithms: Algorithm::ALL.to_vec(), required_headers: vec!["date".into()] };
    let strict = Policy {
        clock_skew: Duration::ZERO,
        algorithms: vec![Algorithm::HmacSha256, Algorithm::RsaSha256],
        required_headers: vec!["(request-target)".into(), "host".into(), "digest".into()],
    };
    for (keys, policy) in [(demo, &lenient), (rsa, &strict)] {
        if let Err(refusal) = auth::verify(&request, keys, policy, SystemTime::now()) {
            assert!(refusal.status == 400 || refusal.status == 401, "{refusal:?}");
        }
    }
});

//! Fuzzes the CustomKeyCheck decision: the Authorization parser, the signing string, the signature
//! decoding and the MAC check, with whatever header values the input holds. Every input must end
//! in an acceptance or a 400/401 refusal, never a panic.
//!
//! Input: Authorization, Date, Host and the request URI, separated by NUL bytes.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use tyk_grpc_plugin::{auth, proto};

fuzz_target!(|data: &[u8]| {
    static KEYS: OnceLock<auth::Keys> = OnceLock::new();
    let keys = KEYS.get_or_init(auth::Keys::demo);
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let mut request = proto::coprocess_mini_request_object::MiniRequestObject::new();
    for name in ["Authorization", "Date", "Host"] {
        if let Some(value) = parts.next() {
            request.headers.insert(name.into(), value.into());
        }
    }
    request.request_uri = parts.next().unwrap_or("/").into();
    request.method = "GET".into();
    if let Err(refusal) = auth::verify(&request, keys, SystemTime::now(), Duration::from_secs(300)) {
        assert!(refusal.status == 400 || refusal.status == 401, "{refusal:?}");
    }
});

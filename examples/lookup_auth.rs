//! Custom authentication (hook CustomKeyCheck) against an outside key service: the plugin asks
//! `KEY_SERVICE` (host:port) `GET /keys/<token>` over HTTP for each `Authorization: Bearer <token>`.
//! 200 accepts, with the body as the policy id to apply; 404 refuses with 401.
//!
//! The lookup blocks its worker thread until the service answers. That is safe: hooks run on
//! worker threads (TYK_PLUGIN_WORKERS), so a slow lookup holds up neither other calls nor health
//! checks. Bound every wait (here the timeouts), so a dead service cannot hold workers forever.
//! Run it with `KEY_SERVICE=127.0.0.1:8000 cargo run --release --example lookup_auth`.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use tyk_grpc_plugin::proto::{HookType, Object};
use tyk_grpc_plugin::Call;

const TIMEOUT: Duration = Duration::from_secs(5);

fn dispatch(mut object: Object, call: &mut Call) -> Object {
    if object.hook_type.enum_value() != Ok(HookType::CustomKeyCheck) {
        return object;
    }
    let authorization = object.request.headers.get("Authorization").map_or("", String::as_str);
    let token = authorization.strip_prefix("Bearer ").unwrap_or_default();
    let well_formed = !token.is_empty() && token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    let (status, reason) = match well_formed.then(|| lookup(token)) {
        None => (400, "no bearer token".to_owned()),
        Some(Ok(Some(policy))) => {
            object.session.mut_or_insert_default().apply_policies = vec![policy];
            object.metadata.insert("token".into(), token.to_owned());
            call.log(format_args!("authorised by the key service"));
            return object;
        }
        Some(Ok(None)) => (401, "unknown token".to_owned()),
        Some(Err(error)) => (503, format!("key service: {error}")),
    };
    call.log(format_args!("refused {status}: {reason}"));
    let overrides = object.request.mut_or_insert_default().return_overrides.mut_or_insert_default();
    overrides.response_code = status;
    overrides.response_error = if status == 503 { "Service unavailable" } else { "Not authorised" }.into();
    object
}

/// The token's policy id, None when the service does not know it.
fn lookup(token: &str) -> std::io::Result<Option<String>> {
    let address = std::env::var("KEY_SERVICE").map_err(|_| std::io::Error::other("KEY_SERVICE is not set"))?;
    let service =
        address.to_socket_addrs()?.next().ok_or_else(|| std::io::Error::other("KEY_SERVICE has no address"))?;
    let mut stream = TcpStream::connect_timeout(&service, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(stream, "GET /keys/{token} HTTP/1.0\r\nHost: {address}\r\n\r\n")?;
    let mut answer = String::new();
    stream.take(64 * 1024).read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    match head.split_whitespace().nth(1) {
        Some("200") => Ok(Some(body.trim().to_owned())),
        Some("404") => Ok(None),
        other => Err(std::io::Error::other(format!("answered {other:?}"))),
    }
}

fn main() {
    tyk_grpc_plugin::run(dispatch, |_event| {})
}

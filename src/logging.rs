//! The log: one line per event on standard error, each call's lines labelled with its hook, plugin
//! name, API and W3C trace id, and secrets redacted before anything is printed.

use std::io::Write as _;

use crate::proto::Object;

/// How a line looks: env_logger's text, or one JSON object (TYK_PLUGIN_LOG_FORMAT).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Format {
    Text,
    Json,
}

/// Starts the logger with a `RUST_LOG`-style filter. gRPC core's own lines go through it too.
pub fn init(filter: &str, format: Format) {
    // One line per record, written as it is: no colour codes to strip and no multi-line indenting
    // to scan for, which env_logger's default writer does byte by byte.
    env_logger::Builder::new()
        .parse_filters(filter)
        .format(move |out, record| {
            let mut fields = CallFields::default();
            let _ = record.key_values().visit(&mut fields);
            let timestamp = out.timestamp();
            match format {
                Format::Text => {
                    write!(out, "[{timestamp} {:<5} {}] ", record.level(), record.target())?;
                    match &fields.hook {
                        Some(hook) => {
                            write!(out, "hook={hook} name={:?} api={:?} trace=", fields.name, fields.api)?;
                            match &fields.trace {
                                Some(trace) => write!(out, "{trace}")?,
                                None => out.write_all(b"-")?,
                            }
                            // An object line's message is the empty literal; a note's is not.
                            if record.args().as_str() != Some("") {
                                write!(out, " {}", record.args())?;
                            }
                        }
                        None => write!(out, "{}", record.args())?,
                    }
                    if let Some(object) = &fields.object {
                        write!(out, " {object}")?;
                    }
                }
                Format::Json => {
                    let string = |value: &dyn std::fmt::Display| serde_json::Value::String(value.to_string());
                    write!(out, "{{\"timestamp\": {}, \"level\": {}", string(&timestamp), string(&record.level()))?;
                    write!(out, ", \"target\": {}, \"message\": {}", string(&record.target()), string(record.args()))?;
                    if let Some(hook) = &fields.hook {
                        write!(out, ", \"hook\": {}, \"name\": {}", string(hook), string(&fields.name))?;
                        let trace = fields.trace.as_ref().map_or(serde_json::Value::Null, |trace| string(trace));
                        write!(out, ", \"api\": {}, \"trace\": {trace}", string(&fields.api))?;
                    }
                    // The printer's JSON as it is: a nested value, at no extra cost.
                    if let Some(object) = &fields.object {
                        write!(out, ", \"object\": {object}")?;
                    }
                    out.write_all(b"}")?;
                }
            }
            out.write_all(b"\n")
        })
        .init();
    // redirect_log takes core's verbosity from the log level, and core is worth hearing at
    // error level only.
    let level = log::max_level();
    log::set_max_level(level.min(log::LevelFilter::Warn));
    grpcio::redirect_log();
    log::set_max_level(level);
}

/// The fields of a call's line, passed to `log` as key-values (see `log_object`).
#[derive(Default)]
struct CallFields<'kvs> {
    hook: Option<log::kv::Value<'kvs>>,
    name: &'kvs str,
    api: &'kvs str,
    trace: Option<log::kv::Value<'kvs>>,
    object: Option<log::kv::Value<'kvs>>,
}

impl<'kvs> log::kv::VisitSource<'kvs> for CallFields<'kvs> {
    fn visit_pair(&mut self, key: log::kv::Key<'kvs>, value: log::kv::Value<'kvs>) -> Result<(), log::kv::Error> {
        match key.as_str() {
            "hook" => self.hook = Some(value),
            "name" => self.name = value.to_borrowed_str().unwrap_or_default(),
            "api" => self.api = value.to_borrowed_str().unwrap_or_default(),
            "trace" => self.trace = Some(value),
            "object" => self.object = Some(value),
            _ => {}
        }
        Ok(())
    }
}

/// The line of a call's received object, at INFO: its hook, plugin name, API and trace id as
/// fields, and the object as JSON.
pub fn log_object(object: &Object, trace: Option<&str>) {
    let (hook, name, api, json) = (HookName(object), name(object), api(object), crate::json::Json(object));
    match trace {
        Some(trace) => log::info!(hook:% = hook, name = name, api = api, trace = trace, object:% = json; ""),
        None => log::info!(hook:% = hook, name = name, api = api, object:% = json; ""),
    }
}

/// A further line about a call (a hook's `Call::log`), at INFO, with the same fields.
pub fn log_note(object: &Object, trace: Option<&str>, note: &str) {
    let (hook, name, api) = (HookName(object), name(object), api(object));
    match trace {
        Some(trace) => log::info!(hook:% = hook, name = name, api = api, trace = trace; "{note}"),
        None => log::info!(hook:% = hook, name = name, api = api; "{note}"),
    }
}

fn name(object: &Object) -> &str {
    shorten(&object.hook_name)
}

fn api(object: &Object) -> &str {
    shorten(object.spec.get("APIID").map_or("", String::as_str))
}

/// The hook type by name, or its number when this build does not know it.
struct HookName<'a>(&'a Object);

impl std::fmt::Display for HookName<'_> {
    fn fmt(&self, out: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.0.hook_type.enum_value() {
            Ok(hook) => write!(out, "{hook:?}"),
            Err(number) => write!(out, "{number}"),
        }
    }
}

/// The trace id of a W3C traceparent, `version-traceid-parentid-flags`.
pub fn trace_id(traceparent: &[u8]) -> Option<&str> {
    let id = std::str::from_utf8(traceparent).ok()?.split('-').nth(1)?;
    let valid = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0');
    valid.then_some(id)
}

/// At most 200 characters of a client-supplied string, for a log line.
pub fn shorten(text: &str) -> &str {
    text.char_indices().nth(200).map_or(text, |(end, _)| &text[..end])
}

const REDACTED: &str = "[redacted]";
const SECRET_HEADERS: [&str; 4] = ["authorization", "proxy-authorization", "cookie", "x-api-key"];
/// Query parameters that carry credentials, by name in any case.
const SECRET_PARAMS: [&str; 9] =
    ["api_key", "apikey", "access_token", "token", "key", "password", "secret", "signature", "sig"];

/// What the log lines leave out.
pub struct Redaction {
    /// Credentials: the headers above and `extra_headers`, query parameters named above, and
    /// the session's secrets. Off only with TYK_PLUGIN_LOG_SECRETS=1.
    pub hide_secrets: bool,
    /// More header names (lower case) to redact: TYK_PLUGIN_LOG_REDACT_HEADERS.
    pub extra_headers: Vec<String>,
    /// Request and response bodies: TYK_PLUGIN_LOG_BODIES=0.
    pub leave_out_bodies: bool,
}

/// How much of each body a log line shows: a line holds the whole object, and a body of many
/// megabytes would make a line as big (and the logging thread's buffers with it).
pub const LOGGED_BODY_BYTES: usize = 64 << 10;

/// Replaces what `redaction` names with "[redacted]", or with nothing for bodies; cuts bodies to
/// LOGGED_BODY_BYTES.
pub fn redact(object: &mut Object, redaction: &Redaction) {
    let request = object.request.as_mut().map(|request| (&mut request.body, &mut request.raw_body));
    let response = object.response.as_mut().map(|response| (&mut response.body, &mut response.raw_body));
    for (body, raw_body) in [request, response].into_iter().flatten() {
        if redaction.leave_out_bodies {
            body.clear();
            raw_body.clear();
        } else {
            let end = (0..=LOGGED_BODY_BYTES.min(body.len())).rev().find(|&at| body.is_char_boundary(at)).unwrap_or(0);
            body.truncate(end);
            raw_body.truncate(LOGGED_BODY_BYTES);
        }
    }
    if !redaction.hide_secrets {
        return;
    }
    let hide = |value: &mut String| {
        if !value.is_empty() {
            *value = REDACTED.into();
        }
    };
    if let Some(request) = object.request.as_mut() {
        let secret_header = |name: &str| {
            SECRET_HEADERS.iter().any(|secret| name.eq_ignore_ascii_case(secret))
                || redaction.extra_headers.iter().any(|extra| name.eq_ignore_ascii_case(extra))
        };
        for (name, value) in request.headers.iter_mut() {
            if secret_header(name) {
                hide(value);
            }
        }
        for (name, value) in request.params.iter_mut() {
            if secret_param(name) {
                hide(value);
            }
        }
        redact_query(&mut request.url);
        redact_query(&mut request.request_uri);
    }
    if let Some(session) = object.session.as_mut() {
        hide(&mut session.hmac_secret);
        if let Some(basic_auth) = session.basic_auth_data.as_mut() {
            hide(&mut basic_auth.password);
        }
        if let Some(jwt) = session.jwt_data.as_mut() {
            hide(&mut jwt.secret);
        }
        session.oauth_keys.values_mut().for_each(hide);
    }
}

fn secret_param(name: &str) -> bool {
    let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
    SECRET_PARAMS.iter().any(|secret| name.eq_ignore_ascii_case(secret))
}

/// `/path?api_key=abc&x=1` becomes `/path?api_key=[redacted]&x=1`.
fn redact_query(url: &mut String) {
    let Some((path, query)) = url.split_once('?') else { return };
    let (query, fragment) = query.split_once('#').map_or((query, None), |(query, fragment)| (query, Some(fragment)));
    if !query.split('&').any(|pair| secret_param(pair.split('=').next().unwrap_or_default())) {
        return;
    }
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret_param(name) => format!("{name}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect();
    *url = format!("{path}?{}{}", pairs.join("&"), fragment.map(|f| format!("#{f}")).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::HookType;

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id(format!("00-{id}-00f067aa0ba902b7-01").as_bytes()), Some(id));
        for bad in [
            "".to_owned(),
            "00".into(),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{}-00f067aa0ba902b7-01", &id[1..]),
            format!("00-{}x-00f067aa0ba902b7-01", &id[1..]),
        ] {
            assert_eq!(trace_id(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(trace_id(b"\xff-\xff"), None);
    }

    #[test]
    fn hook_names_and_shortened_strings() {
        let mut object = Object::new();
        object.hook_type = HookType::Pre.into();
        assert_eq!(HookName(&object).to_string(), "Pre");
        object.hook_type = protobuf::EnumOrUnknown::from_i32(42);
        assert_eq!(HookName(&object).to_string(), "42");
        assert_eq!(shorten("é".repeat(300).as_str()).chars().count(), 200);
        assert_eq!(shorten("short"), "short");
    }

    #[test]
    fn redaction_hides_credentials_and_session_secrets_only() {
        let mut object = Object::new();
        let request = object.request.mut_or_insert_default();
        for (name, value) in [("Authorization", "sig"), ("cookie", "c"), ("X-Api-Key", "k"), ("Host", "h")] {
            request.headers.insert(name.into(), value.into());
        }
        request.headers.insert("Proxy-Authorization".into(), String::new());
        let session = object.session.mut_or_insert_default();
        session.hmac_secret = "s".into();
        session.basic_auth_data.mut_or_insert_default().password = "p".into();
        session.jwt_data.mut_or_insert_default().secret = "j".into();
        session.oauth_keys.insert("client".into(), "o".into());
        session.alias = "alias".into();
        redact(&mut object, &Redaction { hide_secrets: true, extra_headers: Vec::new(), leave_out_bodies: false });
        let headers = &object.request.headers;
        assert_eq!((headers["Authorization"].as_str(), headers["cookie"].as_str()), (REDACTED, REDACTED));
        assert_eq!((headers["X-Api-Key"].as_str(), headers["Host"].as_str()), (REDACTED, "h"));
        assert_eq!(headers["Proxy-Authorization"], "", "an empty value stays empty");
        let session = &object.session;
        assert_eq!([&session.hmac_secret, &session.basic_auth_data.password, &session.jwt_data.secret], [REDACTED; 3]);
        assert_eq!((session.oauth_keys["client"].as_str(), session.alias.as_str()), (REDACTED, "alias"));
    }

    #[test]
    fn credentials_in_query_strings_and_named_headers_are_redacted_and_bodies_left_out_on_request() {
        let mut object = Object::new();
        let request = object.request.mut_or_insert_default();
        request.url = "/get?API_KEY=k1&x=1&access_token=t&sig=s&keyboard=q&api%5Fkey=k2#frag".into();
        request.request_uri = "/get?x=1&Token=t2".into();
        for (name, value) in [("api_key", "k1"), ("x", "1"), ("Password", "p")] {
            request.params.insert(name.into(), value.into());
        }
        request.headers.insert("X-Custom-Token".into(), "c".into());
        request.headers.insert("X-Other".into(), "o".into());
        request.body = "body".into();
        request.raw_body = b"body".to_vec();
        object.response.mut_or_insert_default().raw_body = b"answer".to_vec();
        let extra_headers = vec!["x-custom-token".to_owned()];
        let mut logged = object.clone();
        redact(
            &mut logged,
            &Redaction { hide_secrets: true, extra_headers: extra_headers.clone(), leave_out_bodies: false },
        );
        let request = &logged.request;
        assert_eq!(
            request.url,
            "/get?API_KEY=[redacted]&x=1&access_token=[redacted]&sig=[redacted]&keyboard=q&api%5Fkey=[redacted]#frag"
        );
        assert_eq!(request.request_uri, "/get?x=1&Token=[redacted]");
        assert_eq!((request.params["api_key"].as_str(), request.params["x"].as_str()), (REDACTED, "1"));
        assert_eq!(request.params["Password"], REDACTED);
        assert_eq!((request.headers["X-Custom-Token"].as_str(), request.headers["X-Other"].as_str()), (REDACTED, "o"));
        assert_eq!((request.body.as_str(), logged.response.raw_body.as_slice()), ("body", &b"answer"[..]));

        let mut logged = object.clone();
        redact(&mut logged, &Redaction { hide_secrets: false, extra_headers, leave_out_bodies: true });
        assert!(
            logged.request.body.is_empty() && logged.request.raw_body.is_empty() && logged.response.raw_body.is_empty()
        );
        assert_eq!(logged.request.params["api_key"], "k1", "TYK_PLUGIN_LOG_SECRETS=1 keeps the rest");
        let mut big = Object::new();
        big.request.mut_or_insert_default().raw_body = vec![1; LOGGED_BODY_BYTES + 1];
        big.request.mut_or_insert_default().body = format!("a{}", "é".repeat(LOGGED_BODY_BYTES));
        big.response.mut_or_insert_default().body = "b".repeat(LOGGED_BODY_BYTES * 2);
        redact(&mut big, &Redaction { hide_secrets: true, extra_headers: Vec::new(), leave_out_bodies: false });
        assert_eq!(big.request.raw_body.len(), LOGGED_BODY_BYTES);
        assert_eq!(big.request.body.len(), LOGGED_BODY_BYTES - 1, "cut at a character's boundary");
        assert_eq!(big.response.body.len(), LOGGED_BODY_BYTES);
        let mut plain = "/a?b=1".to_owned();
        redact_query(&mut plain);
        assert_eq!(plain, "/a?b=1");
    }
}

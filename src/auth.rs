//! HMAC custom authentication for hook CustomKeyCheck: HTTP signatures (draft-cavage) as Tyk's own
//! HMAC middleware and the demo's hmac.sh make them, checked against the configured keys.
//!
//! Hardened where the demo is not: the MAC is verified in constant time by ring, the signed date
//! must lie within a clock skew (a captured request cannot be replayed later), several keys with
//! their own policies, and every refusal is a 400 or a 401 with a reason for the log, never an
//! error or a panic, whatever the headers hold.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use protobuf::MessageField;
use ring::hmac;

use crate::proto::coprocess_mini_request_object::MiniRequestObject;
use crate::proto::coprocess_session_state::SessionState;
use crate::proto::tyk_grpc_plugin::HmacKeysFile;
use crate::proto::Object;
use crate::Call;

/// The tyk-demo's key (gateway-contract.md): used when no keys file is configured.
pub const DEMO_KEY_ID: &str =
    "eyJvcmciOiI1ZTlkOTU0NGExZGNkNjAwMDFkMGVkMjAiLCJpZCI6ImdycGNfaG1hY19rZXkiLCJoIjoibXVybXVyNjQifQ==";
pub const DEMO_SECRET: &str = "c2VjcmV0";

/// More names than any real client signs; the cap keeps the work per call small.
const MAX_SIGNED_HEADERS: usize = 32;
/// What the client of a 401 is told, whatever the reason (no key enumeration).
const NOT_AUTHORISED: &str = "Not authorised";

pub struct Key {
    pub id: String,
    secret: String,
    policies: Vec<String>,
}

/// The keys the server accepts, by keyId. Deliberately not Debug: it holds secrets.
pub struct Keys(HashMap<String, Key>);

impl Keys {
    pub fn demo() -> Keys {
        Keys::from_file(HmacKeysFile {
            keys: vec![crate::proto::tyk_grpc_plugin::HmacKey {
                key_id: DEMO_KEY_ID.into(),
                secret: DEMO_SECRET.into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .expect("the demo key is valid")
    }

    /// Reads a keys file, `{"keys": [{"keyId": "..", "secret": "..", "policies": [..]}]}`.
    /// The error says what is wrong without quoting any secret.
    pub fn load(path: &Path) -> Result<Keys, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        Keys::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Keys, String> {
        let file: HmacKeysFile = protobuf_json_mapping::parse_from_str(text)
            .map_err(|e| format!("not a keys file ({{\"keys\": [{{\"keyId\", \"secret\", \"policies\"}}]}}): {e}"))?;
        Keys::from_file(file)
    }

    fn from_file(file: HmacKeysFile) -> Result<Keys, String> {
        if file.keys.is_empty() {
            return Err("it holds no keys".into());
        }
        let mut keys = HashMap::with_capacity(file.keys.len());
        for (index, key) in file.keys.into_iter().enumerate() {
            if key.key_id.is_empty() {
                return Err(format!("key number {} has no keyId", index + 1));
            }
            if key.secret.is_empty() {
                return Err(format!("key {:?} has an empty secret", key.key_id));
            }
            if keys.contains_key(&key.key_id) {
                return Err(format!("keyId {:?} appears twice", key.key_id));
            }
            let entry = Key { id: key.key_id.clone(), secret: key.secret, policies: key.policies };
            keys.insert(key.key_id, entry);
        }
        Ok(Keys(keys))
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Why a request was refused: `status` 400 (malformed) or 401 (not authorised); `reason` is for
/// the log only and never holds a secret.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    pub status: i32,
    pub reason: &'static str,
}

fn bad_request(reason: &'static str) -> Refusal {
    Refusal { status: 400, reason }
}

fn unauthorised(reason: &'static str) -> Refusal {
    Refusal { status: 401, reason }
}

/// The HMAC keys (from the keys file, or the demo key) and the replay window. SIGHUP reloads.
pub struct Hmac {
    keys: RwLock<Arc<Keys>>,
    keys_file: Option<String>,
    clock_skew: Duration,
}

impl Hmac {
    /// Reads the keys file; an error names the setting and the problem, never a secret.
    pub fn new(keys_file: Option<String>, clock_skew: Duration) -> Result<Hmac, String> {
        let keys = match &keys_file {
            Some(path) => Keys::load(path.as_ref()).map_err(|e| format!("TYK_PLUGIN_HMAC_KEYS_FILE={path}: {e}"))?,
            None => Keys::demo(),
        };
        Ok(Hmac { keys: RwLock::new(Arc::new(keys)), keys_file, clock_skew })
    }

    pub fn key_count(&self) -> usize {
        self.keys().len()
    }

    fn keys(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// SIGHUP: a good file replaces the keys in one step (a call uses the old set or the new,
    /// never a mix); a bad one leaves them as they were.
    pub fn reload(&self) {
        let Some(path) = &self.keys_file else {
            return log::warn!("SIGHUP: no TYK_PLUGIN_HMAC_KEYS_FILE to reload; keeping the demo key");
        };
        match Keys::load(path.as_ref()) {
            Ok(keys) => {
                log::info!("SIGHUP: reloaded {path}: {} HMAC key(s)", keys.len());
                *self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
            }
            Err(error) => log::warn!("SIGHUP: keeping the current keys: {path}: {error}"),
        }
    }
}

/// Decides a CustomKeyCheck call and writes the decision into the reply as the gateway reads it:
/// on success a session and metadata["token"]; on refusal a response code and error, and neither.
/// The decision goes to the call's log.
pub fn authenticate(object: &mut Object, call: &mut Call) {
    let keys = call.hmac.keys();
    match decide(object, &keys, call.hmac.clock_skew) {
        Ok(key) => call.log(format_args!("authorised keyId={:?}", crate::logging::shorten(&key.id))),
        Err(refusal) => call.log(format_args!("refused {}: {}", refusal.status, refusal.reason)),
    }
}

fn decide<'k>(object: &mut Object, keys: &'k Keys, clock_skew: Duration) -> Result<&'k Key, Refusal> {
    let decision = verify(&object.request, keys, SystemTime::now(), clock_skew);
    match &decision {
        Ok(key) => {
            object.session = MessageField::some(SessionState {
                hmac_enabled: true,
                hmac_secret: key.secret.clone(),
                apply_policies: key.policies.clone(),
                ..Default::default()
            });
            object.metadata.insert("token".into(), key.id.clone());
        }
        Err(refusal) => {
            object.session.clear();
            object.metadata.remove("token");
            let overrides = object.request.mut_or_insert_default().return_overrides.mut_or_insert_default();
            overrides.response_code = refusal.status;
            if refusal.status == 401 {
                overrides.response_error = NOT_AUTHORISED.into();
                overrides.headers.insert("WWW-Authenticate".into(), "Signature headers=\"date\"".into());
            } else {
                overrides.response_error = format!("Bad request: {}", refusal.reason);
            }
        }
    }
    decision
}

/// Checks the request's signature at time `now`; `clock_skew` zero turns the date window off.
pub fn verify<'k>(
    request: &MiniRequestObject,
    keys: &'k Keys,
    now: SystemTime,
    clock_skew: Duration,
) -> Result<&'k Key, Refusal> {
    let authorization = header(request, "authorization").ok_or(bad_request("no Authorization header"))?;
    let params = parse_authorization(authorization)?;
    let algorithm = algorithm(params.algorithm).ok_or(bad_request("unsupported algorithm"))?;
    let date = header(request, "x-aux-date")
        .or_else(|| header(request, "date"))
        .ok_or(bad_request("no Date or X-Aux-Date header"))?;
    let signed_at = httpdate::parse_http_date(date.trim()).map_err(|_| bad_request("the date is not an HTTP date"))?;
    let signing_string = signing_string(request, params.headers.unwrap_or("date"))?;
    let signature = decode_signature(params.signature).ok_or(unauthorised("the signature is not base64"))?;

    // An unknown keyId costs the same MAC as a known one, so timing does not tell them apart.
    let key = keys.0.get(params.key_id);
    let secret = key.map_or("unknown key: a secret no request can match", |key| &key.secret);
    let mac_matches =
        hmac::verify(&hmac::Key::new(algorithm, secret.as_bytes()), signing_string.as_bytes(), &signature).is_ok();
    let key = key.ok_or(unauthorised("unknown keyId"))?;
    if !mac_matches {
        return Err(unauthorised("the signature does not match"));
    }
    if !clock_skew.is_zero() {
        let skew = match now.duration_since(signed_at) {
            Ok(age) => age,
            Err(early) => early.duration(),
        };
        if skew > clock_skew {
            return Err(unauthorised("the date is outside the allowed clock skew"));
        }
    }
    Ok(key)
}

/// The parameters of `Signature keyId="..",algorithm="..",signature="..",headers=".."`.
#[derive(Debug, PartialEq)]
struct SignatureParams<'a> {
    key_id: &'a str,
    algorithm: &'a str,
    signature: &'a str,
    headers: Option<&'a str>,
}

fn parse_authorization(value: &str) -> Result<SignatureParams<'_>, Refusal> {
    let malformed = || bad_request("the Authorization header is not a Signature");
    let mut rest = value.trim();
    if let Some(scheme) = rest.get(..9) {
        if scheme.eq_ignore_ascii_case("signature") && rest[9..].starts_with([' ', '\t']) {
            rest = rest[9..].trim_start();
        }
    }
    let (mut key_id, mut algorithm, mut signature, mut headers) = (None, None, None, None);
    loop {
        let (name, after_name) = rest.split_once('=').ok_or_else(malformed)?;
        let quoted = after_name.trim_start().strip_prefix('"').ok_or_else(malformed)?;
        let (value, after_value) = quoted.split_once('"').ok_or_else(malformed)?;
        let slot = match name.trim() {
            "keyId" => &mut key_id,
            "algorithm" => &mut algorithm,
            "signature" => &mut signature,
            "headers" => &mut headers,
            _ => return Err(bad_request("unknown parameter in the Authorization header")),
        };
        if slot.replace(value).is_some() {
            return Err(bad_request("a parameter appears twice in the Authorization header"));
        }
        rest = after_value.trim_start();
        if rest.is_empty() {
            break;
        }
        rest = rest.strip_prefix(',').ok_or_else(malformed)?.trim_start();
    }
    let missing = || bad_request("keyId, algorithm or signature missing from the Authorization header");
    Ok(SignatureParams {
        key_id: key_id.ok_or_else(missing)?,
        algorithm: algorithm.ok_or_else(missing)?,
        signature: signature.ok_or_else(missing)?,
        headers,
    })
}

fn algorithm(name: &str) -> Option<hmac::Algorithm> {
    match name.to_ascii_lowercase().as_str() {
        "hmac-sha1" => Some(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
        "hmac-sha256" => Some(hmac::HMAC_SHA256),
        "hmac-sha384" => Some(hmac::HMAC_SHA384),
        "hmac-sha512" => Some(hmac::HMAC_SHA512),
        _ => None,
    }
}

/// One `name: value` line per signed header, joined by `\n`. Names are lower-cased; `date` stands
/// for X-Aux-Date when the request has it; `(request-target)` is the method and the raw URI.
fn signing_string(request: &MiniRequestObject, names: &str) -> Result<String, Refusal> {
    let aux_date = header(request, "x-aux-date");
    let mut seen: Vec<String> = Vec::new();
    let mut lines: Vec<String> = Vec::new();
    for name in names.split_ascii_whitespace() {
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return Err(bad_request("a header is listed twice in headers"));
        }
        if seen.len() == MAX_SIGNED_HEADERS {
            return Err(bad_request("too many names in headers"));
        }
        let line = match (name.as_str(), aux_date) {
            ("(request-target)", _) => {
                format!("(request-target): {} {}", request.method.to_ascii_lowercase(), request.request_uri)
            }
            ("date", Some(aux_date)) => format!("x-aux-date: {}", aux_date.trim()),
            _ => {
                let value = header(request, &name).ok_or(bad_request("a header named in headers is missing"))?;
                format!("{name}: {}", value.trim())
            }
        };
        lines.push(line);
        seen.push(name);
    }
    if !seen.iter().any(|name| name == "date" || name == "x-aux-date") {
        return Err(bad_request("the signature must cover the date"));
    }
    Ok(lines.join("\n"))
}

/// The MAC from the signature parameter: base64, usually percent-encoded (either case of escape).
fn decode_signature(signature: &str) -> Option<Vec<u8>> {
    let unescaped: Vec<u8> = percent_encoding::percent_decode_str(signature).collect();
    base64::engine::general_purpose::STANDARD.decode(unescaped).ok()
}

/// A request header by name, ignoring case (the gateway sends canonical names; clients vary).
fn header<'r>(request: &'r MiniRequestObject, name: &str) -> Option<&'r str> {
    request.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    fn at_date() -> SystemTime {
        httpdate::parse_http_date(DATE).unwrap()
    }

    fn sign(algorithm: hmac::Algorithm, secret: &str, signing_string: &str) -> String {
        let tag = hmac::sign(&hmac::Key::new(algorithm, secret.as_bytes()), signing_string.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    }

    fn request(headers: &[(&str, &str)]) -> MiniRequestObject {
        let mut request = MiniRequestObject::new();
        for (name, value) in headers {
            request.headers.insert(name.to_string(), value.to_string());
        }
        request.method = "GET".into();
        request.request_uri = "/grpc-custom-auth/get?a=1".into();
        request
    }

    fn signed_request(algorithm: &str, ring_algorithm: hmac::Algorithm) -> MiniRequestObject {
        let signature = sign(ring_algorithm, DEMO_SECRET, &format!("date: {DATE}"));
        let authorization =
            format!("Signature keyId=\"{DEMO_KEY_ID}\",algorithm=\"{algorithm}\",signature=\"{signature}\"");
        request(&[("Date", DATE), ("Authorization", &authorization)])
    }

    #[test]
    fn parses_the_demo_header_with_and_without_the_scheme() {
        let expected = SignatureParams { key_id: "k", algorithm: "hmac-sha512", signature: "c2ln%3D", headers: None };
        assert_eq!(
            parse_authorization(r#"Signature keyId="k",algorithm="hmac-sha512",signature="c2ln%3D""#),
            Ok(expected)
        );
        let spaced =
            parse_authorization(r#"  keyId = "k" ,  algorithm="hmac-sha512",	signature="s" , headers="date"  "#)
                .unwrap();
        assert_eq!((spaced.key_id, spaced.headers), ("k", Some("date")));
        assert_eq!(parse_authorization(r#"signature="s",keyId="k",algorithm="a""#).unwrap().signature, "s");
    }

    #[test]
    fn refuses_malformed_headers_with_400() {
        for header in [
            "",
            "Signature",
            "Bearer abc",
            r#"keyId=k,algorithm="a",signature="s""#,
            r#"keyId="k,algorithm="a",signature="s""#,
            r#"keyId="k" algorithm="a",signature="s""#,
            r#"keyId="k",algorithm="a",signature="s","#,
            r#"keyId="k",algorithm="a""#,
            r#"keyId="k",keyId="k",algorithm="a",signature="s""#,
            r#"keyId="k",algorithm="a",signature="s",realm="x""#,
            "keyId=\"\u{00e9}\u{1F600}\",algorithm=\"\u{0}\",signature=\"\u{0}",
        ] {
            assert_eq!(parse_authorization(header).map_err(|r| r.status), Err(400), "{header:?}");
        }
    }

    #[test]
    fn builds_the_signing_string_from_the_headers_list() {
        let request = request(&[("Date", DATE), ("Host", " example.com "), ("Digest", "SHA-256=abc")]);
        assert_eq!(signing_string(&request, "date").unwrap(), format!("date: {DATE}"));
        assert_eq!(
            signing_string(&request, "(request-target) Host date digest").unwrap(),
            format!(
                "(request-target): get /grpc-custom-auth/get?a=1\nhost: example.com\ndate: {DATE}\ndigest: SHA-256=abc"
            )
        );
    }

    #[test]
    fn x_aux_date_stands_in_for_date() {
        let request = request(&[("Date", "ignored"), ("X-Aux-Date", DATE)]);
        assert_eq!(signing_string(&request, "date").unwrap(), format!("x-aux-date: {DATE}"));
        assert_eq!(signing_string(&request, "x-aux-date").unwrap(), format!("x-aux-date: {DATE}"));
    }

    #[test]
    fn refuses_bad_headers_lists() {
        let request = request(&[("Date", DATE), ("Host", "h")]);
        let status = |names: &str| signing_string(&request, names).map_err(|r| r.status);
        assert_eq!(status("date date"), Err(400));
        assert_eq!(status("date missing-header"), Err(400));
        assert_eq!(status("host"), Err(400), "the date must be signed");
        assert_eq!(status(""), Err(400));
        assert_eq!(status(&"date host ".repeat(1000)), Err(400));
        assert_eq!(
            status(&format!("date {}", (0..40).map(|i| format!("h{i}")).collect::<Vec<_>>().join(" "))),
            Err(400)
        );
    }

    #[test]
    fn accepts_every_algorithm() {
        let keys = Keys::demo();
        for (name, algorithm) in [
            ("hmac-sha1", hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
            ("hmac-sha256", hmac::HMAC_SHA256),
            ("hmac-sha384", hmac::HMAC_SHA384),
            ("hmac-sha512", hmac::HMAC_SHA512),
        ] {
            let key = verify(&signed_request(name, algorithm), &keys, at_date(), Duration::from_secs(300));
            assert_eq!(key.map(|k| k.id.as_str()).map_err(|r| r.reason), Ok(DEMO_KEY_ID), "{name}");
        }
    }

    #[test]
    fn decodes_percent_encoded_signatures_in_either_case() {
        let plain = "ab+/cQ==";
        assert_eq!(decode_signature("ab%2B%2FcQ%3D%3D"), decode_signature(plain));
        assert_eq!(decode_signature("ab%2b%2fcQ%3d%3d"), decode_signature(plain));
        assert!(decode_signature(plain).is_some());
        assert_eq!(decode_signature("not base64!"), None);
        assert_eq!(decode_signature("%zz"), None);
    }

    #[test]
    fn refusals_have_the_right_status() {
        let keys = Keys::demo();
        let skew = Duration::from_secs(300);
        let good = signed_request("hmac-sha256", hmac::HMAC_SHA256);
        let with = |name: &str, value: &str| {
            let mut request = good.clone();
            request.headers.insert(name.into(), value.into());
            request
        };
        let status = |request: &MiniRequestObject, now: SystemTime| {
            verify(request, &keys, now, skew).map(|_| ()).map_err(|r| r.status)
        };
        let authorization = good.headers["Authorization"].clone();

        assert_eq!(status(&good, at_date()), Ok(()));
        assert_eq!(status(&request(&[("Date", DATE)]), at_date()), Err(400));
        assert_eq!(status(&request(&[("Authorization", &authorization)]), at_date()), Err(400));
        assert_eq!(status(&with("Date", "yesterday"), at_date()), Err(400));
        assert_eq!(
            status(&with("Authorization", &authorization.replace("hmac-sha256", "hmac-md5")), at_date()),
            Err(400)
        );
        assert_eq!(status(&with("Authorization", &authorization.replace(DEMO_KEY_ID, "other")), at_date()), Err(401));
        assert_eq!(
            status(&with("Authorization", &authorization.replace("signature=\"", "signature=\"AAAA")), at_date()),
            Err(401)
        );
        assert_eq!(
            status(&with("Authorization", &authorization.replace("signature=\"", "signature=\"!")), at_date()),
            Err(401)
        );
        assert_eq!(status(&with("Date", "Sun, 06 Nov 1994 08:49:38 GMT"), at_date()), Err(401), "the date is signed");
        assert_eq!(status(&good, at_date() + Duration::from_secs(301)), Err(401), "stale");
        assert_eq!(status(&good, at_date() - Duration::from_secs(301)), Err(401), "from the future");
        assert_eq!(status(&good, at_date() + Duration::from_secs(299)), Ok(()));
        assert_eq!(verify(&good, &keys, at_date() + Duration::from_secs(99_999), Duration::ZERO).map(|_| ()), Ok(()));
    }

    #[test]
    fn the_decision_is_written_into_the_reply() {
        let keys = Keys::parse(r#"{"keys": [{"keyId": "k1", "secret": "s1", "policies": ["p1", "p2"]}]}"#).unwrap();
        let mut object = Object::new();
        let signature = sign(hmac::HMAC_SHA256, "s1", &format!("date: {}", httpdate::fmt_http_date(SystemTime::now())));
        object
            .request
            .mut_or_insert_default()
            .headers
            .insert("Date".into(), httpdate::fmt_http_date(SystemTime::now()));
        object.request.mut_or_insert_default().headers.insert(
            "Authorization".into(),
            format!("keyId=\"k1\",algorithm=\"hmac-sha256\",signature=\"{signature}\""),
        );
        assert!(decide(&mut object, &keys, Duration::from_secs(300)).is_ok());
        assert_eq!(object.metadata["token"], "k1");
        assert!(object.session.hmac_enabled);
        assert_eq!(object.session.hmac_secret, "s1");
        assert_eq!(object.session.apply_policies, ["p1", "p2"]);

        object.request.mut_or_insert_default().headers.insert("Date".into(), "Sun, 06 Nov 1994 08:49:37 GMT".into());
        assert_eq!(decide(&mut object, &keys, Duration::from_secs(300)).map(|_| ()).map_err(|r| r.status), Err(401));
        assert!(object.session.is_none() && !object.metadata.contains_key("token"));
        assert_eq!(object.request.return_overrides.response_code, 401);
        assert_eq!(object.request.return_overrides.headers["WWW-Authenticate"], "Signature headers=\"date\"");
    }

    #[test]
    fn keys_files_are_checked() {
        let error = |text: &str| Keys::parse(text).err().unwrap_or_default();
        assert!(error("{").starts_with("not a keys file"));
        assert!(error(r#"{"keys": [{"keyId": "k", "secret": "s", "extra": 1}]}"#).starts_with("not a keys file"));
        assert_eq!(error(r#"{"keys": []}"#), "it holds no keys");
        assert_eq!(error(r#"{"keys": [{"secret": "s"}]}"#), "key number 1 has no keyId");
        assert_eq!(error(r#"{"keys": [{"keyId": "k", "secret": ""}]}"#), "key \"k\" has an empty secret");
        assert_eq!(
            error(r#"{"keys": [{"keyId": "k", "secret": "a"}, {"keyId": "k", "secret": "b"}]}"#),
            "keyId \"k\" appears twice"
        );
        let keys =
            Keys::parse(r#"{"keys": [{"keyId": "a=", "secret": "x"}, {"key_id": "b", "secret": "y"}]}"#).unwrap();
        assert_eq!(keys.len(), 2);
    }
}

//! Custom authentication for hook CustomKeyCheck: HTTP signatures (draft-cavage) as Tyk's own HMAC
//! middleware and its clients make them (gateway/mw_http_signature_validation.go), checked against
//! the keys of a keys file.
//!
//! Hardened where the demo is not:
//! - MACs and RSA signatures are verified by ring, MACs in constant time, and an unknown keyId
//!   costs the same work as a known one;
//! - the signed date must lie within a clock skew, signed headers named in
//!   TYK_PLUGIN_HMAC_REQUIRED_HEADERS must be signed, a signed `Digest` must match the body, and
//!   a signed value with a control character is refused;
//! - the accepted reply carries no secret, and its session token is not the keyId (which every
//!   client sends in clear): the gateway stores the session under that token, so a known token
//!   would be a key to the gateway's other APIs;
//! - every refusal is a 400 or a 401 with a reason for the log, never an error or a panic.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use protobuf::MessageField;
use ring::{digest, hmac, signature};
use serde::Deserialize;

use crate::proto::coprocess_mini_request_object::MiniRequestObject;
use crate::proto::coprocess_session_state::{AccessDefinition, SessionState};
use crate::proto::Object;
use crate::Call;

/// The tyk-demo's key (gateway-contract.md): used when no keys file is configured. Its keyId is
/// also its session token, as the demo's gateway already knows that key.
pub const DEMO_KEY_ID: &str =
    "eyJvcmciOiI1ZTlkOTU0NGExZGNkNjAwMDFkMGVkMjAiLCJpZCI6ImdycGNfaG1hY19rZXkiLCJoIjoibXVybXVyNjQifQ==";
pub const DEMO_SECRET: &str = "c2VjcmV0";

/// More names than any real client signs; the cap keeps the work per call small.
const MAX_SIGNED_HEADERS: usize = 32;
/// What the client of a 401 is told, whatever the reason (no key enumeration).
const NOT_AUTHORISED: &str = "Not authorised";
/// What a derived session token is an HMAC of, beside the keyId.
const TOKEN_LABEL: &str = "tyk-grpc-plugin session token\n";

/// The signature algorithms, as named in the `algorithm` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    HmacSha1,
    HmacSha256,
    HmacSha384,
    HmacSha512,
    RsaSha256,
}

impl Algorithm {
    pub const ALL: [Algorithm; 5] = [
        Algorithm::HmacSha1,
        Algorithm::HmacSha256,
        Algorithm::HmacSha384,
        Algorithm::HmacSha512,
        Algorithm::RsaSha256,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HmacSha1 => "hmac-sha1",
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::HmacSha384 => "hmac-sha384",
            Algorithm::HmacSha512 => "hmac-sha512",
            Algorithm::RsaSha256 => "rsa-sha256",
        }
    }

    /// By name, in any case.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|algorithm| algorithm.name().eq_ignore_ascii_case(name))
    }

    fn hmac(self) -> Option<hmac::Algorithm> {
        match self {
            Algorithm::HmacSha1 => Some(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
            Algorithm::HmacSha256 => Some(hmac::HMAC_SHA256),
            Algorithm::HmacSha384 => Some(hmac::HMAC_SHA384),
            Algorithm::HmacSha512 => Some(hmac::HMAC_SHA512),
            Algorithm::RsaSha256 => None,
        }
    }
}

/// What a request must satisfy beside a good signature (the HMAC settings).
pub struct Policy {
    /// How far the signed date may be from now; zero turns the check off.
    pub clock_skew: Duration,
    /// The algorithms accepted.
    pub algorithms: Vec<Algorithm>,
    /// Lower-case names the signature must cover (`date` is also covered by `x-aux-date`).
    pub required_headers: Vec<String>,
}

/// How a key proves requests: a shared secret (HMAC) or an RSA public key.
enum Verifier {
    Secret(String),
    /// The key in ring's form: an ASN.1 RSAPublicKey, in DER.
    RsaPublicKey(Vec<u8>),
}

pub struct Key {
    pub id: String,
    verifier: Verifier,
    policies: Vec<String>,
    /// The session's key id in the gateway.
    token: String,
}

/// The keys the server accepts, by keyId. Deliberately not Debug: it holds secrets.
pub struct Keys(HashMap<String, Key>);

/// The keys file: `{"keys": [{"keyId", "secret" or "publicKey", "policies", "token"}]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KeyEntry {
    key_id: String,
    secret: Option<String>,
    public_key: Option<String>,
    #[serde(default)]
    policies: Vec<String>,
    token: Option<String>,
}

impl Keys {
    pub fn demo() -> Keys {
        let key = Key {
            id: DEMO_KEY_ID.into(),
            verifier: Verifier::Secret(DEMO_SECRET.into()),
            policies: Vec::new(),
            token: DEMO_KEY_ID.into(),
        };
        Keys(HashMap::from([(key.id.clone(), key)]))
    }

    /// Reads a keys file. The error says where and what is wrong, never quoting the file.
    pub fn load(path: &Path) -> Result<Keys, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        Keys::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Keys, String> {
        let file: KeysFile = serde_json::from_str(text).map_err(|error| describe(&error))?;
        if file.keys.is_empty() {
            return Err("it holds no keys".into());
        }
        let mut keys = HashMap::with_capacity(file.keys.len());
        for (index, entry) in file.keys.into_iter().enumerate() {
            let number = index + 1;
            if entry.key_id.is_empty() {
                return Err(format!("key number {number} has no keyId"));
            }
            let verifier = match (entry.secret, entry.public_key) {
                (Some(secret), None) if !secret.is_empty() => Verifier::Secret(secret),
                (None, Some(pem)) => Verifier::RsaPublicKey(
                    rsa_public_key(&pem)
                        .ok_or(format!("key number {number}: publicKey is not a PEM RSA public key"))?,
                ),
                (Some(_), Some(_)) => return Err(format!("key number {number} has both a secret and a publicKey")),
                _ => return Err(format!("key number {number} has no secret (or an empty one) and no publicKey")),
            };
            let token = match (entry.token, &verifier) {
                (Some(token), _) if !token.is_empty() => token,
                (Some(_), _) => return Err(format!("key number {number} has an empty token")),
                (None, Verifier::Secret(secret)) => derived_token(&entry.key_id, secret),
                (None, Verifier::RsaPublicKey(_)) => {
                    return Err(format!("key number {number} has a publicKey but no token: give it a long random one"))
                }
            };
            let key = Key { id: entry.key_id, verifier, policies: entry.policies, token };
            if keys.contains_key(&key.id) {
                return Err(format!("key number {number}: its keyId appears twice"));
            }
            keys.insert(key.id.clone(), key);
        }
        Ok(Keys(keys))
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// A serde_json error as `line L, column C: what`, in words of our own: serde's messages quote
/// the offending field names and values, which may be secrets.
fn describe(error: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let message = error.to_string();
    let what = match error.classify() {
        Category::Io => "cannot be read",
        Category::Eof => "it ends too early",
        Category::Syntax if message.starts_with("trailing characters") => "there is more after the end",
        Category::Syntax => "this is not JSON",
        Category::Data if message.starts_with("unknown field") => {
            "an unknown field (a key takes keyId, secret or publicKey, policies, token)"
        }
        Category::Data if message.starts_with("duplicate field") => "a field appears twice",
        Category::Data if message.starts_with("missing field") => "a field is missing (keys, keyId)",
        Category::Data => "a value of the wrong type",
    };
    format!("not a keys file: line {}, column {}: {what}", error.line(), error.column())
}

/// The session token for a key without one of its own: an HMAC of its keyId under its secret.
/// Only the plugin and the key's holder can compute it, every replica computes the same, and it
/// changes when the secret does.
fn derived_token(key_id: &str, secret: &str) -> String {
    let tag =
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()), format!("{TOKEN_LABEL}{key_id}").as_bytes());
    tag.as_ref().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The RSAPublicKey inside a PEM SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`), as Tyk
/// stores public keys: SEQUENCE { SEQUENCE { rsaEncryption, NULL }, BIT STRING { RSAPublicKey } }.
fn rsa_public_key(pem: &str) -> Option<Vec<u8>> {
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let body = pem.trim().strip_prefix("-----BEGIN PUBLIC KEY-----")?.strip_suffix("-----END PUBLIC KEY-----")?;
    let base64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(base64).ok()?;
    let (info, rest) = der_element(&der, 0x30)?;
    let (algorithm, info) = der_element(info, 0x30)?;
    let (oid, _parameters) = der_element(algorithm, 0x06)?;
    let (bits, after) = der_element(info, 0x03)?;
    let key = bits.strip_prefix(&[0])?; // no unused bits
    let valid = rest.is_empty() && after.is_empty() && oid == RSA_ENCRYPTION;
    // ring checks the key itself (modulus size, exponent) when it verifies.
    valid.then(|| key.to_vec())
}

/// One DER element with this tag at the start of `input`: its contents and what follows.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let length = match first {
        0..=0x7f => usize::from(first),
        0x81..=0x84 => {
            let (bytes, rest) = input.split_at_checked(usize::from(first & 0x7f))?;
            input = rest;
            bytes.iter().fold(0usize, |length, &byte| length << 8 | usize::from(byte))
        }
        _ => return None,
    };
    (found == tag).then_some(())?;
    input.split_at_checked(length)
}

/// The keys and the policy, shared by every call; SIGHUP reloads the keys.
pub struct Hmac {
    keys: RwLock<Arc<Keys>>,
    keys_file: Option<String>,
    policy: Policy,
}

impl Hmac {
    /// Reads the keys file; an error names the setting and the problem, never a secret.
    pub fn new(keys_file: Option<String>, policy: Policy) -> Result<Hmac, String> {
        let keys = match &keys_file {
            Some(path) => load_checked(path).map_err(|e| format!("TYK_PLUGIN_HMAC_KEYS_FILE={path}: {e}"))?,
            None => Keys::demo(),
        };
        crate::metrics::metrics().keys_loaded(keys.len());
        Ok(Hmac { keys: RwLock::new(Arc::new(keys)), keys_file, policy })
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
        match load_checked(path) {
            Ok(keys) => {
                log::info!("SIGHUP: reloaded {path}: {} key(s)", keys.len());
                crate::metrics::metrics().keys_loaded(keys.len());
                crate::metrics::metrics().key_reload(true);
                *self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(keys);
            }
            Err(error) => {
                log::warn!("SIGHUP: keeping the current keys: {path}: {error}");
                crate::metrics::metrics().key_reload(false);
            }
        }
    }
}

/// Loads a keys file, warning when every user of the machine may read it.
fn load_checked(path: &str) -> Result<Keys, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let keys = Keys::load(path.as_ref())?;
    if std::fs::metadata(path).is_ok_and(|metadata| metadata.permissions().mode() & 0o004 != 0) {
        log::warn!("{path} can be read by every user of this machine: it holds secrets; chmod o-r it");
    }
    Ok(keys)
}

/// Decides a CustomKeyCheck call and writes the decision into the reply as the gateway reads it:
/// accepted, a session and metadata["token"]; refused, a response code and error, and neither.
/// The decision goes to the call's log.
pub fn authenticate(object: &mut Object, call: &mut Call) {
    let keys = call.hmac.keys();
    match decide(object, &keys, &call.hmac.policy, SystemTime::now()) {
        Ok(accepted) => {
            crate::metrics::metrics().decision(0, "none");
            call.log(format_args!(
                "authorised keyId={:?}{}",
                crate::logging::shorten(&accepted.key.id),
                if accepted.path_only_target { " ((request-target) in Tyk's form: path without query)" } else { "" }
            ))
        }
        Err(refusal) => {
            crate::metrics::metrics().decision(refusal.status, refusal.class);
            call.log(format_args!("refused {}: {}", refusal.status, refusal.reason))
        }
    }
}

fn decide<'k>(object: &mut Object, keys: &'k Keys, policy: &Policy, now: SystemTime) -> Result<Accepted<'k>, Refusal> {
    let api_id = object.spec.get("APIID").cloned().unwrap_or_default();
    let decision = match api_id.is_empty() {
        true => Err(bad_request("the call names no API (spec.APIID)")),
        false => verify(&object.request, keys, policy, now),
    };
    match &decision {
        Ok(Accepted { key, .. }) => {
            // What the gateway needs of a custom-auth key, and nothing from the keys file beyond
            // the key's identity: its policies, and access to the calling API alone. Without
            // access rights the gateway would let the session through every API.
            let access =
                AccessDefinition { api_id: api_id.clone(), versions: vec!["Default".into()], ..Default::default() };
            object.session = MessageField::some(SessionState {
                apply_policies: key.policies.clone(),
                access_rights: HashMap::from([(api_id, access)]),
                ..Default::default()
            });
            object.metadata.insert("token".into(), key.token.clone());
        }
        Err(refusal) => {
            object.session.clear();
            object.metadata.remove("token");
            let overrides = object.request.mut_or_insert_default().return_overrides.mut_or_insert_default();
            overrides.response_code = refusal.status;
            if refusal.status == 401 {
                overrides.response_error = NOT_AUTHORISED.into();
                let covered = policy.required_headers.join(" ");
                overrides.headers.insert("WWW-Authenticate".into(), format!("Signature headers=\"{covered}\""));
            } else {
                overrides.response_error = format!("Bad request: {}", refusal.reason);
            }
        }
    }
    decision
}

/// Why a request was refused: `status` 400 (malformed) or 401 (not authorised); `reason` is for
/// the log only and never holds a secret; `class` is one of a few words, for the metrics.
#[derive(Debug, PartialEq)]
pub struct Refusal {
    pub status: i32,
    pub reason: &'static str,
    pub class: &'static str,
}

fn bad_request(reason: &'static str) -> Refusal {
    Refusal { status: 400, reason, class: "malformed" }
}

fn unauthorised(class: &'static str, reason: &'static str) -> Refusal {
    Refusal { status: 401, reason, class }
}

/// An accepted request: its key, and whether `(request-target)` matched only in Tyk's form
/// (the path alone, leaving the query unsigned).
#[derive(Debug)]
pub struct Accepted<'k> {
    pub key: &'k Key,
    pub path_only_target: bool,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, out: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(out, "Key {{ id: {:?} }}", self.id) // never the secret
    }
}

/// Checks the request's signature at time `now` against the keys and the policy.
pub fn verify<'k>(
    request: &MiniRequestObject,
    keys: &'k Keys,
    policy: &Policy,
    now: SystemTime,
) -> Result<Accepted<'k>, Refusal> {
    let authorization = header(request, "authorization").ok_or(bad_request("no Authorization header"))?;
    let params = parse_authorization(authorization)?;
    let algorithm = Algorithm::from_name(params.algorithm)
        .ok_or(Refusal { class: "algorithm", ..bad_request("unsupported algorithm") })?;
    if !policy.algorithms.contains(&algorithm) {
        return Err(Refusal {
            class: "algorithm",
            ..bad_request("algorithm not allowed here (TYK_PLUGIN_HMAC_ALGORITHMS)")
        });
    }
    let date = header(request, "x-aux-date")
        .or_else(|| header(request, "date"))
        .ok_or(bad_request("no Date or X-Aux-Date header"))?;
    let signed_at = http_date(date).ok_or(bad_request("the date is not an HTTP date"))?;
    let names = signed_names(params.headers.unwrap_or("date"))?;
    for required in &policy.required_headers {
        let covered = names.iter().any(|name| name == required || (required == "date" && name == "x-aux-date"));
        if !covered {
            return Err(unauthorised(
                "required_headers",
                "the signature does not cover a required header (TYK_PLUGIN_HMAC_REQUIRED_HEADERS)",
            ));
        }
    }
    if names.iter().any(|name| name == "digest") {
        check_digest(request)?;
    }
    let signature =
        decode_signature(params.signature).ok_or(unauthorised("signature", "the signature is not base64"))?;

    // Both (request-target) forms are tried only when they differ: the draft's (path and query)
    // first, then Tyk's (the path alone).
    let draft = signing_string(request, &names, TargetForm::PathAndQuery)?;
    let tyk = match names.iter().any(|name| name == "(request-target)") && request.request_uri.contains('?') {
        true => Some(signing_string(request, &names, TargetForm::PathOnly)?),
        false => None,
    };
    let key = keys.0.get(params.key_id);
    let matches = |signing_string: &str| proves(key.map(|key| &key.verifier), algorithm, signing_string, &signature);
    // An unknown key is told only after the same work as a known one.
    let draft_matches = matches(&draft);
    let path_only_target = !draft_matches && tyk.as_deref().is_some_and(matches);
    let key = key.ok_or(unauthorised("unknown_key", "unknown keyId"))?;
    if !draft_matches && !path_only_target {
        return Err(unauthorised("signature", "the signature does not match"));
    }
    if !policy.clock_skew.is_zero() {
        let skew = match now.duration_since(signed_at) {
            Ok(age) => age,
            Err(early) => early.duration(),
        };
        if skew > policy.clock_skew {
            return Err(unauthorised("date", "the date is outside the allowed clock skew"));
        }
    }
    Ok(Accepted { key, path_only_target })
}

/// Whether `signature` proves `signing_string` under the key. An unknown key (None), or a key of
/// the other kind, costs an HMAC all the same, so timing does not tell keys apart.
fn proves(verifier: Option<&Verifier>, algorithm: Algorithm, signing_string: &str, signature: &[u8]) -> bool {
    match (verifier, algorithm.hmac()) {
        (Some(Verifier::Secret(secret)), Some(mac)) => {
            hmac::verify(&hmac::Key::new(mac, secret.as_bytes()), signing_string.as_bytes(), signature).is_ok()
        }
        (Some(Verifier::RsaPublicKey(der)), None) => {
            let key = signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, der);
            key.verify(signing_string.as_bytes(), signature).is_ok()
        }
        _ => {
            let decoy = hmac::Key::new(algorithm.hmac().unwrap_or(hmac::HMAC_SHA256), b"no request can match this");
            let _ = hmac::verify(&decoy, signing_string.as_bytes(), signature);
            false
        }
    }
}

/// The parameters of `Signature keyId="..",algorithm="..",signature="..",headers=".."`: names in
/// any case, values quoted or not, as Tyk's middleware reads them.
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
        let after_name = after_name.trim_start();
        let (value, after_value) = match after_name.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').ok_or_else(malformed)?,
            // Unquoted: up to the next comma. Signatures in base64 end in '=', so the value may
            // hold '=' but no quote, comma or space.
            None => after_name.split_at(after_name.find([',', ' ', '\t']).unwrap_or(after_name.len())),
        };
        if value.contains('"') {
            return Err(malformed());
        }
        let slot = match name.trim().to_ascii_lowercase().as_str() {
            "keyid" => &mut key_id,
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
        key_id: key_id.filter(|id| !id.is_empty()).ok_or_else(missing)?,
        algorithm: algorithm.ok_or_else(missing)?,
        signature: signature.ok_or_else(missing)?,
        headers,
    })
}

/// The `headers` parameter as lower-case names: no name twice, at most MAX_SIGNED_HEADERS, and
/// the date among them.
fn signed_names(headers: &str) -> Result<Vec<String>, Refusal> {
    let mut names: Vec<String> = Vec::new();
    for name in headers.split_ascii_whitespace() {
        let name = name.to_ascii_lowercase();
        if names.contains(&name) {
            return Err(bad_request("a header is listed twice in headers"));
        }
        if names.len() == MAX_SIGNED_HEADERS {
            return Err(bad_request("too many names in headers"));
        }
        names.push(name);
    }
    if !names.iter().any(|name| name == "date" || name == "x-aux-date") {
        return Err(bad_request("the signature must cover the date"));
    }
    Ok(names)
}

/// The two forms of `(request-target)`: the draft's `get /path?query`, or Tyk middleware's
/// `get /path` (the decoded path, its query unsigned).
#[derive(Clone, Copy)]
enum TargetForm {
    PathAndQuery,
    PathOnly,
}

/// One `name: value` line per signed header, joined by `\n`; `date` stands for X-Aux-Date when
/// the request has it. A value with a control character is refused: a line break in a value
/// would let one signature pass for another header list.
fn signing_string(request: &MiniRequestObject, names: &[String], form: TargetForm) -> Result<String, Refusal> {
    let aux_date = header(request, "x-aux-date");
    let mut lines: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        let (label, value) = match (name.as_str(), aux_date) {
            ("(request-target)", _) => ("(request-target)", request_target(request, form)),
            ("date", Some(aux_date)) => ("x-aux-date", aux_date.into()),
            _ => (
                name.as_str(),
                header(request, name).ok_or(bad_request("a header named in headers is missing"))?.into(),
            ),
        };
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(bad_request("a signed header value holds a control character"));
        }
        lines.push(format!("{label}: {}", value.trim()));
    }
    Ok(lines.join("\n"))
}

/// `get /path?query`, or in Tyk's form `get /path` with the path percent-decoded.
fn request_target(request: &MiniRequestObject, form: TargetForm) -> Cow<'_, str> {
    let method = request.method.to_ascii_lowercase();
    match form {
        TargetForm::PathAndQuery => format!("{method} {}", request.request_uri).into(),
        TargetForm::PathOnly => {
            let path = request.request_uri.split(['?', '#']).next().unwrap_or_default();
            format!("{method} {}", percent_encoding::percent_decode_str(path).decode_utf8_lossy()).into()
        }
    }
}

/// A signed `Digest: SHA-256=<base64>` (or SHA-512) must be the digest of the body.
fn check_digest(request: &MiniRequestObject) -> Result<(), Refusal> {
    let value = header(request, "digest").ok_or(bad_request("a header named in headers is missing"))?;
    let (name, encoded) =
        value.trim().split_once('=').ok_or(bad_request("the Digest header is not algorithm=base64"))?;
    let algorithm = match name.to_ascii_uppercase().as_str() {
        "SHA-256" => &digest::SHA256,
        "SHA-512" => &digest::SHA512,
        _ => return Err(bad_request("unsupported Digest algorithm (SHA-256 or SHA-512)")),
    };
    let claimed = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| bad_request("the Digest value is not base64"))?;
    match digest::digest(algorithm, &request.raw_body).as_ref() == claimed.as_slice() {
        true => Ok(()),
        false => Err(unauthorised("digest", "the Digest does not match the body")),
    }
}

/// An HTTP date as clients send it: IMF-fixdate (or the obsolete forms), with GMT or UTC, names
/// in any case, as Go's time parsing (and so Tyk) accepts.
fn http_date(value: &str) -> Option<SystemTime> {
    let words: Vec<String> = value
        .split_ascii_whitespace()
        .map(|word| match word.to_ascii_uppercase().as_str() {
            "GMT" | "UTC" => "GMT".to_owned(),
            _ if word.bytes().all(|b| b.is_ascii_alphabetic() || b == b',') => {
                let lower = word.to_ascii_lowercase();
                lower[..1].to_ascii_uppercase() + &lower[1..]
            }
            _ => word.to_owned(),
        })
        .collect();
    httpdate::parse_http_date(&words.join(" ")).ok()
}

/// The MAC or signature from the signature parameter: base64, often percent-encoded (either case
/// of escape).
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
    const PUBLIC_KEY: &str = include_str!("../tests/fixtures/rsa_public.pem");
    const PRIVATE_KEY: &str = include_str!("../tests/fixtures/rsa_private_pkcs8.pem");

    fn at_date() -> SystemTime {
        httpdate::parse_http_date(DATE).unwrap()
    }

    fn policy() -> Policy {
        Policy {
            clock_skew: Duration::from_secs(300),
            algorithms: Algorithm::ALL.to_vec(),
            required_headers: vec!["date".into()],
        }
    }

    fn sign(algorithm: hmac::Algorithm, secret: &str, signing_string: &str) -> String {
        let tag = hmac::sign(&hmac::Key::new(algorithm, secret.as_bytes()), signing_string.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    }

    fn rsa_sign(signing_string: &str) -> String {
        let der = base64::engine::general_purpose::STANDARD
            .decode(PRIVATE_KEY.lines().filter(|line| !line.starts_with("-----")).collect::<String>())
            .unwrap();
        let pair = signature::RsaKeyPair::from_pkcs8(&der).unwrap();
        let mut signed = vec![0; pair.public().modulus_len()];
        let rng = ring::rand::SystemRandom::new();
        pair.sign(&signature::RSA_PKCS1_SHA256, &rng, signing_string.as_bytes(), &mut signed).unwrap();
        base64::engine::general_purpose::STANDARD.encode(signed)
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

    fn status(request: &MiniRequestObject, keys: &Keys, policy: &Policy) -> Result<(), (i32, &'static str)> {
        verify(request, keys, policy, at_date()).map(|_| ()).map_err(|r| (r.status, r.reason))
    }

    #[test]
    fn parses_names_in_any_case_and_values_quoted_or_not() {
        let expected = SignatureParams { key_id: "k", algorithm: "hmac-sha512", signature: "c2ln%3D", headers: None };
        assert_eq!(
            parse_authorization(r#"Signature keyId="k",algorithm="hmac-sha512",signature="c2ln%3D""#),
            Ok(expected)
        );
        let spaced =
            parse_authorization(r#"  keyId = "k" ,  algorithm="hmac-sha512",	signature="s" , headers="date"  "#)
                .unwrap();
        assert_eq!((spaced.key_id, spaced.headers), ("k", Some("date")));
        let tyk = parse_authorization("signature keyid=k,ALGORITHM=hmac-sha1,Signature=ab+c/d==,headers=\"date host\"")
            .unwrap();
        assert_eq!(
            (tyk.key_id, tyk.algorithm, tyk.signature, tyk.headers),
            ("k", "hmac-sha1", "ab+c/d==", Some("date host"))
        );
        assert_eq!(parse_authorization("keyId=k, algorithm=a, signature=s").unwrap().algorithm, "a");
    }

    #[test]
    fn refuses_malformed_headers_with_400() {
        for header in [
            "",
            "Signature",
            "Bearer abc",
            r#"keyId="k,algorithm="a",signature="s""#,
            r#"keyId="k" algorithm="a",signature="s""#,
            r#"keyId="k",algorithm="a",signature="s","#,
            r#"keyId="k",algorithm="a""#,
            r#"keyId="",algorithm="a",signature="s""#,
            r#"keyId="k",keyid="k",algorithm="a",signature="s""#,
            r#"keyId="k",algorithm="a",signature="s",realm="x""#,
            r#"keyId=k"x,algorithm="a",signature="s""#,
            "keyId=\"\u{00e9}\u{1F600}\",algorithm=\"\u{0}\",signature=\"\u{0}",
        ] {
            assert_eq!(parse_authorization(header).map_err(|r| r.status), Err(400), "{header:?}");
        }
    }

    #[test]
    fn builds_the_signing_string_in_either_request_target_form() {
        let mut request = request(&[("Date", DATE), ("Host", " example.com "), ("Digest", "SHA-256=abc")]);
        request.request_uri = "/a%20b/get?x=1&y=2".into();
        let names = signed_names("(request-target) Host date digest").unwrap();
        assert_eq!(
            signing_string(&request, &names, TargetForm::PathAndQuery).unwrap(),
            format!("(request-target): get /a%20b/get?x=1&y=2\nhost: example.com\ndate: {DATE}\ndigest: SHA-256=abc")
        );
        assert!(signing_string(&request, &names, TargetForm::PathOnly)
            .unwrap()
            .starts_with("(request-target): get /a b/get\n"));
    }

    #[test]
    fn x_aux_date_stands_in_for_date() {
        let request = request(&[("Date", "ignored"), ("X-Aux-Date", DATE)]);
        for names in ["date", "x-aux-date"] {
            let names = signed_names(names).unwrap();
            assert_eq!(
                signing_string(&request, &names, TargetForm::PathAndQuery).unwrap(),
                format!("x-aux-date: {DATE}")
            );
        }
    }

    #[test]
    fn refuses_bad_headers_lists() {
        let request = request(&[("Date", DATE), ("Host", "h")]);
        let status = |names: &str| {
            signed_names(names)
                .and_then(|names| signing_string(&request, &names, TargetForm::PathAndQuery))
                .map_err(|r| r.status)
        };
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
    fn a_signed_value_with_a_control_character_is_refused() {
        // A line break in X-A would let "x-a: 1\nx-b: 2\ndate: D", signed for "x-a x-b date", pass
        // for "x-a date".
        for value in ["1\nx-b: 2", "1\r", "1\0", "\u{7f}", "\u{85}"] {
            let request = request(&[("Date", DATE), ("X-A", value)]);
            let names = signed_names("x-a date").unwrap();
            assert_eq!(
                signing_string(&request, &names, TargetForm::PathAndQuery).map_err(|r| r.status),
                Err(400),
                "{value:?}"
            );
        }
        let tab = request(&[("Date", DATE), ("X-A", "a\tb")]);
        assert!(signing_string(&tab, &signed_names("x-a date").unwrap(), TargetForm::PathAndQuery).is_ok());
    }

    #[test]
    fn accepts_every_algorithm_the_policy_allows() {
        let keys = Keys::demo();
        for (name, algorithm) in [
            ("hmac-sha1", hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
            ("hmac-sha256", hmac::HMAC_SHA256),
            ("HMAC-SHA384", hmac::HMAC_SHA384),
            ("hmac-sha512", hmac::HMAC_SHA512),
        ] {
            assert_eq!(status(&signed_request(name, algorithm), &keys, &policy()), Ok(()), "{name}");
        }
        let without_sha1 = Policy { algorithms: vec![Algorithm::HmacSha256], ..policy() };
        let sha1 = signed_request("hmac-sha1", hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY);
        assert_eq!(status(&sha1, &keys, &without_sha1).map_err(|(code, _)| code), Err(400));
        assert_eq!(status(&signed_request("hmac-sha256", hmac::HMAC_SHA256), &keys, &without_sha1), Ok(()));
    }

    #[test]
    fn rsa_sha256_is_checked_against_the_keys_public_key() {
        let keys = Keys::parse(&serde_json::json!({"keys": [{"keyId": "rsa", "publicKey": PUBLIC_KEY, "token": "t"}, {"keyId": "h", "secret": "s"}]}).to_string()).unwrap();
        let signed = |key_id: &str, signature: &str| {
            let authorization = format!("keyId=\"{key_id}\",algorithm=\"rsa-sha256\",signature=\"{signature}\"");
            request(&[("Date", DATE), ("Authorization", &authorization)])
        };
        let good = rsa_sign(&format!("date: {DATE}"));
        assert_eq!(status(&signed("rsa", &good), &keys, &policy()), Ok(()));
        assert_eq!(
            status(
                &signed(
                    "rsa",
                    &percent_encoding::utf8_percent_encode(&good, percent_encoding::NON_ALPHANUMERIC).to_string()
                ),
                &keys,
                &policy()
            ),
            Ok(())
        );
        let other_date = rsa_sign("date: Sun, 06 Nov 1994 08:49:38 GMT");
        assert_eq!(status(&signed("rsa", &other_date), &keys, &policy()).map_err(|(code, _)| code), Err(401));
        assert_eq!(
            status(&signed("h", &good), &keys, &policy()).map_err(|(code, _)| code),
            Err(401),
            "an HMAC key takes no RSA"
        );
        let hmac_for_rsa_key = signed_request("hmac-sha256", hmac::HMAC_SHA256);
        let mut hmac_for_rsa_key = hmac_for_rsa_key.clone();
        let authorization = hmac_for_rsa_key.headers["Authorization"].replace(DEMO_KEY_ID, "rsa");
        hmac_for_rsa_key.headers.insert("Authorization".into(), authorization);
        assert_eq!(status(&hmac_for_rsa_key, &keys, &policy()).map_err(|(code, _)| code), Err(401));
    }

    #[test]
    fn public_keys_must_be_pem_rsa_subject_public_key_infos() {
        assert!(rsa_public_key(PUBLIC_KEY).is_some());
        let body: String = PUBLIC_KEY.lines().filter(|line| !line.starts_with("-----")).collect();
        for bad in [
            String::new(),
            body.clone(),
            PUBLIC_KEY.replace("PUBLIC KEY", "RSA PUBLIC KEY"),
            PUBLIC_KEY.replacen(&body[..8], "AAAAAAAA", 1),
            format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----", &body[..body.len() - 8]),
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----".into(),
        ] {
            assert_eq!(rsa_public_key(&bad), None, "{bad}");
        }
        for truncated in 0..20 {
            let _ = der_element(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff][..truncated.min(6)], 0x30);
        }
    }

    #[test]
    fn required_headers_must_be_signed() {
        let keys = Keys::demo();
        let strict = Policy { required_headers: vec!["(request-target)".into(), "date".into()], ..policy() };
        let date_only = signed_request("hmac-sha256", hmac::HMAC_SHA256);
        assert_eq!(
            status(&date_only, &keys, &strict),
            Err((401, "the signature does not cover a required header (TYK_PLUGIN_HMAC_REQUIRED_HEADERS)"))
        );
        let signing_string = format!("(request-target): get /grpc-custom-auth/get?a=1\nx-aux-date: {DATE}");
        let signature = sign(hmac::HMAC_SHA256, DEMO_SECRET, &signing_string);
        let authorization = format!("keyId=\"{DEMO_KEY_ID}\",algorithm=\"hmac-sha256\",headers=\"(request-target) x-aux-date\",signature=\"{signature}\"");
        let covered = request(&[("X-Aux-Date", DATE), ("Authorization", &authorization)]);
        assert_eq!(status(&covered, &keys, &strict), Ok(()), "x-aux-date covers date");
    }

    #[test]
    fn a_signed_digest_must_match_the_body() {
        let keys = Keys::demo();
        let with_digest = |digest: &str, body: &[u8]| {
            let signature = sign(hmac::HMAC_SHA256, DEMO_SECRET, &format!("date: {DATE}\ndigest: {digest}"));
            let authorization = format!(
                "keyId=\"{DEMO_KEY_ID}\",algorithm=\"hmac-sha256\",headers=\"date digest\",signature=\"{signature}\""
            );
            let mut request = request(&[("Date", DATE), ("Digest", digest), ("Authorization", &authorization)]);
            request.raw_body = body.to_vec();
            status(&request, &keys, &policy()).map_err(|(code, _)| code)
        };
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let sha256 = format!("SHA-256={}", b64(digest::digest(&digest::SHA256, b"body").as_ref()));
        let sha512 = format!("sha-512={}", b64(digest::digest(&digest::SHA512, b"body").as_ref()));
        assert_eq!(with_digest(&sha256, b"body"), Ok(()));
        assert_eq!(with_digest(&sha512, b"body"), Ok(()));
        assert_eq!(with_digest(&sha256, b"other body"), Err(401));
        assert_eq!(with_digest(&sha256, b""), Err(401));
        assert_eq!(with_digest("MD5=abc", b"body"), Err(400));
        assert_eq!(with_digest("SHA-256=!!", b"body"), Err(400));
        assert_eq!(with_digest("SHA-256", b"body"), Err(400));
    }

    #[test]
    fn dates_may_say_utc_and_use_names_in_any_case() {
        let expected = Some(at_date());
        for date in
            [DATE, "Sun, 06 Nov 1994 08:49:37 UTC", "sun, 06 nov 1994 08:49:37 gmt", "SUN, 06 NOV 1994 08:49:37 utc"]
        {
            assert_eq!(http_date(date), expected, "{date}");
        }
        for bad in ["yesterday", "Sun, 06 Nov 1994 08:49:37 CET", "", "Sun, 31 Feb 1994 08:49:37 GMT"] {
            assert_eq!(http_date(bad), None, "{bad}");
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
        let good = signed_request("hmac-sha256", hmac::HMAC_SHA256);
        let with = |name: &str, value: &str| {
            let mut request = good.clone();
            request.headers.insert(name.into(), value.into());
            request
        };
        let at = |request: &MiniRequestObject, now: SystemTime| {
            verify(request, &keys, &policy(), now).map(|_| ()).map_err(|r| r.status)
        };
        let authorization = good.headers["Authorization"].clone();

        assert_eq!(at(&good, at_date()), Ok(()));
        assert_eq!(at(&request(&[("Date", DATE)]), at_date()), Err(400));
        assert_eq!(at(&request(&[("Authorization", &authorization)]), at_date()), Err(400));
        assert_eq!(at(&with("Date", "yesterday"), at_date()), Err(400));
        assert_eq!(at(&with("Authorization", &authorization.replace("hmac-sha256", "hmac-md5")), at_date()), Err(400));
        assert_eq!(at(&with("Authorization", &authorization.replace(DEMO_KEY_ID, "other")), at_date()), Err(401));
        assert_eq!(
            at(&with("Authorization", &authorization.replace("signature=\"", "signature=\"AAAA")), at_date()),
            Err(401)
        );
        assert_eq!(
            at(&with("Authorization", &authorization.replace("signature=\"", "signature=\"!")), at_date()),
            Err(401)
        );
        assert_eq!(at(&with("Date", "Sun, 06 Nov 1994 08:49:38 GMT"), at_date()), Err(401), "the date is signed");
        assert_eq!(at(&good, at_date() + Duration::from_secs(301)), Err(401), "stale");
        assert_eq!(at(&good, at_date() - Duration::from_secs(301)), Err(401), "from the future");
        assert_eq!(at(&good, at_date() + Duration::from_secs(299)), Ok(()));
        let no_window = Policy { clock_skew: Duration::ZERO, ..policy() };
        assert!(verify(&good, &keys, &no_window, at_date() + Duration::from_secs(99_999)).is_ok());
    }

    #[test]
    fn the_accepted_reply_carries_no_secret_and_opens_only_the_calling_api() {
        let keys = Keys::parse(r#"{"keys": [{"keyId": "k1", "secret": "s1", "policies": ["p1", "p2"]}]}"#).unwrap();
        let mut object = Object::new();
        object.spec.insert("APIID".into(), "api-1".into());
        let date = httpdate::fmt_http_date(SystemTime::now());
        let signature = sign(hmac::HMAC_SHA256, "s1", &format!("date: {date}"));
        let request = object.request.mut_or_insert_default();
        request.headers.insert("Date".into(), date);
        request.headers.insert(
            "Authorization".into(),
            format!("keyId=\"k1\",algorithm=\"hmac-sha256\",signature=\"{signature}\""),
        );
        assert!(decide(&mut object, &keys, &policy(), SystemTime::now()).is_ok());
        let token = object.metadata["token"].clone();
        assert_eq!(token, derived_token("k1", "s1"));
        assert!(token.len() == 64 && token != "k1", "the token is not the keyId");
        let expected = SessionState {
            apply_policies: vec!["p1".into(), "p2".into()],
            access_rights: HashMap::from([(
                "api-1".to_owned(),
                AccessDefinition { api_id: "api-1".into(), versions: vec!["Default".into()], ..Default::default() },
            )]),
            ..Default::default()
        };
        assert_eq!(*object.session, expected, "policies and the calling API, nothing else");
        let reply = protobuf::Message::write_to_bytes(&object).unwrap();
        assert!(!reply.windows(2).any(|window| window == b"s1"), "the secret is nowhere in the reply");

        object.request.mut_or_insert_default().headers.insert("Date".into(), DATE.into());
        assert_eq!(
            decide(&mut object, &keys, &policy(), SystemTime::now()).map(|_| ()).map_err(|r| r.status),
            Err(401)
        );
        assert!(object.session.is_none() && !object.metadata.contains_key("token"));
        assert_eq!(object.request.return_overrides.response_code, 401);
        assert_eq!(object.request.return_overrides.headers["WWW-Authenticate"], "Signature headers=\"date\"");

        object.spec.clear();
        assert_eq!(
            decide(&mut object, &keys, &policy(), SystemTime::now()).map(|_| ()).map_err(|r| r.status),
            Err(400)
        );
    }

    #[test]
    fn tokens_are_derived_or_named_and_the_demo_keeps_its_id() {
        let keys = Keys::parse(
            r#"{"keys": [{"keyId": "a", "secret": "x"}, {"keyId": "b", "secret": "x", "token": "existing-key"}]}"#,
        )
        .unwrap();
        assert_eq!(keys.0["a"].token, derived_token("a", "x"));
        assert_ne!(derived_token("a", "x"), derived_token("a", "y"), "the secret is in it");
        assert_ne!(derived_token("a", "x"), derived_token("b", "x"), "so is the keyId");
        assert_eq!(keys.0["b"].token, "existing-key");
        assert_eq!(Keys::demo().0[DEMO_KEY_ID].token, DEMO_KEY_ID);
    }

    #[test]
    fn keys_files_are_parsed_strictly_and_errors_quote_nothing() {
        let error = |text: &str| Keys::parse(text).err().unwrap_or_default();
        let cases = [
            (r#"{"keys": [{"keyId": "k", "secret": "LEAK1" "LEAK2"}]}"#, "line 1, column 44: this is not JSON"),
            (r#"{"keys": [{"keyId": "k", "secret": "LEAK", "secretLEAK": 1}]}"#, "unknown field"),
            (r#"{"keys": [{"keyId": "k", "secret": "LEAK", "secret": "LEAK2"}]}"#, "a field appears twice"),
            (r#"{"keys": [{"keyId": "k", "secret": "LEAK"}], "keys": []}"#, "a field appears twice"),
            (
                "{\"keys\": [{\"keyId\": \"k\", \"secret\": \"LEAK\"}]}\n{LEAK}",
                "line 2, column 1: there is more after the end",
            ),
            (r#"{"keys": [{"keyId": "k", "secret": "LEAK"}]"#, "it ends too early"),
            (r#"{"keys": [{"keyId": "k", "secret": ["LEAK"]}]}"#, "a value of the wrong type"),
            (r#"{"keys": [{"secret": "LEAK"}]}"#, "a field is missing"),
            (r#"{"keys": []}"#, "it holds no keys"),
            (r#"{"keys": [{"keyId": "", "secret": "LEAK"}]}"#, "key number 1 has no keyId"),
            (r#"{"keys": [{"keyId": "k", "secret": ""}]}"#, "key number 1 has no secret"),
            (r#"{"keys": [{"keyId": "k"}]}"#, "key number 1 has no secret"),
            (r#"{"keys": [{"keyId": "k", "secret": "LEAK", "publicKey": "x"}]}"#, "both a secret and a publicKey"),
            (r#"{"keys": [{"keyId": "k", "publicKey": "LEAK"}]}"#, "publicKey is not a PEM RSA public key"),
            (r#"{"keys": [{"keyId": "k", "secret": "LEAK", "token": ""}]}"#, "an empty token"),
            (
                r#"{"keys": [{"keyId": "k", "secret": "LEAK"}, {"keyId": "k", "secret": "LEAK2"}]}"#,
                "key number 2: its keyId appears twice",
            ),
        ];
        for (text, expected) in cases {
            let error = error(text);
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains("LEAK") && !error.contains('"'), "{text}: the error quotes the file: {error}");
        }
        let rsa_without_token = serde_json::json!({"keys": [{"keyId": "k", "publicKey": PUBLIC_KEY}]}).to_string();
        assert!(error(&rsa_without_token).contains("has a publicKey but no token"));
        assert_eq!(
            Keys::parse(r#"{"keys": [{"keyId": "a=", "secret": "x"}, {"keyId": "b", "secret": "y", "policies": []}]}"#)
                .unwrap()
                .len(),
            2
        );
    }
}

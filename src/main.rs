//! tyk-grpc-plugin: a gRPC plugin server for Tyk Gateway, a drop-in for the Tyk demo's Python one.
//!
//! The gateway calls `coprocess.Dispatcher/Dispatch` once per configured plugin on every API
//! request, with an `Object`: the hook type and name, the request, the API's spec and, for some
//! hooks, the session and the response. The reply is that object, edited: the gateway applies the
//! edits (headers, query parameters, body, an early answer) and carries on. `DispatchEvent` brings
//! gateway events such as AuthFailure or QuotaExceeded.
//!
//! This file is the plugin's logic: the demo's edits per hook, HMAC authentication for
//! CustomKeyCheck, and event logging. Every object received is logged as JSON (at INFO), with the
//! hook, the API and the trace id, after the reply has gone. The server itself (settings, health,
//! reflection, drain) is in the library; `main` hands it these functions.
//!
//! Hooks run on worker threads, so they may block on I/O (a database, an HTTP service): a slow
//! hook holds up neither other calls nor health checks. See examples/ for two more plugins.

use log::{info, warn};
use tyk_grpc_plugin::proto::{Event, HookType, Object};
use tyk_grpc_plugin::{auth, logging, Call};

/// One Dispatch call: edit the received object and return it. Never build a new one: the gateway
/// reads `request.url`, `method` and `raw_body` back from the reply.
fn dispatch(mut object: Object, call: &mut Call) -> Object {
    match object.hook_type.enum_value() {
        // Before authentication: add a query parameter on the way to the upstream.
        Ok(HookType::Pre) => {
            let request = object.request.mut_or_insert_default();
            request.add_params.insert("new-param".into(), "new-value".into());
            request.extended_params.insert("extended-param".into(), "extended-value".into());
        }
        // After the gateway's own authentication: remove it again.
        Ok(HookType::PostKeyAuth) => object.request.mut_or_insert_default().delete_params.push("new-param".into()),
        // Custom authentication (`auth_check` in the API definition): check the HMAC signature.
        // Accepted, the reply carries a session and metadata["token"]; refused, a 400 or 401 in
        // `request.return_overrides`. The decision goes to this call's log.
        Ok(HookType::CustomKeyCheck) => auth::authenticate(&mut object, call),
        // Post and Response hooks (and hooks from newer gateways) are only logged.
        Ok(HookType::Post | HookType::Response | HookType::Unknown) | Err(_) => {}
    }
    object
}

/// One gateway event; its payload is a JSON document. The gateway only logs a failed reply.
fn dispatch_event(event: Event) {
    match serde_json::from_str::<serde_json::Value>(&event.payload) {
        Ok(payload) => info!("DispatchEvent {payload}"),
        Err(error) => warn!("DispatchEvent payload is not JSON ({error}): {:?}", logging::shorten(&event.payload)),
    }
}

fn main() {
    tyk_grpc_plugin::run(dispatch, dispatch_event)
}

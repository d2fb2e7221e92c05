//! A Pre hook driven by each API's own settings: the headers to add come from the API definition's
//! `config_data`, which the gateway sends as `spec["config_data"]` (enable it with
//! `config_data_disabled: false`), e.g.
//!
//!     "config_data": {"add_headers": {"X-Team": "payments", "X-Tier": "gold"}}
//!
//! One plugin binary then serves every API, each configured in its definition.
//! Run it with `cargo run --release --example config_headers`.

use log::warn;
use tyk_grpc_plugin::proto::{HookType, Object};
use tyk_grpc_plugin::Call;

fn dispatch(mut object: Object, call: &mut Call) -> Object {
    if object.hook_type.enum_value() != Ok(HookType::Pre) {
        return object;
    }
    let Some(config) = object.spec.get("config_data").filter(|config| !config.is_empty()) else {
        return object;
    };
    let headers = match serde_json::from_str::<serde_json::Value>(config) {
        Ok(config) => config.get("add_headers").and_then(|headers| headers.as_object()).cloned(),
        Err(error) => {
            // A broken API definition should not fail its requests: warn and pass them on.
            warn!("api={:?}: config_data is not JSON: {error}", object.spec.get("APIID").map_or("", String::as_str));
            None
        }
    };
    let request = object.request.mut_or_insert_default();
    for (name, value) in headers.into_iter().flatten() {
        match value.as_str() {
            Some(value) => {
                request.set_headers.insert(name, value.to_owned());
            }
            None => call.log(format_args!("add_headers.{name} is not a string: left out")),
        }
    }
    object
}

fn main() {
    tyk_grpc_plugin::run(dispatch, |_event| {})
}

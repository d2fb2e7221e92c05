//! Fuzzes the keys file parser: whatever the text, it loads or refuses with a message that quotes
//! nothing of the file (no quote character, so no field name or value), never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tyk_grpc_plugin::auth::Keys;

fuzz_target!(|text: &str| {
    if let Err(error) = Keys::parse(text) {
        assert!(!error.contains('"') && !error.contains('`'), "{error}");
    }
});

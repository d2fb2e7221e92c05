//! Fuzzes the log lines' JSON printer against protobuf-json-mapping's: whatever coprocess.Object
//! the input decodes to (unknown enum numbers, any UTF-8, NaN, every field set or not), both must
//! print the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protobuf::Message;
use tyk_grpc_plugin::{json, proto};

fuzz_target!(|data: &[u8]| {
    if let Ok(object) = proto::Object::parse_from_bytes(data) {
        let reference = protobuf_json_mapping::print_to_string(&object).expect("no well-known types in coprocess.Object");
        assert_eq!(json::Json(&object).to_string(), reference);
    }
});

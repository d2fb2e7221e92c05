//! Generates Rust types for every .proto in proto/ into OUT_DIR/protos with the pure-Rust parser
//! (no protoc needed). The gRPC methods are declared by hand in src/proto.rs.

fn main() {
    let mut protos: Vec<_> = std::fs::read_dir("proto")
        .expect("proto/ is readable")
        .map(|entry| entry.expect("proto/ entry is readable").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .collect();
    protos.sort();
    protobuf_codegen::Codegen::new().pure().include("proto").inputs(&protos).cargo_out_dir("protos").run_from_script();
    println!("cargo:rerun-if-changed=proto");
}

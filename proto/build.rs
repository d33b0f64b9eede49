//! Compiles Parley's `.proto` contracts into Rust with `protox`, a pure-Rust
//! protobuf compiler, so building needs no system `protoc`. The encoded
//! descriptor set (imports and source comments included) is written next to
//! the generated code for server reflection.

use std::{env, error::Error, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "parley/auth/v1/auth.proto",
    "parley/user/v1/user.proto",
    "parley/chat/v1/chat.proto",
    "parley/media/v1/media.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }

    let mut compiler = protox::Compiler::new(["."])?;
    compiler
        .include_source_info(true)
        .include_imports(true)
        .open_files(PROTOS)?;
    fs::write(
        out_dir.join("parley_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .emit_rerun_if_changed(false)
        // File chunks as `Bytes`: sliced and passed on without copies.
        .bytes(".parley.media.v1")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

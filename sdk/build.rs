//! Records the contract version this SDK speaks, for the custom section the
//! host reads before instantiating a component.

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("api_version"), API_VERSION).expect("write api_version");
    println!("cargo:rerun-if-changed=build.rs");
}

/// Must match the package version in `wit/since_v<VERSION>/world.wit`.
const API_VERSION: &str = "0.1.1";

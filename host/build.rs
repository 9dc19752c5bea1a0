//! Builds the connector components from source for `wasm32-wasip2`, once
//! per change, so `cargo build` and `cargo test` need no separate step.
//! Each component's path is exported as a compile-time env var
//! (`SOURCEBOX_COMPONENT_<PACKAGE>`), read by the tests and, for
//! first-party connectors, embedded in the binary.

use std::path::PathBuf;
use std::process::Command;

/// Packages built to components.
const COMPONENTS: &[&str] = &[
    "sourcebox-connector-github",
    "sourcebox-fixture-echo",
    "sourcebox-fixture-echo-next",
    "sourcebox-fixture-hostile",
    "sourcebox-fixture-bad-manifest",
    "sourcebox-fixture-slow-describe",
    "sourcebox-fixture-oauth",
    "sourcebox-fixture-browser",
    "sourcebox-fixture-login",
    "sourcebox-fixture-legacy",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let workspace = manifest_dir.parent().expect("workspace root").to_path_buf();
    for watched in [
        "sdk/src",
        "sdk/Cargo.toml",
        "wit",
        "sdk/build.rs",
        "connectors",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    // A target directory of its own: the outer build holds the lock on
    // `target/`, and the guests need none of the host's flags.
    let target_dir = workspace.join("target").join("components");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Panic locations name source files; with these prefixes remapped a
    // component's bytes do not depend on where the checkout or cargo's home
    // is, so the catalog's digests hold on any machine with the pinned
    // toolchain.
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let mut rustflags = format!("--remap-path-prefix={}=/src", workspace.display());
    if let Some(home) = cargo_home {
        rustflags.push_str(&format!(
            "\x1f--remap-path-prefix={}=/cargo",
            home.display()
        ));
    }
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace.join("connectors"))
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("CARGO_TARGET_DIR");
    for package in COMPONENTS {
        cmd.args(["-p", package]);
    }
    let status = cmd
        .status()
        .expect("run cargo to build the connector components");
    assert!(
        status.success(),
        "building the connector components for wasm32-wasip2 failed; if the \
         error above is `can't find crate for std`, the toolchain lacks the \
         wasm32-wasip2 target: run `rustup toolchain install` in the \
         repository (it reads rust-toolchain.toml)"
    );
    for package in COMPONENTS {
        let file = target_dir
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", package.replace('-', "_")));
        let var = format!(
            "SOURCEBOX_COMPONENT_{}",
            package
                .trim_start_matches("sourcebox-")
                .replace('-', "_")
                .to_uppercase()
        );
        println!("cargo:rustc-env={var}={}", file.display());
    }
}

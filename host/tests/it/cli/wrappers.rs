//! Key wrappers from the command line: a passphrase from a file descriptor only, a PKCS#11 token (SoftHSM2).

use super::*;

#[test]
fn a_passphrase_vault_unlocks_from_a_file_descriptor_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let pass = tmp.path().join("pass");
    let short = tmp.path().join("short");
    let wrong = tmp.path().join("wrong");
    std::fs::write(&pass, b"correct horse battery staple\n").expect("pass");
    std::fs::write(&short, b"too short").expect("short");
    std::fs::write(&wrong, b"incorrect horse battery staple").expect("wrong");

    fails_with(
        run_unlocked(
            &dir,
            &short,
            &["init", "--key-wrapper", "passphrase", "--production"],
            b"",
        ),
        "at least 12 bytes",
        "short passphrase",
    );
    ok(
        run_unlocked(
            &dir,
            &pass,
            &["init", "--key-wrapper", "passphrase", "--production"],
            b"",
        ),
        "init",
    );
    ok(
        cli(&dir, &["source", "add", "work"], b""),
        "source add needs no unlock",
    );
    ok(
        run_unlocked(
            &dir,
            &pass,
            &["credential", "set", "work", "token", "--class", "token"],
            CANARY,
        ),
        "set",
    );
    fails_with(
        cli(&dir, &["credential", "list"], b""),
        "--unlock-fd",
        "locked without a passphrase",
    );

    let before = files_under(&dir);
    let out = fails_with(
        run_unlocked(&dir, &wrong, &["credential", "list"], b""),
        "wrong passphrase",
        "wrong passphrase",
    );
    assert_no_leak(b"incorrect horse", &out.stderr, "error output");
    assert_eq!(
        files_under(&dir),
        before,
        "a wrong passphrase touches nothing"
    );

    ok(
        run_unlocked(&dir, &pass, &["vault", "rotate-kek"], b""),
        "rotate",
    );
    let vault = reopen(&dir, Some(b"correct horse battery staple"));
    assert_eq!(
        get(
            &vault,
            &vault.store().source("work").expect("work"),
            "token"
        ),
        CANARY
    );
    for (path, bytes) in files_under(&dir) {
        assert_no_leak(
            b"correct horse battery staple",
            &bytes,
            &path.display().to_string(),
        );
    }
}

const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

#[test]
fn pkcs11_round_trip_against_softhsm2() {
    assert!(
        Path::new(SOFTHSM_MODULE).exists(),
        "SoftHSM2 is needed for this test: apt-get install softhsm2 (.ci/run installs it)"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let tokens = tmp.path().join("tokens");
    std::fs::create_dir(&tokens).expect("tokens dir");
    let conf = tmp.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("conf");
    let init_token = std::process::Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "sourcebox-test",
            "--so-pin",
            "5678",
            "--pin",
            "123456",
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util");
    assert!(
        init_token.status.success(),
        "{}",
        String::from_utf8_lossy(&init_token.stderr)
    );

    let dir = tmp.path().join("data");
    let pin = tmp.path().join("pin");
    let wrong = tmp.path().join("wrong");
    std::fs::write(&pin, b"123456").expect("pin");
    std::fs::write(&wrong, b"654321").expect("wrong");
    let hsm = |args: &[&str], unlock: &Path, stdin: &[u8]| {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg("-c")
            .arg(r#"exec "$0" --data-dir "$SB_DIR" --unlock-fd 3 "$@" 3<"$SB_UNLOCK""#)
            .arg(env!("CARGO_BIN_EXE_sourcebox"))
            .args(args)
            .env("SB_DIR", &dir)
            .env("SB_UNLOCK", unlock)
            .env("SOFTHSM2_CONF", &conf)
            .env("SOURCEBOX_LOG", "sourcebox=trace");
        run(cmd, stdin)
    };
    ok(
        hsm(
            &[
                "init",
                "--production",
                "--key-wrapper",
                "pkcs11",
                "--pkcs11-module",
                SOFTHSM_MODULE,
                "--pkcs11-token",
                "sourcebox-test",
            ],
            &pin,
            b"",
        ),
        "init",
    );
    ok(cli(&dir, &["source", "add", "work"], b""), "source add");
    ok(
        hsm(
            &["credential", "set", "work", "token", "--class", "token"],
            &pin,
            CANARY,
        ),
        "set",
    );
    fails_with(
        hsm(&["credential", "list"], &wrong, b""),
        "wrong PKCS#11 PIN",
        "wrong PIN",
    );
    ok(hsm(&["vault", "rotate-kek"], &pin, b""), "rotate");

    // Export decrypts through the token; restore into a local vault to read.
    let (recipient, identity) = age_identity(tmp.path());
    let backup = tmp.path().join("hsm.age");
    ok(
        hsm(
            &[
                "vault",
                "export",
                "--recipient",
                &recipient,
                "--output",
                backup.to_str().expect("utf-8"),
            ],
            &pin,
            b"",
        ),
        "export",
    );
    let plain = tmp.path().join("plain");
    ok(cli(&plain, &["init"], b""), "init local");
    ok(
        cli(
            &plain,
            &[
                "vault",
                "import",
                backup.to_str().expect("utf-8"),
                "--identity",
                identity.to_str().expect("utf-8"),
            ],
            b"",
        ),
        "import",
    );
    let vault = reopen(&plain, None);
    assert_eq!(
        get(
            &vault,
            &vault.store().source("work").expect("work"),
            "token"
        ),
        CANARY
    );

    // A wrapped key edited in the database is refused by the token.
    let conn = rusqlite::Connection::open(dir.join("sourcebox.db")).expect("db");
    let mut wrapped: Vec<u8> = conn
        .query_row("SELECT wrapped_key FROM credentials", [], |r| r.get(0))
        .expect("wrapped");
    wrapped[20] ^= 0x01;
    conn.execute("UPDATE credentials SET wrapped_key = ?1", [&wrapped])
        .expect("tamper");
    drop(conn);
    let other = tmp.path().join("tampered.age");
    fails_with(
        hsm(
            &[
                "vault",
                "export",
                "--recipient",
                &recipient,
                "--output",
                other.to_str().expect("utf-8"),
            ],
            &pin,
            b"",
        ),
        "cannot be decrypted",
        "tampered wrapped key",
    );
    for (path, bytes) in files_under(&dir) {
        assert_no_leak(CANARY, &bytes, &path.display().to_string());
    }
}

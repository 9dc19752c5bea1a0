//! The real `sourcebox` binary: a canary secret written through every path
//! never leaves the vault in any recognisable form; bad data directories,
//! production mode, passphrases and PKCS#11 behave as documented.

use crate::common;

use std::path::Path;
use std::process::Output;

use age::secrecy::ExposeSecret;
use common::{assert_no_leak, files_under, get, reopen, run, run_unlocked, sourcebox};

const CANARY: &[u8] = b"canary-7Qz9-ghp_Xk2LmN8pR4sT6vW1yA3bC5dE";
const CANARY_OAUTH: &[u8] = b"canary-oauth-Jf83-Ua0sPq";

fn cli(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = sourcebox();
    cmd.arg("--data-dir").arg(dir).args(args);
    // Provider-looking variables in the host environment change nothing.
    cmd.env("GITHUB_TOKEN", "env-should-never-be-used")
        .env("AMAZON_PASSWORD", "");
    run(cmd, stdin)
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn fails_with(out: Output, needle: &str, what: &str) -> Output {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} should fail");
    assert!(
        stderr.contains(needle),
        "{what}: expected '{needle}' in: {stderr}"
    );
    out
}

fn age_identity(dir: &Path) -> (String, std::path::PathBuf) {
    let identity = age::x25519::Identity::generate();
    let file = dir.join("backup-identity.txt");
    std::fs::write(&file, identity.to_string().expose_secret()).expect("identity file");
    (identity.to_public().to_string(), file)
}

#[test]
fn a_canary_secret_never_leaves_the_vault() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let dir2 = tmp.path().join("restored");
    let backup = tmp.path().join("vault.age");
    let (recipient, identity) = age_identity(tmp.path());
    let oauth = [
        br#"{"access_token":""#.as_slice(),
        CANARY_OAUTH,
        br#"","expires_at":1900000000}"#,
    ]
    .concat();
    let bad_oauth = [
        br#"{"access_token":""#.as_slice(),
        CANARY,
        br#"","scope":1}"#,
    ]
    .concat();

    let mut outputs: Vec<Output> = Vec::new();
    let init = ok(cli(&dir, &["init"], b""), "init");
    // The local wrapper is said plainly to be for development, with the
    // way to the others.
    let said = String::from_utf8_lossy(&init.stdout).into_owned();
    assert!(
        said.contains("it is for development")
            && said.contains("--key-wrapper passphrase")
            && said.contains("--key-wrapper pkcs11"),
        "{said}"
    );
    outputs.push(init);
    // A second connection keeps the WAL and shm files alive for the scan.
    let keep_wal = sourcebox::store::Store::open(&dir).expect("open");
    for (args, stdin) in [
        (vec!["source", "add", "work"], b"".as_slice()),
        (vec!["source", "add", "home"], b""),
        (
            vec![
                "credential",
                "set",
                "work",
                "github_token",
                "--class",
                "token",
            ],
            &[CANARY, b"\n"].concat(),
        ),
        (
            vec!["credential", "set", "home", "oauth", "--class", "oauth"],
            oauth.as_slice(),
        ),
        (
            vec![
                "credential",
                "set",
                "home",
                "password",
                "--class",
                "password",
                "--expires",
                "2030-01-01T00:00:00Z",
            ],
            CANARY,
        ),
        (vec!["credential", "list"], b""),
        (vec!["credential", "list", "work", "--json"], b""),
        (vec!["vault", "rotate-kek", "--batch", "1"], b""),
        (
            vec![
                "vault",
                "export",
                "--recipient",
                &recipient,
                "--output",
                backup.to_str().expect("utf-8"),
            ],
            b"",
        ),
        (vec!["credential", "revoke", "home", "password"], b""),
        (vec!["audit", "verify"], b""),
    ] {
        outputs.push(ok(cli(&dir, &args, stdin), &args.join(" ")));
    }
    // Refusals carrying the canary on stdin.
    for (args, stdin, needle) in [
        (
            vec!["credential", "set", "home", "bad", "--class", "oauth"],
            bad_oauth.as_slice(),
            "oauth credential is a JSON object",
        ),
        (
            vec!["credential", "set", "nowhere", "x", "--class", "token"],
            CANARY,
            "no source named 'nowhere'",
        ),
        (
            vec!["credential", "set", "work", "Bad Name", "--class", "token"],
            CANARY,
            "invalid credential name",
        ),
        (
            vec!["credential", "set", "work", "empty", "--class", "token"],
            b"\n",
            "empty value",
        ),
    ] {
        outputs.push(fails_with(cli(&dir, &args, stdin), needle, &args.join(" ")));
    }

    // The values round-trip exactly, and the revoked one is gone.
    let vault = reopen(&dir, None);
    let work = vault.store().source("work").expect("work");
    let home = vault.store().source("home").expect("home");
    assert_eq!(get(&vault, &work, "github_token"), CANARY);
    assert_eq!(get(&vault, &home, "oauth"), oauth);
    assert!(
        vault
            .get(sourcebox::vault::Actor::OWNER_CLI, &home, "password")
            .is_err()
    );
    let listed = vault.list(None).expect("list");
    assert_eq!(
        listed
            .iter()
            .find(|m| m.name == "oauth")
            .and_then(|m| m.expires_at),
        Some(1_900_000_000_000)
    );
    assert_eq!(listed.len(), 3, "no refused write stored anything");
    drop(vault);

    let files = files_under(&dir);
    assert!(
        files.iter().any(|(p, _)| p.ends_with("sourcebox.db-wal")),
        "the WAL was scanned"
    );
    for (path, bytes) in files
        .iter()
        .chain(files_under(tmp.path()).iter().filter(|(p, _)| p == &backup))
    {
        assert_no_leak(CANARY, bytes, &path.display().to_string());
        assert_no_leak(CANARY_OAUTH, bytes, &path.display().to_string());
        // Invariant 7: a provider-looking env var never becomes a credential.
        assert_no_leak(
            b"env-should-never-be-used",
            bytes,
            &path.display().to_string(),
        );
    }
    for out in &outputs {
        for stream in [&out.stdout, &out.stderr] {
            assert_no_leak(CANARY, stream, "command output or log");
            assert_no_leak(CANARY_OAUTH, stream, "command output or log");
        }
    }
    assert!(
        outputs
            .iter()
            .any(|o| String::from_utf8_lossy(&o.stderr).contains("credential stored")),
        "trace logs were captured"
    );
    drop(keep_wal);

    // The backup restores into another data directory, and only there.
    ok(cli(&dir2, &["init"], b""), "init second");
    let import = || {
        let args = [
            "vault",
            "import",
            backup.to_str().expect("utf-8"),
            "--identity",
            identity.to_str().expect("utf-8"),
        ];
        cli(&dir2, &args, b"")
    };
    let out = ok(import(), "import");
    assert_no_leak(CANARY, &out.stdout, "import output");
    let restored = reopen(&dir2, None);
    assert_eq!(
        get(
            &restored,
            &restored.store().source("work").expect("work"),
            "github_token"
        ),
        CANARY
    );
    assert_eq!(
        restored
            .list(None)
            .expect("list")
            .iter()
            .filter(|m| m.provenance == sourcebox::vault::Provenance::Imported)
            .count(),
        3
    );
    drop(restored);
    // Importing again changes nothing: existing credentials are kept.
    let again = ok(import(), "import again");
    assert_eq!(
        String::from_utf8_lossy(&again.stdout)
            .matches("skipped")
            .count(),
        3
    );
    for (path, bytes) in files_under(&dir2) {
        assert_no_leak(CANARY, &bytes, &path.display().to_string());
    }
}

#[test]
fn missing_foreign_and_occupied_data_directories_are_refused_clearly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let missing = tmp.path().join("nope");
    fails_with(
        cli(&missing, &["credential", "list"], b""),
        "sourcebox init --data-dir",
        "missing dir",
    );
    fails_with(
        cli(&missing, &["audit", "verify"], b""),
        "no sourcebox data directory",
        "missing dir",
    );
    fails_with(
        cli(tmp.path(), &["source", "list"], b""),
        "is not a sourcebox data directory",
        "foreign dir",
    );
    std::fs::write(tmp.path().join("notes.txt"), b"mine").expect("write");
    fails_with(
        cli(tmp.path(), &["init"], b""),
        "is not empty",
        "init over a foreign dir",
    );
    assert_eq!(
        std::fs::read(tmp.path().join("notes.txt")).expect("read"),
        b"mine"
    );

    let dir = tmp.path().join("prod");
    fails_with(
        cli(&dir, &["init", "--production"], b""),
        "development only",
        "production with local wrapper",
    );
    assert!(!dir.exists(), "a refused init leaves nothing behind");

    fails_with(
        cli(&dir, &["init", "--key-wrapper", "passphrase"], b""),
        "--unlock-fd",
        "passphrase without a terminal",
    );
    assert!(!dir.exists());
}

#[test]
fn the_leak_scanner_finds_every_encoded_form() {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    for prefix in 0..3 {
        let mut embedded = b"xx".repeat(prefix);
        embedded.extend_from_slice(CANARY);
        embedded.extend_from_slice(b"tail");
        for encoded in [
            embedded.clone(),
            STANDARD.encode(&embedded).into_bytes(),
            URL_SAFE_NO_PAD.encode(&embedded).into_bytes(),
            hex::encode(&embedded).into_bytes(),
            hex::encode_upper(&embedded).into_bytes(),
        ] {
            let found =
                std::panic::catch_unwind(|| assert_no_leak(CANARY, &encoded, "probe")).is_err();
            assert!(
                found,
                "missed a form with prefix {prefix}: {}",
                String::from_utf8_lossy(&encoded)
            );
        }
    }
}

fn fnv(value: &str) -> String {
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("{hash:016x}")
}

#[test]
fn an_installed_connector_runs_each_source_with_only_its_own_credential() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let echo = env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO");
    ok(cli(&dir, &["init"], b""), "init");
    let review = fails_with(
        cli(&dir, &["connector", "install", echo], b""),
        "--yes",
        "install without approval",
    );
    let shown = String::from_utf8_lossy(&review.stdout);
    assert!(
        shown.contains("credential token (token, required)")
            && shown.contains("network hosts: the host of setup field 'url'"),
        "{shown}"
    );
    ok(
        cli(&dir, &["connector", "install", echo, "--yes"], b""),
        "install",
    );
    // Recorded as a catalog entry of the same shape as manifests/: the
    // installed bytes' digest and what the operator approved.
    let listed = ok(
        cli(&dir, &["connector", "list", "--json"], b""),
        "list --json",
    );
    let entries: Vec<sourcebox::catalog::CatalogEntry> =
        serde_json::from_slice(&listed.stdout).expect("catalog entries");
    let entry = entries
        .iter()
        .find(|e| e.id == "echo")
        .expect("echo listed");
    let bytes = std::fs::read(echo).expect("echo");
    assert_eq!(entry.digest, hex::encode(sha2::Sha256::digest(&bytes)));
    assert_eq!(entry.approved.credentials, ["token", "password", "session"]);
    assert!(entry.proven.is_empty(), "{entry:?}");
    fails_with(
        cli(&dir, &["connector", "install", echo, "--yes"], b""),
        "already installed",
        "second install",
    );
    fails_with(
        cli(
            &dir,
            &[
                "source",
                "add",
                "x",
                "--connector",
                "echo",
                "--set",
                "colour=red",
            ],
            b"",
        ),
        "has no setup field 'colour'",
        "unknown field",
    );
    fails_with(
        cli(&dir, &["source", "add", "x", "--connector", "nope"], b""),
        "no connector 'nope'",
        "unknown connector",
    );
    for (source, token) in [("work", "token-of-work"), ("home", "token-of-home")] {
        ok(
            cli(
                &dir,
                &[
                    "source",
                    "add",
                    source,
                    "--connector",
                    "echo",
                    "--set",
                    "count=2",
                    "--allow-unproven",
                ],
                b"",
            ),
            "add",
        );
        ok(
            cli(
                &dir,
                &["credential", "set", source, "token", "--class", "token"],
                token.as_bytes(),
            ),
            "set",
        );
    }
    ok(
        cli(
            &dir,
            &[
                "source",
                "add",
                "spare",
                "--connector",
                "echo",
                "--allow-unproven",
            ],
            b"",
        ),
        "add spare",
    );

    // GITHUB_TOKEN and AMAZON_PASSWORD are set in `cli`'s environment.
    for (source, token) in [("work", "token-of-work"), ("home", "token-of-home")] {
        let run = ok(cli(&dir, &["run", source], b""), "run");
        assert!(String::from_utf8_lossy(&run.stdout).contains("collected 2 records"));
        let out = ok(
            cli(&dir, &["records", source, "items", "--json"], b""),
            "records",
        );
        let records: Vec<serde_json::Value> =
            serde_json::from_slice(&out.stdout).expect("records json");
        assert_eq!(records.len(), 2);
        assert!(
            records.iter().all(|r| r["token_fingerprint"] == fnv(token)),
            "{source}: {records:?}"
        );
        assert_no_leak(token.as_bytes(), &run.stdout, "run output");
        assert_no_leak(token.as_bytes(), &run.stderr, "run log");
    }

    // No stored token: refused before any instance exists, nothing else used.
    fails_with(
        cli(&dir, &["run", "spare"], b""),
        "credentials_missing",
        "run without a token",
    );
    let store = sourcebox::store::Store::open(&dir).expect("open");
    let connector_reads: i64 = store
        .conn()
        .query_row(
            "SELECT count(*) FROM audit WHERE actor = 'connector' AND source = 'spare'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(
        connector_reads, 0,
        "no connector code ran for the refused source"
    );
    let spare_records: i64 = store
        .conn()
        .query_row("SELECT count(*) FROM records r JOIN sources s ON s.id = r.source_id WHERE s.name = 'spare'", [], |r| r.get(0))
        .expect("count");
    assert_eq!(spare_records, 0);
    drop(store);

    // A revoked token is its own typed failure, and every run is recorded.
    ok(
        cli(&dir, &["credential", "revoke", "home", "token"], b""),
        "revoke",
    );
    fails_with(
        cli(&dir, &["run", "home"], b""),
        "credential_revoked",
        "run with a revoked token",
    );
    let listed = ok(cli(&dir, &["runs", "--json"], b""), "runs");
    let runs: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).expect("runs json");
    let summary: Vec<(String, String, Option<String>)> = runs
        .iter()
        .map(|r| {
            (
                r["source"].as_str().unwrap_or("").to_owned(),
                r["state"].as_str().unwrap_or("").to_owned(),
                r["failure"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "home".to_owned(),
                "failed".to_owned(),
                Some("credential_revoked".to_owned())
            ),
            (
                "spare".to_owned(),
                "failed".to_owned(),
                Some("credentials_missing".to_owned())
            ),
            ("home".to_owned(), "succeeded".to_owned(), None),
            ("work".to_owned(), "succeeded".to_owned(), None),
        ]
    );
    assert!(runs.iter().all(|r| r["trigger"] == "manual"));

    // A stored component that was swapped never runs. While the code
    // compiled from the approved digest is on hand, that code runs and the
    // swapped file is not read; once it has to be compiled again, the
    // swapped file is refused.
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(std::fs::read(echo).expect("echo")));
    let component = dir.join("components").join(format!("{digest}.wasm"));
    let mut bytes = std::fs::read(&component).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&component, bytes).expect("tamper");
    ok(
        cli(&dir, &["run", "work"], b""),
        "run from the compiled copy",
    );
    std::fs::remove_dir_all(dir.join("cache")).expect("drop the compiled copies");
    fails_with(
        cli(&dir, &["run", "work"], b""),
        "does not match its digest",
        "tampered component",
    );
}

#[test]
fn guest_output_reaches_the_host_log_with_secrets_redacted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    ok(cli(&dir, &["init"], b""), "init");
    ok(
        cli(
            &dir,
            &[
                "connector",
                "install",
                env!("SOURCEBOX_COMPONENT_FIXTURE_HOSTILE"),
                "--yes",
            ],
            b"",
        ),
        "install",
    );
    ok(
        cli(
            &dir,
            &[
                "source",
                "add",
                "loud",
                "--connector",
                "hostile",
                "--allow-unproven",
                "--set",
                "attack=print",
            ],
            b"",
        ),
        "add",
    );
    ok(
        cli(
            &dir,
            &["credential", "set", "loud", "token", "--class", "token"],
            CANARY,
        ),
        "set",
    );
    let run = ok(cli(&dir, &["run", "loud"], b""), "run");
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(log.contains("stdout from the guest: [redacted]"), "{log}");
    assert!(log.contains("stderr from the guest: [redacted]"), "{log}");
    assert_no_leak(CANARY, &run.stderr, "host log");
    assert_no_leak(CANARY, &run.stdout, "run output");
}

/// Run limits are the operator's to set, per connector: past its records
/// limit a run of echo ends `resource_exhausted`, while a limit set for
/// another connector changes nothing for it; values out of bounds are
/// refused; `--reset` restores the defaults.
#[test]
fn run_limits_are_set_per_connector() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let echo = env!("SOURCEBOX_COMPONENT_FIXTURE_ECHO");
    ok(cli(&dir, &["init"], b""), "init");
    ok(
        cli(&dir, &["connector", "install", echo, "--yes"], b""),
        "install",
    );
    let add = [
        "source",
        "add",
        "w",
        "--connector",
        "echo",
        "--set",
        "count=3",
        "--allow-unproven",
    ];
    ok(cli(&dir, &add, b""), "add");
    ok(
        cli(&dir, &["credential", "set", "w", "token"], b"limits-token"),
        "token",
    );

    ok(
        cli(
            &dir,
            &["connector", "limits", "github", "--records", "1"],
            b"",
        ),
        "github limits",
    );
    let run = ok(cli(&dir, &["run", "w"], b""), "run under another's limit");
    assert!(String::from_utf8_lossy(&run.stdout).contains("collected 3 records"));

    ok(
        cli(
            &dir,
            &[
                "connector",
                "limits",
                "echo",
                "--records",
                "2",
                "--memory",
                "64MiB",
            ],
            b"",
        ),
        "echo limits",
    );
    let shown = ok(
        cli(&dir, &["connector", "limits", "echo", "--json"], b""),
        "show",
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("json");
    assert_eq!(
        shown["set"],
        serde_json::json!({"memory_bytes": 64 << 20, "records": 2})
    );
    assert_eq!(shown["effective"]["records"], 2);
    assert_eq!(shown["effective"]["time_secs"], 600, "a default kept");
    fails_with(
        cli(&dir, &["run", "w"], b""),
        "resource_exhausted",
        "a run past its records limit",
    );

    fails_with(
        cli(
            &dir,
            &["connector", "limits", "echo", "--memory", "1KiB"],
            b"",
        ),
        "between 1 MiB and 4 GiB",
        "too little memory",
    );
    fails_with(
        cli(
            &dir,
            &["connector", "limits", "echo", "--memory", "3XB"],
            b"",
        ),
        "unknown size unit",
        "a bad size",
    );
    fails_with(
        cli(
            &dir,
            &["connector", "limits", "nope", "--records", "5"],
            b"",
        ),
        "no connector 'nope'",
        "an unknown connector",
    );
    let kept = ok(
        cli(&dir, &["connector", "limits", "echo", "--json"], b""),
        "show after refusals",
    );
    let kept: serde_json::Value = serde_json::from_slice(&kept.stdout).expect("json");
    assert_eq!(kept["set"], shown["set"], "a refused change stores nothing");

    ok(
        cli(&dir, &["connector", "limits", "echo", "--reset"], b""),
        "reset",
    );
    ok(cli(&dir, &["run", "w"], b""), "run after reset");
}

/// Schedules from the command line, at the edges of their bounds: a
/// refused one says the bounds and leaves the stored schedule as it was.
#[test]
fn schedule_bounds_hold_at_their_edges_from_the_cli() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    ok(cli(&dir, &["init"], b""), "init");
    ok(cli(&dir, &["source", "add", "work"], b""), "add");
    let schedule = |args: &[&str]| {
        let mut all = vec!["source", "schedule", "work"];
        all.extend(args);
        cli(&dir, &all, b"")
    };
    ok(schedule(&["--every", "1h"]), "every 1h");
    for (every, accepted) in [
        ("59s", false),
        ("1m", true),
        ("365d", true),
        ("365d 1s", false),
        ("18446744073709551615s", false),
    ] {
        let out = schedule(&["--every", every]);
        if accepted {
            ok(out, every);
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(!out.status.success(), "{every} was accepted");
            assert!(
                stderr.contains("between 1m (60 seconds) and 365d"),
                "{every}: {stderr}"
            );
        }
    }
    for cron in ["* * * * * *", "0 0 30 2 *", "0 0 0 1 1 * 2020"] {
        fails_with(schedule(&["--cron", cron]), "nothing was stored", cron);
    }
    let listed = ok(cli(&dir, &["source", "list", "--json"], b""), "list");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("json");
    assert_eq!(
        listed[0]["schedule"]["every_secs"],
        365 * 24 * 3600,
        "{listed}"
    );
}

mod wrappers;

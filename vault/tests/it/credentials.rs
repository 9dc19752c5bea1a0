//! The vault against real SQLite files and real crypto: moved, tampered and
//! truncated rows, wrong keys, fail-closed audit, rotation and destruction.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use rusqlite::params;
use sourcebox_vault::store::Store;
use sourcebox_vault::vault::envelope::EnvelopeError;
use sourcebox_vault::vault::testing::{files_under, get, local_vault, reopen, set};
use sourcebox_vault::vault::{Actor, Keyring, Secret, VaultError, WrapperKind};

fn column(vault: &sourcebox_vault::vault::Vault, source: &str, name: &str, col: &str) -> Vec<u8> {
    vault
        .store()
        .conn()
        .query_row(
            &format!("SELECT c.{col} FROM credentials c JOIN sources s ON s.id = c.source_id WHERE s.name = ?1 AND c.name = ?2"),
            params![source, name],
            |r| r.get(0),
        )
        .expect("column")
}

fn put_column(
    vault: &sourcebox_vault::vault::Vault,
    source: &str,
    name: &str,
    col: &str,
    value: &[u8],
) {
    vault
        .store()
        .conn()
        .execute(
            &format!("UPDATE credentials SET {col} = ?3 WHERE name = ?2 AND source_id = (SELECT id FROM sources WHERE name = ?1)"),
            params![source, name, value],
        )
        .expect("update");
}

#[test]
fn a_row_moved_swapped_or_tampered_never_decrypts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = local_vault(tmp.path());
    let a = vault.store().add_source("a").expect("a");
    let b = vault.store().add_source("b").expect("b");
    set(&vault, &a, "token", b"value-of-a");
    set(&vault, &a, "other", b"other-of-a");
    set(&vault, &b, "token", b"value-of-b");

    let sealed = column(&vault, "a", "token", "sealed_value");
    let wrapped = column(&vault, "a", "token", "wrapped_key");

    // Each case edits the rows, expects a typed refusal, then restores them.
    type Edit = Box<dyn Fn(&sourcebox_vault::vault::Vault)>;
    let cases: Vec<(&str, Edit, &str, &str, EnvelopeError)> = vec![
        (
            "a's row copied onto b's",
            Box::new(|v| {
                put_column(
                    v,
                    "b",
                    "token",
                    "sealed_value",
                    &column(v, "a", "token", "sealed_value"),
                );
                put_column(
                    v,
                    "b",
                    "token",
                    "wrapped_key",
                    &column(v, "a", "token", "wrapped_key"),
                );
            }),
            "b",
            "token",
            EnvelopeError::Forged,
        ),
        (
            "a's token copied onto a's other name",
            Box::new(|v| {
                put_column(
                    v,
                    "a",
                    "other",
                    "sealed_value",
                    &column(v, "a", "token", "sealed_value"),
                );
                put_column(
                    v,
                    "a",
                    "other",
                    "wrapped_key",
                    &column(v, "a", "token", "wrapped_key"),
                );
            }),
            "a",
            "other",
            EnvelopeError::Forged,
        ),
        (
            "sealed values swapped between two names",
            Box::new(|v| {
                let t = column(v, "a", "token", "sealed_value");
                put_column(
                    v,
                    "a",
                    "token",
                    "sealed_value",
                    &column(v, "a", "other", "sealed_value"),
                );
                put_column(v, "a", "other", "sealed_value", &t);
            }),
            "a",
            "token",
            EnvelopeError::Forged,
        ),
        (
            "version number edited",
            Box::new(|v| {
                v.store().conn().execute("UPDATE credentials SET version = version + 1 WHERE name = 'token' AND source_id = (SELECT id FROM sources WHERE name = 'a')", []).expect("bump");
            }),
            "a",
            "token",
            EnvelopeError::Forged,
        ),
        (
            "one ciphertext bit flipped",
            Box::new(|v| {
                let mut s = column(v, "a", "token", "sealed_value");
                s[30] ^= 0x01;
                put_column(v, "a", "token", "sealed_value", &s);
            }),
            "a",
            "token",
            EnvelopeError::Forged,
        ),
        (
            "wrapped key bit flipped",
            Box::new(|v| {
                let mut w = column(v, "a", "token", "wrapped_key");
                w[10] ^= 0x80;
                put_column(v, "a", "token", "wrapped_key", &w);
            }),
            "a",
            "token",
            EnvelopeError::Forged,
        ),
        (
            "envelope truncated",
            Box::new(|v| {
                let s = column(v, "a", "token", "sealed_value");
                put_column(v, "a", "token", "sealed_value", &s[..12]);
            }),
            "a",
            "token",
            EnvelopeError::Truncated(12),
        ),
        (
            "envelope from an unknown future format",
            Box::new(|v| {
                let mut s = column(v, "a", "token", "sealed_value");
                s[0] = 2;
                put_column(v, "a", "token", "sealed_value", &s);
            }),
            "a",
            "token",
            EnvelopeError::UnknownVersion(2),
        ),
    ];
    for (what, edit, source, name, expected) in cases {
        let conn = vault.store().conn();
        conn.execute_batch("SAVEPOINT edit").expect("savepoint");
        edit(&vault);
        conn.execute_batch("RELEASE edit").expect("release");
        let source_ref = vault.store().source(source).expect("source");
        match vault.get(Actor::OWNER_CLI, &source_ref, name) {
            Err(VaultError::Unrecoverable { reason, .. }) => assert_eq!(reason, expected, "{what}"),
            other => panic!("{what}: expected Unrecoverable({expected:?}), got {other:?}"),
        }
        // Restore every credential by writing it again.
        set(&vault, &a, "token", b"value-of-a");
        set(&vault, &a, "other", b"other-of-a");
        set(&vault, &b, "token", b"value-of-b");
    }
    assert_eq!(get(&vault, &a, "token"), b"value-of-a");
    assert_eq!(get(&vault, &b, "token"), b"value-of-b");
    assert_ne!(
        sealed,
        column(&vault, "a", "token", "sealed_value"),
        "every write uses a fresh key and nonce"
    );
    assert_ne!(wrapped, column(&vault, "a", "token", "wrapped_key"));
}

#[test]
fn a_wrong_or_damaged_key_file_is_refused_before_any_data_is_read() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = local_vault(tmp.path());
    let a = vault.store().add_source("a").expect("a");
    set(&vault, &a, "token", b"value");
    drop(vault);
    let key_file = tmp.path().join("keys/kek-1.key");
    let original = std::fs::read(&key_file).expect("key");

    for (what, bytes) in [
        ("another key", vec![0x42; 32]),
        ("truncated", original[..16].to_vec()),
    ] {
        std::fs::write(&key_file, &bytes).expect("write key");
        let store = Store::open(tmp.path()).expect("open");
        let audit_rows: i64 = store
            .conn()
            .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
            .expect("count");
        match Keyring::unlock(&store, None) {
            Err(VaultError::WrongKeyFile) => {}
            other => panic!("{what}: expected WrongKeyFile, got {other:?}"),
        }
        let after: i64 = store
            .conn()
            .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
            .expect("count");
        assert_eq!(audit_rows, after, "{what}: nothing was read");
    }
    std::fs::write(&key_file, &original).expect("restore");
    let vault = reopen(tmp.path(), None);
    assert_eq!(
        get(&vault, &vault.store().source("a").expect("a"), "token"),
        b"value"
    );
}

#[test]
fn a_read_whose_audit_row_cannot_be_written_fails() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = local_vault(tmp.path());
    let a = vault.store().add_source("a").expect("a");
    set(&vault, &a, "token", b"first");
    vault
        .store()
        .conn()
        .execute_batch("CREATE TRIGGER audit_down BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit unavailable'); END")
        .expect("trigger");

    assert!(matches!(
        vault.get(Actor::OWNER_CLI, &a, "token"),
        Err(VaultError::AuditFailed(_))
    ));
    let write = vault.set(
        Actor::OWNER_CLI,
        &a,
        sourcebox_vault::vault::NewCredential {
            name: "token",
            class: sourcebox_vault::vault::CredentialClass::Token,
            provenance: sourcebox_vault::vault::Provenance::Owner,
            value: Secret::from_slice(b"second"),
            expires_at: None,
        },
    );
    assert!(matches!(write, Err(VaultError::AuditFailed(_))));
    assert!(matches!(
        vault.revoke(Actor::OWNER_CLI, &a, "token"),
        Err(VaultError::AuditFailed(_))
    ));

    vault
        .store()
        .conn()
        .execute_batch("DROP TRIGGER audit_down")
        .expect("drop");
    assert_eq!(
        get(&vault, &a, "token"),
        b"first",
        "the unaudited write and revoke did not happen"
    );
    assert_eq!(vault.list(Some(&a)).expect("list")[0].version, 1);
}

#[test]
fn rotation_keeps_reads_working_and_a_crash_midway_loses_nothing() {
    const N: usize = 600;
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = local_vault(tmp.path());
    let a = vault.store().add_source("a").expect("a");
    for i in 0..N {
        set(
            &vault,
            &a,
            &format!("t{i}"),
            format!("value-{i}").as_bytes(),
        );
    }

    // A reader in its own connection and keyring, loaded before the rotation.
    let reader_vault = reopen(tmp.path(), None);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(2));
    let reader = {
        let (stop, started) = (Arc::clone(&stop), Arc::clone(&started));
        std::thread::spawn(move || {
            let a = reader_vault.store().source("a").expect("a");
            started.wait();
            let mut reads = 0usize;
            while !stop.load(Ordering::Relaxed) || reads < N {
                let i = reads % N;
                assert_eq!(
                    get(&reader_vault, &a, &format!("t{i}")),
                    format!("value-{i}").as_bytes()
                );
                reads += 1;
                // A read is an audited write transaction, and SQLite's busy
                // handler is not fair: a reader that re-takes the write
                // lock the moment it commits can starve the rotation's
                // batches past their busy timeout. Runs read a credential
                // now and then, not back to back.
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            reads
        })
    };
    started.wait();
    let rotation = vault.rotate_kek(Actor::OWNER_CLI, 25).expect("rotate");
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().expect("reader") >= N);
    assert_eq!((rotation.version, rotation.rewrapped), (2, N as u64));
    assert!(
        !tmp.path().join("keys/kek-1.key").exists(),
        "the retired KEK is destroyed"
    );

    // Crash midway: the update of row 300 fails, batches before it committed.
    vault
        .store()
        .conn()
        .execute_batch("CREATE TRIGGER crash BEFORE UPDATE OF wrapped_key ON credentials WHEN NEW.id > 300 BEGIN SELECT RAISE(ABORT, 'crash'); END")
        .expect("trigger");
    assert!(vault.rotate_kek(Actor::OWNER_CLI, 50).is_err());
    let per_version: Vec<(i64, i64)> = {
        let mut stmt = vault
            .store()
            .conn()
            .prepare("SELECT kek_version, count(*) FROM credentials GROUP BY kek_version")
            .expect("q");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("collect")
    };
    assert_eq!(
        per_version,
        vec![(2, (N - 300) as i64), (3, 300)],
        "half under the old KEK, half under the new"
    );
    let after_crash = reopen(tmp.path(), None);
    for i in 0..N {
        assert_eq!(
            get(&after_crash, &a, &format!("t{i}")),
            format!("value-{i}").as_bytes()
        );
    }

    // Running the rotation again finishes the job.
    vault
        .store()
        .conn()
        .execute_batch("DROP TRIGGER crash")
        .expect("drop");
    let rotation = vault
        .rotate_kek(Actor::OWNER_CLI, 50)
        .expect("rotate again");
    assert_eq!(rotation.version, 4);
    let keys: Vec<_> = files_under(&tmp.path().join("keys"))
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(keys, vec![tmp.path().join("keys/kek-4.key")]);
    let fresh = reopen(tmp.path(), None);
    for i in 0..N {
        assert_eq!(
            get(&fresh, &a, &format!("t{i}")),
            format!("value-{i}").as_bytes()
        );
    }
    assert!(matches!(
        fresh.verify_audit().expect("verify"),
        sourcebox_vault::vault::audit::ChainCheck::Intact { .. }
    ));
}

#[test]
fn revoking_and_deleting_destroy_the_data_keys() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = local_vault(tmp.path());
    let a = vault.store().add_source("a").expect("a");
    let b = vault.store().add_source("b").expect("b");
    set(&vault, &a, "token", b"revoke-me");
    set(&vault, &b, "token", b"delete-me");
    let wrapped_a = column(&vault, "a", "token", "wrapped_key");
    let wrapped_b = column(&vault, "b", "token", "wrapped_key");
    // Keep the WAL alive (another open connection), as in a running server.
    let _other = Store::open(tmp.path()).expect("second connection");

    vault.revoke(Actor::OWNER_CLI, &a, "token").expect("revoke");
    assert!(matches!(
        vault.get(Actor::OWNER_CLI, &a, "token"),
        Err(VaultError::Revoked { .. })
    ));
    assert_eq!(
        vault.missing(&a, &["token"]).expect("missing"),
        vec!["token".to_owned()]
    );
    assert!(vault.list(Some(&a)).expect("list")[0].revoked_at.is_some());

    assert_eq!(
        vault.delete_source(Actor::OWNER_CLI, &b).expect("delete"),
        1
    );
    assert!(vault.store().source("b").is_err());

    for (path, bytes) in files_under(tmp.path()) {
        for (what, key) in [("revoked", &wrapped_a), ("deleted", &wrapped_b)] {
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_slice()),
                "the {what} wrapped key survives in {}",
                path.display()
            );
        }
    }
}

#[test]
fn presence_is_checked_without_decrypting_or_auditing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = local_vault(tmp.path());
    let a = vault.store().add_source("a").expect("a");
    let b = vault.store().add_source("b").expect("b");
    set(&vault, &a, "token", b"value");
    let rows = |v: &sourcebox_vault::vault::Vault| -> i64 {
        v.store()
            .conn()
            .query_row("SELECT count(*) FROM audit", [], |r| r.get(0))
            .expect("count")
    };
    let before = rows(&vault);
    // Corrupt the ciphertext: presence must not notice, because it never decrypts.
    let mut sealed = column(&vault, "a", "token", "sealed_value");
    sealed[5] ^= 1;
    put_column(&vault, "a", "token", "sealed_value", &sealed);

    assert!(vault.missing(&a, &["token"]).expect("missing").is_empty());
    assert_eq!(
        vault.missing(&a, &["token", "password"]).expect("missing"),
        vec!["password".to_owned()]
    );
    assert_eq!(
        vault.missing(&b, &["token"]).expect("missing"),
        vec!["token".to_owned()],
        "a's credential never satisfies b"
    );
    assert_eq!(rows(&vault), before);
}

#[test]
fn a_wrong_passphrase_is_refused_without_touching_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let settings = Keyring::init_settings(WrapperKind::Passphrase, true).expect("settings");
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let store = Store::init(tmp.path(), &pairs).expect("init");
    assert!(matches!(
        Keyring::create_first(&store, None),
        Err(VaultError::UnlockSecretRequired(WrapperKind::Passphrase))
    ));
    let keyring = Keyring::create_first(&store, Some(Secret::from_slice(b"correct horse battery")))
        .expect("keyring");
    let vault = sourcebox_vault::vault::Vault::new(store, keyring);
    let a = vault.store().add_source("a").expect("a");
    set(&vault, &a, "token", b"value");
    drop(vault);

    let before = files_under(tmp.path());
    let store = Store::open(tmp.path()).expect("open");
    assert!(matches!(
        Keyring::unlock(&store, Some(Secret::from_slice(b"wrong horse battery"))),
        Err(VaultError::WrongUnlockSecret(WrapperKind::Passphrase))
    ));
    drop(store);
    assert_eq!(
        files_under(tmp.path()),
        before,
        "a wrong passphrase changes no byte on disk"
    );

    let vault = reopen(tmp.path(), Some(b"correct horse battery"));
    assert_eq!(
        get(&vault, &vault.store().source("a").expect("a"), "token"),
        b"value"
    );
}

#[test]
fn production_mode_refuses_the_local_wrapper() {
    assert!(matches!(
        Keyring::init_settings(WrapperKind::Local, true),
        Err(VaultError::LocalWrapperInProduction)
    ));
    // A development directory edited into production mode is refused too.
    let tmp = tempfile::tempdir().expect("tempdir");
    drop(local_vault(tmp.path()));
    let store = Store::open(tmp.path()).expect("open");
    store
        .conn()
        .execute("UPDATE meta SET value = '1' WHERE key = 'production'", [])
        .expect("edit");
    assert!(matches!(
        Keyring::unlock(&store, None),
        Err(VaultError::LocalWrapperInProduction)
    ));
}

/// An answer the owner gave while its run waits is re-wrapped when the KEK
/// rotates, and after it opens for its own source and interaction only,
/// once; the old KEK's key file is gone.
#[test]
fn a_pending_answer_survives_a_kek_rotation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = local_vault(tmp.path());
    let a = vault.store().add_source("a").expect("a");
    let b = vault.store().add_source("b").expect("b");
    vault
        .store()
        .conn()
        .execute_batch(&format!(
            "INSERT INTO runs (id, source_id, trigger, state, started_at)
             VALUES ('r1', {a}, 'manual', 'waiting_for_owner', 0);
             INSERT INTO interactions (id, run_id, source_id, kind, prompt, state, created_at, deadline)
             VALUES ('i1', 'r1', {a}, 'otp', 'code?', 'pending', 0, 9223372036854775807);",
            a = a.source_id
        ))
        .expect("a run waiting for the owner");
    vault
        .answer_interaction(Actor::OWNER_CLI, &a, "i1", &Secret::from_slice(b"424242"))
        .expect("answer");
    let rotation = vault.rotate_kek(Actor::OWNER_CLI, 50).expect("rotate");
    let keys: Vec<_> = files_under(&tmp.path().join("keys"))
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        keys,
        vec![
            tmp.path()
                .join(format!("keys/kek-{}.key", rotation.version))
        ]
    );
    let reopened = reopen(tmp.path(), None);
    assert!(
        reopened
            .take_answer(Actor::OWNER_CLI, &b, "i1")
            .expect("b")
            .is_none(),
        "another source never takes the answer"
    );
    let answer = reopened
        .take_answer(Actor::OWNER_CLI, &a, "i1")
        .expect("take")
        .expect("the answer, re-wrapped");
    assert_eq!(answer.expose_secret(), b"424242");
    assert!(
        reopened
            .take_answer(Actor::OWNER_CLI, &a, "i1")
            .expect("again")
            .is_none(),
        "an answer is taken once"
    );
}

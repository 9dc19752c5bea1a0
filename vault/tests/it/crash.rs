//! kill -9 of a process writing credentials, at random points, a few hundred
//! times: every acknowledged write is readable afterwards and nothing is
//! torn.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sourcebox_vault::vault::audit::ChainCheck;
use sourcebox_vault::vault::testing::{get, local_vault, reopen, set};

const DIR_ENV: &str = "SOURCEBOX_CRASH_WRITER_DIR";
const START_ENV: &str = "SOURCEBOX_CRASH_WRITER_START";
const NAMES: u64 = 40;
const ITERATIONS: usize = 300;

/// Write number `i`: its length varies so a torn write would show.
fn value_for(i: u64) -> Vec<u8> {
    format!("value-{i}-")
        .repeat(1 + (i % 7) as usize)
        .into_bytes()
}

fn number_of(value: &[u8]) -> u64 {
    let text = std::str::from_utf8(value).expect("utf-8 value");
    text.strip_prefix("value-")
        .and_then(|t| t.split('-').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a written value: {text}"))
}

/// The writer process that `acknowledged_writes_survive_kill_9` starts and
/// kills; it only runs when that test starts it.
#[test]
#[ignore = "started as a child process by acknowledged_writes_survive_kill_9"]
fn crash_writer_child() {
    let dir = std::env::var(DIR_ENV).expect("started by the crash test");
    let start: u64 = std::env::var(START_ENV)
        .expect("start")
        .parse()
        .expect("number");
    let vault = reopen(Path::new(&dir), None);
    let source = vault.store().source("a").expect("source");
    let mut out = std::io::stdout().lock();
    for i in start.. {
        let name = format!("c{}", i % NAMES);
        set(&vault, &source, &name, &value_for(i));
        writeln!(out, "ack {name} {i}")
            .and_then(|()| out.flush())
            .expect("ack");
    }
}

fn random_below(n: u64) -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random");
    u64::from_le_bytes(bytes) % n
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let vault = local_vault(tmp.path());
    vault.store().add_source("a").expect("source");
    drop(vault);

    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut next = 0u64;
    let mut total_acks = 0usize;
    let mut killed_mid_stream = 0usize;
    for iteration in 0..ITERATIONS {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "crash::crash_writer_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, tmp.path())
            .env(START_ENV, next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        let stdout = child.stdout.take().expect("stdout");
        std::thread::sleep(Duration::from_micros(2_000 + random_below(40_000)));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");

        let mut acks_this_time = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("line");
            let Some(rest) = line.strip_prefix("ack ") else {
                continue;
            };
            let (name, i) = rest.split_once(' ').expect("ack format");
            let i: u64 = i.parse().expect("ack number");
            acked.insert(name.to_owned(), i);
            next = next.max(i + 2); // i + 1 may have committed unacknowledged
            acks_this_time += 1;
        }
        total_acks += acks_this_time;
        killed_mid_stream += usize::from(acks_this_time > 0);

        // Every acknowledged write (or a later one) is there, whole.
        let vault = reopen(tmp.path(), None);
        let source = vault.store().source("a").expect("source");
        for (name, i) in &acked {
            let stored = get(&vault, &source, name);
            let found = number_of(&stored);
            assert!(
                found >= *i,
                "iteration {iteration}: {name} went back from write {i} to {found}"
            );
            assert_eq!(
                stored,
                value_for(found),
                "iteration {iteration}: {name} is torn"
            );
        }
        if iteration % 50 == 49 {
            let check: String = vault
                .store()
                .conn()
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .expect("integrity");
            assert_eq!(check, "ok");
        }
    }
    let vault = reopen(tmp.path(), None);
    assert!(matches!(
        vault.verify_audit().expect("verify"),
        ChainCheck::Intact { .. }
    ));
    assert!(
        total_acks >= ITERATIONS,
        "too few writes were acknowledged ({total_acks}) to mean anything"
    );
    assert!(
        killed_mid_stream >= ITERATIONS / 2,
        "most kills should land while writing ({killed_mid_stream})"
    );
}

//! Records and checkpoints: upserts by primary key, update times, order, batches.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_upsert_by_primary_key_and_checkpoints_carry_over() {
    let w = world().await;
    w.collect(&w.echo, "a", &[("count", "3")], Limits::default())
        .await
        .expect("first");
    assert_eq!(
        w.records("a")[0]["previous_checkpoint"],
        serde_json::Value::Null
    );
    w.collect(&w.echo, "a", &[("count", "3")], Limits::default())
        .await
        .expect("second");
    let records = w.records("a");
    assert_eq!(records.len(), 3, "same keys upsert, not duplicate");
    assert!(
        records
            .iter()
            .all(|r| r["previous_checkpoint"] == "emitted-3")
    );
}

/// A record emitted again with the same data is left as it was: its
/// update time and run stay those of the run that last changed it, so a
/// client reading with `updated_since` or paging on by cursor is not sent
/// it again. A record whose data changed moves to a new update time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_emitted_unchanged_keeps_its_update_time_and_run() {
    let w = world().await;
    let run = |run_id: &str, count: &str| {
        let mut binding = w.binding("a", &[("count", count)], Limits::default());
        binding.run_id = run_id.into();
        w.runtime.run(&w.echo, binding, Call::Collect(vec![]))
    };
    let versions = || -> Vec<(String, String, i64)> {
        let vault = w.vault.lock().expect("lock");
        let mut stmt = vault
            .store()
            .conn()
            .prepare(
                "SELECT key, run_id, updated_at FROM records WHERE stream = 'items' ORDER BY key",
            )
            .expect("query");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("versions")
    };
    // The echo's records carry the checkpoint the run began from: the
    // second run changes every record, the third changes none of the
    // three and adds a fourth.
    run("r1", "3").await.expect("first");
    let first = versions();
    run("r2", "3").await.expect("second");
    let second = versions();
    assert_eq!(second.len(), 3);
    for ((key, run_id, at), (_, _, before)) in second.iter().zip(&first) {
        assert_eq!(run_id, "r2", "{key} changed");
        assert!(
            at > before,
            "{key} changed, so it moved: {at} after {before}"
        );
    }
    run("r3", "4").await.expect("third");
    let third = versions();
    assert_eq!(third.len(), 4);
    assert_eq!(
        third[..3],
        second[..],
        "unchanged records are left as they were"
    );
    assert_eq!(third[3].1, "r3", "the new record is the third run's");
    assert!(third[3].2 > second[2].2);
}

/// A run's records are stamped after every record already in their
/// stream, even when the clock is behind the newest one (a clock set
/// back, or two batches in one millisecond): a client that paged to the
/// end of the stream by cursor sees them on its next page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_writes_after_every_record_already_in_its_stream() {
    let w = world().await;
    w.collect(&w.echo, "a", &[("count", "3")], Limits::default())
        .await
        .expect("first");
    let source = w.source("a").source_id;
    let (stream, ahead): (String, i64) = {
        let vault = w.vault.lock().expect("lock");
        let conn = vault.store().conn();
        // As if the first run had written under a clock an hour ahead.
        conn.execute(
            "UPDATE records SET updated_at = updated_at + 3600000 WHERE source_id = ?1",
            [source],
        )
        .expect("move the clock");
        conn.query_row(
            "SELECT stream, MAX(updated_at) FROM records WHERE source_id = ?1 GROUP BY stream",
            [source],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("one stream")
    };
    w.collect(&w.echo, "a", &[("count", "4")], Limits::default())
        .await
        .expect("second");
    let vault = w.vault.lock().expect("lock");
    let stamps: Vec<i64> = vault
        .store()
        .conn()
        .prepare("SELECT updated_at FROM records WHERE source_id = ?1 AND stream = ?2")
        .expect("query")
        .query_map(rusqlite::params![source, stream], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("stamps");
    assert_eq!(stamps.len(), 4, "{stamps:?}");
    assert!(
        stamps.iter().all(|at| *at > ahead),
        "the second run's records come after {ahead}: {stamps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_upserts_in_order_and_stops_at_the_first_refused_record() {
    let w = world().await;
    // One batch stores what single emits store.
    w.collect(&w.echo, "a", &[("count", "5")], Limits::default())
        .await
        .expect("one by one");
    let single = w.records("a");
    w.collect(
        &w.echo,
        "a",
        &[("count", "5"), ("batch", "yes")],
        Limits::default(),
    )
    .await
    .expect("batched");
    let batched = w.records("a");
    assert_eq!(batched.len(), 5);
    for (one, batch) in single.iter().zip(&batched) {
        assert_eq!(one["id"], batch["id"]);
        assert_eq!(one["token_fingerprint"], batch["token_fingerprint"]);
    }
    // The third record lacks its key: the two before it are kept, it and
    // the ones after it are not, and the connector is told which it was.
    w.collect(
        &w.echo,
        "b",
        &[("count", "5"), ("batch", "broken")],
        Limits::default(),
    )
    .await
    .expect("run");
    let stored = w.records("b");
    let ids: Vec<_> = stored.iter().filter_map(|r| r["id"].as_u64()).collect();
    assert_eq!(ids, [0, 1], "{stored:?}");
    assert!(
        stored
            .iter()
            .any(|r| r["kind"] == "batch" && r["index"] == 2 && r["error"] == "invalid-record"),
        "{stored:?}"
    );
    // A batch counts against the record limit record by record.
    let two = Limits {
        records: 2,
        ..Limits::default()
    };
    assert_eq!(
        w.collect(&w.echo, "a", &[("count", "5"), ("batch", "yes")], two)
            .await
            .map(|_| ()),
        Err(RunFailure::ResourceExhausted(Exhausted::Records))
    );
}

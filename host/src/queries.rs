//! The host's own queries over the store's schema: each searches its
//! index, and each still reads what older schemas stored once upgraded.

use rusqlite::Connection;

use crate::store::{DB_FILE, Store, migrations};

/// The reads behind every client page and setup view search their own
/// indexes: a page is one range of the records table (no lookup per
/// record), and the view's unfinished-run and pending-question lookups
/// build no temporary table and sort nothing.
#[test]
fn the_hot_reads_search_their_indexes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::init(&tmp.path().join("data"), &[]).expect("init");
    let plan = |sql: &str| -> Vec<String> {
        let mut stmt = store
            .conn()
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        let mut rows = stmt.raw_query();
        let mut plan = Vec::new();
        while let Some(row) = rows.next().expect("plan") {
            plan.push(row.get::<_, String>(3).expect("detail"));
        }
        plan
    };
    assert_eq!(
        plan(crate::api::PAGE_FROM),
        ["SEARCH records USING PRIMARY KEY (source_id=? AND stream=? AND updated_at>?)"]
    );
    assert_eq!(
        plan(crate::api::PAGE_AFTER),
        ["SEARCH records USING PRIMARY KEY (source_id=? AND stream=? AND (updated_at,key)>(?,?))"]
    );
    assert_eq!(
        plan(crate::runtime::LAST_UPDATE),
        ["SEARCH records USING PRIMARY KEY (source_id=? AND stream=?)"]
    );
    assert_eq!(
        plan(crate::runs::scheduler::UNFINISHED_RUN),
        ["SEARCH runs USING INDEX runs_active (source_id=?)"]
    );
    assert_eq!(
        plan(crate::setup::FACTS),
        [
            "SEARCH s USING INTEGER PRIMARY KEY (rowid=?)",
            "SEARCH i USING INTEGER PRIMARY KEY (rowid=?) LEFT-JOIN",
            "CORRELATED SCALAR SUBQUERY 4",
            "SEARCH interactions USING COVERING INDEX interactions_pending (source_id=?)",
            "CORRELATED SCALAR SUBQUERY 1",
            "SEARCH records USING COVERING INDEX records_by_key (source_id=?)",
            "CORRELATED SCALAR SUBQUERY 2",
            "SEARCH runs USING INDEX runs_active (source_id=?)",
            "CORRELATED SCALAR SUBQUERY 3",
            "SEARCH d USING INTEGER PRIMARY KEY (rowid<?)"
        ]
    );
}

/// A database at schema `version` with one source, `records` (SQL
/// value rows for the records table) inserted, then upgraded to the
/// latest schema.
fn upgraded_from(version: i64, records: &str) -> (tempfile::TempDir, Connection) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut conn = Connection::open(tmp.path().join(DB_FILE)).expect("open");
    conn.pragma_update(None, "foreign_keys", true)
        .expect("foreign keys, as every store connection has them");
    migrations::migrate_to(&mut conn, version).expect("older schema");
    conn.execute_batch(&format!(
        "INSERT INTO owners (name, created_at) VALUES ('o', 0);
         INSERT INTO sources (owner_id, name, created_at) VALUES (1, 's', 0);
         INSERT INTO records (source_id, stream, key, data, run_id, created_at, updated_at)
         VALUES {records};"
    ))
    .expect("records at the older schema");
    migrations::migrate(&mut conn).expect("upgrade");
    (tmp, conn)
}

/// Records stored before the table was kept in page order are all
/// there after the upgrade, in page order, and still upserted by key.
#[test]
fn records_survive_the_move_to_page_order() {
    let (_tmp, conn) = upgraded_from(
        11,
        r#"(1, 'items', '[2]', '{"id":2}', 'r1', 5, 30),
               (1, 'items', '[1]', '{"id":1}', 'r1', 5, 20),
               (1, 'other', '[1]', '{"id":9}', 'r1', 5, 10)"#,
    );
    let page = |conn: &Connection| -> Vec<(String, i64, String)> {
        conn.prepare(crate::api::PAGE_FROM)
            .expect("page")
            .query_map(rusqlite::params![1, "items", i64::MIN, 10], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    assert_eq!(
        page(&conn),
        [
            ("[1]".to_owned(), 20, r#"{"id":1}"#.to_owned()),
            ("[2]".to_owned(), 30, r#"{"id":2}"#.to_owned())
        ]
    );
    // A later update moves the record to the end; one in the same
    // millisecond replaces it in place. Either way one row per key.
    let upsert = |key: &str, data: &str, at: i64| {
        conn.execute(
            crate::runtime::UPSERT_RECORD,
            rusqlite::params![1, "items", key, data, "r2", at],
        )
        .expect("upsert");
    };
    upsert("[1]", r#"{"id":1,"v":2}"#, 40);
    upsert("[1]", r#"{"id":1,"v":3}"#, 40);
    assert_eq!(
        page(&conn),
        [
            ("[2]".to_owned(), 30, r#"{"id":2}"#.to_owned()),
            ("[1]".to_owned(), 40, r#"{"id":1,"v":3}"#.to_owned())
        ]
    );
    let (rows, created): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), MIN(created_at) FROM records WHERE key = '[1]'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("count");
    assert_eq!(
        (rows, created),
        (2, 5),
        "one row per (stream, key), created_at kept"
    );
}

/// The records table holds only JSON text: SQLite refuses a key or
/// data that is not JSON, on insert and on update, and leaves what is
/// stored as it was. Rows stored before the check whose key or data is
/// not JSON are kept, as JSON strings of their text.
#[test]
fn records_hold_only_json() {
    let (_tmp, conn) = upgraded_from(
        13,
        r#"(1, 'items', '[1]', '{"id":1}', 'r1', 5, 10),
               (1, 'items', 'k"2', '{"id":2}', 'r1', 5, 20),
               (1, 'items', '[3]', '{"id":3', 'r1', 5, 30)"#,
    );
    let rows = |conn: &Connection| -> Vec<(String, String)> {
        conn.prepare("SELECT key, data FROM records ORDER BY updated_at")
            .expect("select")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let kept = vec![
        ("[1]".to_owned(), r#"{"id":1}"#.to_owned()),
        (r#""k\"2""#.to_owned(), r#"{"id":2}"#.to_owned()),
        ("[3]".to_owned(), r#""{\"id\":3""#.to_owned()),
    ];
    assert_eq!(rows(&conn), kept);
    for (key, data) in [("[1]", "{truncated"), ("not json", "{}"), ("[4]", "")] {
        let refused = conn
            .execute(
                crate::runtime::UPSERT_RECORD,
                rusqlite::params![1, "items", key, data, "r2", 40],
            )
            .expect_err("not JSON");
        assert!(
            refused.to_string().contains("CHECK constraint failed"),
            "{refused}"
        );
    }
    assert_eq!(rows(&conn), kept);
}

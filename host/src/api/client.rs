//! The client read surface: what a client token grants, and pages of a stream's records.

use std::borrow::Cow;

use axum::Json;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::auth::{Client, ClientReads};
use super::error::{ApiError, ErrorBody};
use super::extract::{Params, Path, SourceName, StreamName};
use super::state::{PAGE_DEFAULT, PAGE_MAX};

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Granted {
    source: String,
    streams: Vec<String>,
}

#[utoipa::path(get, path = "/v1/sources", tag = "client", security(("client" = [])), responses((status = 200, description = "The source and streams this token grants", body = Vec<Granted>), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn client_sources(Client(grant): Client) -> Result<Response, ApiError> {
    Ok(Json(vec![Granted {
        source: grant.source,
        streams: grant.streams,
    }])
    .into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct RecordsQuery {
    /// Records per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only records changed at or after this time (ms since the Unix
    /// epoch). A record a run emitted again unchanged keeps its time.
    updated_since: Option<i64>,
}

/// The shape of a page, for the OpenAPI document: `read_page` writes
/// the body itself, and the tests read it back into these types.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "never built: read_page writes the body")
)]
pub(super) mod page_shape {
    #[cfg(test)]
    use serde::Deserialize;

    /// A record as a page sends it.
    #[derive(utoipa::ToSchema)]
    #[cfg_attr(test, derive(Deserialize), serde(deny_unknown_fields))]
    pub(super) struct Record {
        /// The record's primary key, as the connector emitted it.
        #[schema(value_type = Object)]
        pub(super) key: serde_json::Value,
        /// When a run last changed the record (ms since the Unix epoch).
        pub(super) updated_at: i64,
        /// The record, as the connector emitted it.
        #[schema(value_type = Object)]
        pub(super) data: serde_json::Value,
    }

    /// A page of a stream's records, oldest update first, with the cursor
    /// of the next page when there is one.
    #[derive(utoipa::ToSchema)]
    #[cfg_attr(test, derive(Deserialize), serde(deny_unknown_fields))]
    pub(super) struct Page {
        pub(super) records: Vec<Record>,
        pub(super) next_cursor: Option<String>,
    }
}

use page_shape::Page;

pub(super) fn encode_cursor(updated_at: i64, key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{updated_at}:{key}"))
}

pub(super) fn decode_cursor(cursor: &str) -> Option<(i64, String)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (at, key) = text.split_once(':')?;
    Some((at.parse().ok()?, key.to_owned()))
}

/// A page of a stream from an update time on: one range of the records
/// table, which is kept in this order.
pub(crate) const PAGE_FROM: &str = "SELECT key, updated_at, data FROM records
     WHERE source_id = ?1 AND stream = ?2 AND updated_at >= ?3
     ORDER BY updated_at, key LIMIT ?4";

/// A page of a stream after a cursor: the same range, from the cursor on.
pub(crate) const PAGE_AFTER: &str = "SELECT key, updated_at, data FROM records
     WHERE source_id = ?1 AND stream = ?2 AND (updated_at, key) > (?3, ?4)
     ORDER BY updated_at, key LIMIT ?5";

/// The body of a [`Page`] of up to `limit` records of the stream, updated
/// at or after `since` and after the cursor position `after`, with the
/// cursor of the next page if there is one. One bound is always the
/// tighter and implies the other (SQLite seeks on one lower bound only:
/// with both in one statement, a page deep into a stream read every record
/// before it).
///
/// The body is written as the rows are read, each record's key and data
/// as stored: the records table holds only JSON text (SQLite checks every
/// write, migration 14), so they are not parsed again on the way out.
pub(super) fn read_page(
    conn: &rusqlite::Connection,
    source_id: i64,
    stream: &str,
    since: Option<i64>,
    after: Option<(i64, String)>,
    limit: u32,
) -> rusqlite::Result<Vec<u8>> {
    let ahead = i64::from(limit) + 1;
    let mut stmt;
    let mut rows = match after {
        // Every record after the cursor was updated at or after it.
        Some((at, key)) if since.is_none_or(|since| at >= since) => {
            stmt = conn.prepare_cached(PAGE_AFTER)?;
            stmt.query(params![source_id, stream, at, key, ahead])?
        }
        // Every record updated at or after `since` is after the cursor.
        _ => {
            stmt = conn.prepare_cached(PAGE_FROM)?;
            stmt.query(params![source_id, stream, since.unwrap_or(i64::MIN), ahead])?
        }
    };
    // Stored text is UTF-8 (the runtime writes Rust strings); anything
    // else written behind its back goes out with replacement characters,
    // still JSON. (`from_utf8` first: it checks ASCII a word at a time,
    // `from_utf8_lossy` a byte at a time, which was a fifth of a page's
    // CPU.)
    fn text<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Cow<'r, str>> {
        let bytes = row.get_ref(i)?.as_bytes()?;
        Ok(match std::str::from_utf8(bytes) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(bytes),
        })
    }
    let mut body = Vec::with_capacity(320 * limit.min(PAGE_DEFAULT) as usize + 64);
    body.extend_from_slice(br#"{"records":["#);
    let mut written = 0;
    let mut last_key = 0..0;
    let mut last_at = 0;
    let mut next_cursor = None;
    while let Some(row) = rows.next()? {
        // The row after a full page says there is a next one.
        if written == limit {
            let key = std::str::from_utf8(&body[last_key]).expect("written from a str");
            next_cursor = Some(encode_cursor(last_at, key));
            break;
        }
        if written > 0 {
            body.push(b',');
        }
        body.extend_from_slice(br#"{"key":"#);
        let key = text(row, 0)?;
        last_key = body.len()..body.len() + key.len();
        body.extend_from_slice(key.as_bytes());
        last_at = row.get(1)?;
        body.extend_from_slice(br#","updated_at":"#);
        body.extend_from_slice(itoa::Buffer::new().format(last_at).as_bytes());
        body.extend_from_slice(br#","data":"#);
        body.extend_from_slice(text(row, 2)?.as_bytes());
        body.push(b'}');
        written += 1;
    }
    body.extend_from_slice(br#"],"next_cursor":"#);
    serde_json::to_writer(&mut body, &next_cursor).expect("a string serializes");
    body.push(b'}');
    Ok(body)
}

#[utoipa::path(get, path = "/v1/sources/{name}/streams/{stream}/records", tag = "client", security(("client" = [])), params(SourceName, StreamName, RecordsQuery), responses((status = 200, description = "A page of records, oldest update first", body = Page), (status = "4XX", description = "The error shape", body = ErrorBody)))]
pub(super) async fn client_records(
    ClientReads(grant, snapshot): ClientReads,
    Path((name, stream)): Path<(String, String)>,
    Params(query): Params<RecordsQuery>,
) -> Result<Response, ApiError> {
    // Another source, or a stream the token does not grant, is simply not
    // there for this client.
    if name != grant.source || !grant.streams.contains(&stream) {
        return Err(ApiError::not_found(format!(
            "no stream '{stream}' of source '{name}' is granted to this token"
        )));
    }
    let limit = query.limit.unwrap_or(PAGE_DEFAULT);
    if limit == 0 || limit > PAGE_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {PAGE_MAX}"
        )));
    }
    let after = match &query.cursor {
        Some(cursor) => Some(decode_cursor(cursor).ok_or_else(|| {
            ApiError::bad_request("cursor is not one this API returned; start without one")
        })?),
        None => None,
    };
    let body = read_page(
        snapshot.conn(),
        grant.source_id,
        &stream,
        query.updated_since,
        after,
        limit,
    )
    .map_err(|e| ApiError::internal(&e))?;
    Ok((
        [(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paging through a stream, with or without `updated_since`, and
    /// with a cursor from a page read without it, returns every record
    /// the request covers exactly once, oldest update first.
    #[test]
    fn pages_cover_the_stream_once_in_order() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::init(&tmp.path().join("data"), &[]).expect("init");
        let source = store.add_source("s").expect("source").source_id;
        let other = store.add_source("t").expect("source").source_id;
        // Three records per millisecond, so pages end inside a millisecond;
        // keys compare as text ("[10]" before "[2]").
        let stored: Vec<(i64, String)> = (0..20).map(|i| (100 + i / 3, format!("[{i}]"))).collect();
        store
            .write(|conn| {
                for (at, key) in &stored {
                    for (id, stream) in [(source, "items"), (source, "else"), (other, "items")] {
                        conn.execute(
                            crate::runtime::UPSERT_RECORD,
                            params![id, stream, key, r#"{"x":1}"#, "r", at],
                        )?;
                    }
                }
                Ok(())
            })
            .expect("records");
        let mut ordered = stored.clone();
        ordered.sort();
        let read_all = |since: Option<i64>, mut after: Option<(i64, String)>| {
            let mut seen = Vec::new();
            loop {
                let page = parse(
                    &read_page(store.conn(), source, "items", since, after.clone(), 4)
                        .expect("page"),
                );
                assert!(page.records.len() <= 4);
                for record in &page.records {
                    seen.push((record.updated_at, record.key.to_string()));
                }
                match page.next_cursor {
                    Some(cursor) => after = Some(decode_cursor(&cursor).expect("our cursor")),
                    None => return seen,
                }
            }
        };
        for since in [None, Some(99), Some(101), Some(103), Some(106), Some(107)] {
            let expected: Vec<_> = ordered
                .iter()
                .filter(|(at, _)| since.is_none_or(|since| *at >= since))
                .cloned()
                .collect();
            assert_eq!(read_all(since, None), expected, "since {since:?}");
        }
        // The first page read without `updated_since`, the rest with one
        // later than that page's end, and with one earlier.
        let first = parse(&read_page(store.conn(), source, "items", None, None, 4).expect("page"));
        let cursor = decode_cursor(&first.next_cursor.expect("more")).expect("our cursor");
        assert_eq!(cursor, (101, "[3]".to_owned()));
        for since in [104, 100] {
            let expected: Vec<_> = ordered
                .iter()
                .filter(|(at, key)| *at >= since && (*at, key) > (cursor.0, &cursor.1))
                .cloned()
                .collect();
            assert_eq!(
                read_all(Some(since), Some(cursor.clone())),
                expected,
                "since {since}"
            );
        }
    }

    /// A page's body has the documented shape, with no field more.
    fn parse(body: &[u8]) -> Page {
        serde_json::from_slice(body).expect("a page is JSON of the page's shape")
    }

    /// A page goes out with each record's key and data as stored, not
    /// printed again; what it writes around them makes it JSON of the
    /// page's shape, with and without a next page.
    #[test]
    fn a_page_sends_stored_json_as_it_is() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::init(&tmp.path().join("data"), &[]).expect("init");
        let source = store.add_source("s").expect("source").source_id;
        let stored = [
            ("[1]", 10, r#"{"id": 1, "t": "a\"b\u00e9"}"#),
            (r#"["k\"ey", 2]"#, 20, "{\n  \"id\": 2\n}"),
        ];
        store
            .write(|conn| {
                for (key, at, data) in stored {
                    conn.execute(
                        crate::runtime::UPSERT_RECORD,
                        params![source, "items", key, data, "r", at],
                    )?;
                }
                Ok(())
            })
            .expect("records");
        let body = read_page(store.conn(), source, "items", None, None, 1).expect("page");
        let text = std::str::from_utf8(&body).expect("UTF-8");
        assert!(text.contains(stored[0].2), "{text}");
        let page = parse(&body);
        assert_eq!(page.records.len(), 1);
        assert_eq!(page.records[0].key, serde_json::json!([1]));
        assert_eq!(page.records[0].updated_at, 10);
        assert_eq!(
            page.records[0].data,
            serde_json::json!({"id": 1, "t": "a\"bé"})
        );
        let cursor = page.next_cursor.expect("a second page");
        assert_eq!(decode_cursor(&cursor), Some((10, "[1]".to_owned())));
        let body = read_page(
            store.conn(),
            source,
            "items",
            None,
            Some((10, "[1]".into())),
            1,
        )
        .expect("page");
        assert!(
            std::str::from_utf8(&body)
                .expect("UTF-8")
                .contains(stored[1].0)
        );
        let page = parse(&body);
        assert_eq!(page.records[0].key, serde_json::json!(["k\"ey", 2]));
        assert_eq!(page.records[0].data, serde_json::json!({"id": 2}));
        assert_eq!(page.next_cursor, None);
        let empty = parse(&read_page(store.conn(), source, "none", None, None, 5).expect("page"));
        assert!(empty.records.is_empty() && empty.next_cursor.is_none());
    }

    #[test]
    fn a_page_of_text_that_is_not_utf8_is_still_json() {
        // Written behind the runtime's back: JSON to SQLite's check, with
        // a byte (0xFF) that is not UTF-8 inside a string.
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::init(&tmp.path().join("data"), &[]).expect("init");
        let source = store.add_source("s").expect("source").source_id;
        store
            .write(|conn| {
                conn.execute(
                    "INSERT INTO records (source_id, stream, key, data, run_id, created_at, updated_at)
                     VALUES (?1, 'items', '[1]', CAST(X'7B2274223A2261FF62227D' AS TEXT), 'r', 5, 5)",
                    params![source],
                )?;
                Ok(())
            })
            .expect("record");
        let body = read_page(store.conn(), source, "items", None, None, 5).expect("page");
        let page = parse(&body);
        assert_eq!(page.records.len(), 1);
        assert_eq!(page.records[0].data, serde_json::json!({"t": "a\u{FFFD}b"}));
    }
}

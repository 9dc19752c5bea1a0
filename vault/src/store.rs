//! The data directory and its SQLite database.
//!
//! `init` creates the directory (0700) and the database (WAL, migrated);
//! [`Store::open`] refuses a missing or foreign directory with a message that
//! says what to do. Owners and sources live here; the vault and later
//! modules keep their own tables in the same database.

mod error;
pub mod migrations;

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

pub use error::StoreError;
pub use migrations::LATEST as SCHEMA_VERSION;

/// The database file inside the data directory.
pub const DB_FILE: &str = "sourcebox.db";
/// SQLite `application_id` of a sourcebox database ("SBox").
const APPLICATION_ID: i32 = 0x5342_6f78;
/// The owner a single-owner deployment creates at init.
pub const DEFAULT_OWNER: &str = "owner";

/// An open data directory.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    conn: Connection,
}

/// A source as the vault addresses it: immutable ids for associated data,
/// names for people and audit rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRef {
    /// Owner row id.
    pub owner_id: i64,
    /// Owner name.
    pub owner: String,
    /// Source row id, never reused.
    pub source_id: i64,
    /// Source name, unique per owner.
    pub source: String,
}

/// A fresh random id: 16 hex digits.
pub fn new_id() -> String {
    let mut id = [0u8; 8];
    getrandom::fill(&mut id).expect("the operating system's random source failed");
    hex::encode(id)
}

/// `at` (ms since the Unix epoch) plus `d`, saturating instead of
/// wrapping: a duration from configuration or from a provider can be
/// anything.
pub fn ms_after(at: i64, d: std::time::Duration) -> i64 {
    at.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Creates a data directory and its database, recording `settings` in
    /// the `meta` table. The directory must not exist or be empty.
    pub fn init(dir: &Path, settings: &[(&str, &str)]) -> Result<Self, StoreError> {
        match fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(StoreError::NotEmpty(dir.to_path_buf()));
                }
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)?;
            }
            Err(e) => return Err(e.into()),
        }
        let mut conn = Connection::open(dir.join(DB_FILE))?;
        // SQLite gives the -wal and -shm files the database file's mode.
        fs::set_permissions(dir.join(DB_FILE), fs::Permissions::from_mode(0o600))?;
        conn.pragma_update(None, "application_id", APPLICATION_ID)?;
        configure(&mut conn, dir)?;
        migrations::migrate(&mut conn)?;
        let tx = conn.transaction()?;
        for (key, value) in settings {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2)",
                params![key, value],
            )?;
        }
        tx.execute(
            "INSERT INTO owners (name, created_at) VALUES (?1, ?2)",
            params![DEFAULT_OWNER, now_ms()],
        )?;
        tx.commit()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            conn,
        })
    }

    /// Opens an existing data directory, migrating its schema forward.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        if !dir.is_dir() {
            return Err(StoreError::Missing(dir.to_path_buf()));
        }
        let db = dir.join(DB_FILE);
        if !db.is_file() {
            return Err(StoreError::Foreign(
                dir.to_path_buf(),
                "it has no sourcebox.db",
            ));
        }
        let mut conn = Connection::open(&db)?;
        let id: i32 = conn
            .pragma_query_value(None, "application_id", |row| row.get(0))
            .map_err(|_| {
                StoreError::Foreign(dir.to_path_buf(), "sourcebox.db is not a SQLite database")
            })?;
        if id != APPLICATION_ID {
            return Err(StoreError::Foreign(
                dir.to_path_buf(),
                "sourcebox.db belongs to another program",
            ));
        }
        configure(&mut conn, dir)?;
        migrations::migrate(&mut conn)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            conn,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database connection, for modules that own tables in it.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// A setting recorded at init.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
                row.get(0)
            })
            .optional()?)
    }

    /// Adds a source for the default owner.
    pub fn add_source(&self, name: &str) -> Result<SourceRef, StoreError> {
        if !valid_source_name(name) {
            return Err(StoreError::InvalidSourceName(name.to_owned()));
        }
        let owner_id = self.default_owner_id()?;
        let inserted = self.conn.execute(
            "INSERT INTO sources (owner_id, name, created_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (owner_id, name) DO NOTHING",
            params![owner_id, name, now_ms()],
        )?;
        if inserted == 0 {
            return Err(StoreError::SourceExists(name.to_owned()));
        }
        self.source(name)
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction: committed if it
    /// returns `Ok`, rolled back otherwise.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(&self.conn) {
            Ok(value) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(value)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e.into())
            }
        }
    }

    /// Runs `f` in one read transaction: every statement in it sees the
    /// same snapshot, and the WAL read lock is taken once, not per
    /// statement.
    pub fn read<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, E>,
    ) -> Result<T, E> {
        self.begin_read()?;
        let result = f(self);
        self.end_read()?;
        result
    }

    /// Begins a read transaction that [`Store::end_read`] ends; for a
    /// snapshot that outlives one closure ([`Store::read`] otherwise).
    pub fn begin_read(&self) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("BEGIN DEFERRED")
            .and_then(|mut s| s.execute([]))?;
        Ok(())
    }

    /// Ends a read transaction. It has nothing to keep: if it will not
    /// commit, it is rolled back, so the connection is never left inside it.
    pub fn end_read(&self) -> Result<(), StoreError> {
        let ended = self
            .conn
            .prepare_cached("COMMIT")
            .and_then(|mut s| s.execute([]));
        if ended.is_err() {
            self.conn.execute_batch("ROLLBACK")?;
        }
        Ok(())
    }

    /// Looks up a source of the default owner by name.
    pub fn source(&self, name: &str) -> Result<SourceRef, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT o.id, o.name, s.id, s.name FROM sources s JOIN owners o ON o.id = s.owner_id
                 WHERE o.name = ?1 AND s.name = ?2",
            )?
            .query_row(params![DEFAULT_OWNER, name], source_ref)
            .optional()?
            .ok_or_else(|| StoreError::UnknownSource(name.to_owned()))
    }

    /// The source with row id `id`.
    pub fn source_by_id(&self, id: i64) -> Result<SourceRef, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT o.id, o.name, s.id, s.name FROM sources s JOIN owners o ON o.id = s.owner_id
                 WHERE s.id = ?1",
            )?
            .query_row([id], source_ref)
            .optional()?
            .ok_or_else(|| StoreError::UnknownSource(format!("#{id}")))
    }

    /// Every source of the default owner, by name.
    pub fn sources(&self) -> Result<Vec<SourceRef>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT o.id, o.name, s.id, s.name FROM sources s JOIN owners o ON o.id = s.owner_id
             WHERE o.name = ?1 ORDER BY s.name",
        )?;
        let rows = stmt.query_map([DEFAULT_OWNER], source_ref)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn default_owner_id(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT id FROM owners WHERE name = ?1",
            [DEFAULT_OWNER],
            |row| row.get(0),
        )?)
    }
}

/// The source of a row whose first four columns are the owner's id and
/// name and the source's id and name.
pub fn source_ref(row: &rusqlite::Row<'_>) -> rusqlite::Result<SourceRef> {
    Ok(SourceRef {
        owner_id: row.get(0)?,
        owner: row.get(1)?,
        source_id: row.get(2)?,
        source: row.get(3)?,
    })
}

/// Connection settings every sourcebox connection uses.
///
/// WAL with `synchronous=NORMAL`: a committed transaction survives a process
/// crash (kill -9); on power loss the newest commits may roll back, but the
/// database stays consistent. `secure_delete` zeroes deleted content, so a
/// destroyed data key does not linger in free pages.
///
/// After each commit, once it is visible to readers and before it returns,
/// the connection opens [`COMMIT_FILE`], truncating it. The API server
/// drops what it keeps (authentication decisions, setup views) when
/// anything in the data directory changes, and this is the change that
/// comes after a commit: the log's own write comes before the commit is
/// visible. The truncation is seen within the `open` call; a close could
/// be seen later (a child process forked meanwhile holds the file until it
/// runs its program).
fn configure(conn: &mut Connection, dir: &Path) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "secure_delete", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Room for every statement the vault, the runtime and the launch seam
    // prepare on their hot paths; the default (16) evicts them in turn.
    conn.set_prepared_statement_cache_capacity(128);
    // A cached statement keeps its plan. Without the planner stability
    // guarantee, STAT4 marks statements whose plan could depend on a bound
    // value (`LIMIT ?`, a join key), and the statement cache's clearing of
    // bindings expires them: every use re-prepared (measured in
    // BENCHMARKS.md, API section).
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    let touched = dir.join(COMMIT_FILE);
    if let Err(e) = commit_file(dir) {
        tracing::warn!(path = %touched.display(), "the commit file could not be made: {e}");
    }
    let mut warned = false;
    // This replaces SQLite's own hook, which checkpoints the log once it
    // holds `WAL_AUTOCHECKPOINT` pages; that is done here too.
    conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages| {
        match touch(&touched) {
            Ok(_) => warned = false,
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(
                    path = %touched.display(),
                    "a commit could not be announced; a running server may keep what it \
                     read before it for up to two seconds: {e}"
                );
            }
            Err(_) => {}
        }
        if pages >= WAL_AUTOCHECKPOINT {
            // As SQLite's own hook: a passive checkpoint, its failure
            // left to the next commit.
            let _ = wal.checkpoint();
        }
        Ok(())
    }))?;
    Ok(())
}

/// Opened and closed for writing after every commit (see [`configure`]);
/// it stays empty.
pub const COMMIT_FILE: &str = "sourcebox.db-commit";

/// SQLite's default: checkpoint once the log holds this many pages.
const WAL_AUTOCHECKPOINT: std::ffi::c_int = 1000;

/// Opens `path` for writing, truncating it (creating it, 0600): an inotify
/// watch on its directory sees `IN_MODIFY` before `open` returns.
fn touch(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

/// Makes [`COMMIT_FILE`] in `dir`, owned as the database file is: a server
/// run as root must not make it a file the owner's CLI cannot open (SQLite
/// does the same for its log).
fn commit_file(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let file = touch(&dir.join(COMMIT_FILE))?;
    let db = fs::metadata(dir.join(DB_FILE))?;
    let made = file.metadata()?;
    if (made.uid(), made.gid()) != (db.uid(), db.gid()) {
        std::os::unix::fs::fchown(&file, Some(db.uid()), Some(db.gid()))?;
    }
    Ok(())
}

fn valid_source_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_after_saturates_instead_of_wrapping() {
        use std::time::Duration;
        assert_eq!(ms_after(1_000, Duration::from_secs(2)), 3_000);
        assert_eq!(ms_after(i64::MAX - 1, Duration::from_secs(3600)), i64::MAX);
        assert_eq!(ms_after(now_ms(), Duration::MAX), i64::MAX);
    }

    /// A read transaction sees one snapshot (a write committed on another
    /// connection meanwhile is not in it), and ends whether `f` succeeds or
    /// fails, so a pooled connection never stays inside it.
    #[test]
    fn a_read_sees_one_snapshot_and_always_ends() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let writer = Store::init(&dir, &[]).expect("init");
        writer.add_source("a").expect("add");
        let reader = Store::open(&dir).expect("open");
        let seen: Vec<usize> = reader
            .read(|store| {
                let before = store.sources()?.len();
                writer.add_source("b")?;
                let after = store.sources()?.len();
                Ok::<_, StoreError>(vec![before, after])
            })
            .expect("read");
        assert_eq!(seen, [1, 1]);
        assert!(reader.conn().is_autocommit());
        assert_eq!(reader.sources().expect("sources").len(), 2);
        let failed = reader.read(|store| {
            store.sources()?;
            Err::<(), _>(StoreError::NotFound("on purpose".into()))
        });
        assert!(matches!(failed, Err(StoreError::NotFound(_))));
        assert!(reader.conn().is_autocommit());
    }

    /// Every commit touches the commit file once it is visible, and the
    /// log is still checkpointed, though the hook that does so replaces
    /// SQLite's own.
    #[test]
    fn commits_are_announced_and_the_log_is_checkpointed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let store = Store::init(&dir, &[]).expect("init");
        let touched = dir.join(COMMIT_FILE);
        let mode = fs::metadata(&touched)
            .expect("made at init")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let watch = Inotify::init(InitFlags::IN_NONBLOCK).expect("inotify");
        // The truncation, which is seen within `open`; not the close.
        watch
            .add_watch(&touched, AddWatchFlags::IN_MODIFY)
            .expect("watch");
        let announced = || match watch.read_events() {
            Ok(events) => !events.is_empty(),
            Err(nix::errno::Errno::EAGAIN) => false,
            Err(e) => panic!("inotify: {e}"),
        };

        store
            .conn()
            .query_row("SELECT COUNT(*) FROM sources", [], |r| r.get::<_, i64>(0))
            .expect("a read");
        assert!(!announced(), "a read announced a commit");
        store.add_source("work").expect("a commit");
        assert!(announced(), "a commit was not announced");

        // 40 MB in 400 commits: about 10,000 pages. Without checkpoints
        // the log would hold them all.
        store
            .conn()
            .execute_batch("CREATE TABLE filler (b BLOB)")
            .expect("table");
        for _ in 0..400 {
            store
                .conn()
                .execute("INSERT INTO filler VALUES (zeroblob(100000))", [])
                .expect("insert");
        }
        let wal = fs::metadata(dir.join(format!("{DB_FILE}-wal")))
            .expect("wal")
            .len();
        assert!(wal < 12_000_000, "the log grew to {wal} bytes");
    }

    #[test]
    fn init_then_open_and_refusals() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        assert!(matches!(Store::open(&dir), Err(StoreError::Missing(_))));

        let store = Store::init(&dir, &[("key_wrapper", "local")]).expect("init");
        let mode = fs::metadata(&dir).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        store.add_source("work").expect("add");
        assert!(matches!(
            store.add_source("work"),
            Err(StoreError::SourceExists(_))
        ));
        assert!(matches!(
            store.add_source("../x"),
            Err(StoreError::InvalidSourceName(_))
        ));
        drop(store);

        let store = Store::open(&dir).expect("open");
        assert_eq!(
            store.setting("key_wrapper").expect("meta").as_deref(),
            Some("local")
        );
        assert_eq!(store.sources().expect("list").len(), 1);
        let mode: String = store
            .conn()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("pragma");
        assert_eq!(mode, "wal");
        assert!(matches!(
            Store::init(&dir, &[]),
            Err(StoreError::NotEmpty(_))
        ));
        drop(store);

        let foreign = tmp.path().join("foreign");
        fs::create_dir(&foreign).expect("mkdir");
        assert!(matches!(
            Store::open(&foreign),
            Err(StoreError::Foreign(..))
        ));
        fs::write(
            foreign.join(DB_FILE),
            b"not a database at all, just some text....",
        )
        .expect("write");
        assert!(matches!(
            Store::open(&foreign),
            Err(StoreError::Foreign(..))
        ));
        fs::remove_file(foreign.join(DB_FILE)).expect("rm");
        Connection::open(foreign.join(DB_FILE))
            .and_then(|c| c.execute_batch("CREATE TABLE t (x)"))
            .expect("other sqlite");
        assert!(matches!(
            Store::open(&foreign),
            Err(StoreError::Foreign(..))
        ));
    }

    #[test]
    fn newer_schema_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        drop(Store::init(tmp.path(), &[]).expect("init"));
        let conn = Connection::open(tmp.path().join(DB_FILE)).expect("open");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump");
        drop(conn);
        assert!(matches!(
            Store::open(tmp.path()),
            Err(StoreError::SchemaTooNew { .. })
        ));
    }
}

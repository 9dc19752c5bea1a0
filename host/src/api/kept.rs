//! Authentication decisions and setup views kept between requests for as
//! long as the data directory stays as it was.
//!
//! Every request authenticates its bearer token. Reading the token's row
//! takes a SQLite read transaction, and its WAL lock costs more than the
//! rest of a small route (BENCHMARKS.md). So a decision is kept, keyed by
//! the token's SHA-256 (the token itself is not held), and dropped with
//! everything else kept as soon as anything in the data directory changes.
//! A source's setup view, which is made from the database alone, is kept
//! the same way, as the bytes of its response.
//!
//! Changes are seen through an inotify watch on the directory. The kernel
//! queues an event within the call that makes the change (a write, an open
//! that truncates), from this process or any other (the CLI revoking a
//! token, say). A commit's own write to the log comes before the commit is
//! visible. So every sourcebox connection also opens
//! [`crate::store::COMMIT_FILE`], truncating it, once its commit is
//! visible and before the commit returns (a WAL hook). Each lookup first
//! takes what is queued, under the same lock as the lookup itself, and
//! what was read while an event arrived is not kept. So nothing kept from
//! before a commit survives the first lookup after the commit returns.
//!
//! That holds for writers with the hook: sourcebox itself. A writer without
//! it (the `sqlite3` shell, or a commit whose announcement failed) is seen
//! at its log write, which comes just before its commit is visible; a
//! decision read in between could be kept. So nothing is kept longer than
//! [`MAX_AGE`] either.
//!
//! Where the watch cannot be set up, or stops being trustworthy (its
//! directory moved, removed or unmounted, a read error), nothing is kept
//! and every request reads the database, as before.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::store::now_ms;
use crate::tokens::Principal;

/// At most this many decisions, and this many views, are kept; past it,
/// all of that kind are dropped.
const CAPACITY: usize = 4096;

/// Everything kept is dropped this long after the first of it was kept,
/// changes or not (see the module's documentation).
const MAX_AGE: Duration = Duration::from_secs(2);

/// Inserts into a map of at most [`CAPACITY`] entries, emptied when full.
fn bounded_insert<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= CAPACITY {
        map.clear();
    }
    map.insert(key, value);
}

/// See the module's documentation.
pub(super) struct Kept {
    watch: Option<Inotify>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// A live token's principal and expiry, by the token's digest.
    by_digest: HashMap<[u8; 32], (Principal, Option<i64>)>,
    /// A source's setup view, as its response's body, by the source's name.
    views: HashMap<String, Bytes>,
    /// Counts the times all was dropped for a change: what was read in an
    /// earlier generation is not kept.
    generation: u64,
    /// Whether the watch is set up and has not failed.
    watching: bool,
    /// When what is kept began to be kept: the generation's first keep.
    since: Option<Instant>,
}

impl State {
    fn forget(&mut self) {
        self.by_digest.clear();
        self.views.clear();
        self.generation += 1;
        self.since = None;
    }

    fn principal(&self, digest: &[u8; 32]) -> Option<Principal> {
        match self.by_digest.get(digest) {
            Some((principal, expires_at)) if !expires_at.is_some_and(|at| at <= now_ms()) => {
                Some(principal.clone())
            }
            _ => None,
        }
    }
}

/// What [`Kept::get`] found.
pub(super) enum Lookup {
    /// The token's principal, from before any change.
    Kept(Principal),
    /// Nothing kept: read the database. Keep the result with this
    /// generation, if any (none: nothing is being kept).
    Read(Option<u64>),
}

/// What [`Kept::view`] found.
pub(super) enum ViewLookup {
    /// The token's principal and the view, both from before any change.
    Kept(Principal, Bytes),
    /// Not both kept: read the database, as for [`Lookup::Read`].
    Read(Option<u64>),
}

impl Kept {
    /// Watches `dir`, the data directory.
    pub(super) fn new(dir: &Path) -> Self {
        // Not IN_ATTRIB: SQLite run as root chowns the log whenever a
        // connection opens it, and attributes are not content.
        let changes = AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF;
        let watch = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .and_then(|watch| watch.add_watch(dir, changes).map(|_| watch));
        let watch = match watch {
            Ok(watch) => Some(watch),
            Err(e) => {
                tracing::warn!(
                    dir = %dir.display(),
                    "the data directory cannot be watched ({e}); every request reads its \
                     token from the database"
                );
                None
            }
        };
        Self {
            state: Mutex::new(State {
                watching: watch.is_some(),
                ..State::default()
            }),
            watch,
        }
    }

    /// The principal kept for the token whose digest is `digest`.
    pub(super) fn get(&self, digest: &[u8; 32]) -> Lookup {
        let Some(state) = self.current() else {
            return Lookup::Read(None);
        };
        match state.principal(digest) {
            Some(principal) => Lookup::Kept(principal),
            None => Lookup::Read(Some(state.generation)),
        }
    }

    /// The principal kept for the token whose digest is `digest`, and the
    /// setup view kept for `source`.
    pub(super) fn view(&self, digest: &[u8; 32], source: &str) -> ViewLookup {
        let Some(state) = self.current() else {
            return ViewLookup::Read(None);
        };
        match (state.principal(digest), state.views.get(source)) {
            (Some(principal), Some(view)) => ViewLookup::Kept(principal, view.clone()),
            _ => ViewLookup::Read(Some(state.generation)),
        }
    }

    /// Keeps a setup view read after [`Kept::view`] gave `generation`,
    /// unless something changed since.
    pub(super) fn keep_view(&self, source: &str, view: Bytes, generation: u64) {
        if let Some(mut state) = self.unchanged_since(generation) {
            bounded_insert(&mut state.views, source.to_owned(), view);
        }
    }

    /// Keeps a decision read from the database after [`Kept::get`] gave
    /// `generation`, unless something changed since.
    pub(super) fn keep(
        &self,
        digest: [u8; 32],
        principal: Principal,
        expires_at: Option<i64>,
        generation: u64,
    ) {
        if let Some(mut state) = self.unchanged_since(generation) {
            bounded_insert(&mut state.by_digest, digest, (principal, expires_at));
        }
    }

    /// What is kept, every queued change taken and all of it dropped once
    /// [`MAX_AGE`] old; `None` when nothing is kept.
    fn current(&self) -> Option<MutexGuard<'_, State>> {
        let mut state = self.state.lock().expect("kept lock");
        self.take_changes(&mut state);
        if state.since.is_some_and(|since| since.elapsed() >= MAX_AGE) {
            state.forget();
        }
        state.watching.then_some(state)
    }

    /// [`Kept::current`], if nothing changed since `generation`, to keep
    /// something in.
    fn unchanged_since(&self, generation: u64) -> Option<MutexGuard<'_, State>> {
        let mut state = self
            .current()
            .filter(|state| state.generation == generation)?;
        state.since.get_or_insert_with(Instant::now);
        Some(state)
    }

    /// Takes every queued event; any event drops what is kept.
    fn take_changes(&self, state: &mut State) {
        let Some(watch) = &self.watch else { return };
        loop {
            match watch.read_events() {
                Ok(events) => {
                    state.forget();
                    // The directory is gone, or no longer on a mounted
                    // file system, or no longer at its path (which is
                    // where connections open the database): this watch
                    // no longer sees their changes.
                    let ended = AddWatchFlags::IN_IGNORED
                        | AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_MOVE_SELF
                        | AddWatchFlags::IN_UNMOUNT;
                    if events.iter().any(|e| e.mask.intersects(ended)) {
                        tracing::warn!(
                            "the data directory's watch ended; every request reads its token \
                             from the database"
                        );
                        state.watching = false;
                    }
                }
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => {}
                Err(e) => {
                    tracing::warn!(
                        "the data directory's watch failed ({e}); every request reads its \
                         token from the database"
                    );
                    state.forget();
                    state.watching = false;
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::tokens;

    /// A data directory with an owner token, a connection to it, and what
    /// is kept for it.
    struct World {
        tmp: tempfile::TempDir,
        dir: std::path::PathBuf,
        /// The owner token's digest.
        digest: [u8; 32],
        store: Store,
        kept: Kept,
    }

    fn world() -> World {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let token = tokens::ensure_owner_token(&Store::init(&dir, &[]).expect("init"))
            .expect("token")
            .expect("a new one");
        let store = Store::open(&dir).expect("open");
        World {
            digest: tokens::digest(token.expose_secret()),
            kept: Kept::new(&dir),
            store,
            dir,
            tmp,
        }
    }

    impl World {
        /// The owner token's decision, read from the database, and the
        /// generation a lookup just before the read gave.
        fn read(&self) -> (Principal, Option<i64>, u64) {
            let Lookup::Read(Some(generation)) = self.kept.get(&self.digest) else {
                panic!("a decision was kept");
            };
            let (principal, expires_at) = tokens::authenticate_digest(&self.store, &self.digest)
                .expect("read")
                .expect("a live token");
            (principal, expires_at, generation)
        }

        fn kept(&self) -> bool {
            matches!(self.kept.get(&self.digest), Lookup::Kept(_))
        }
    }

    /// A decision is used until any connection commits; then the next
    /// lookup reads the database again.
    #[test]
    fn a_kept_decision_lasts_until_the_next_commit() {
        let w = world();
        let again = Store::open(&w.dir).expect("open");
        let (principal, expires_at, generation) = w.read();
        w.kept
            .keep(w.digest, principal.clone(), expires_at, generation);
        // Reads change nothing.
        tokens::authenticate_digest(&again, &w.digest).expect("read");
        for _ in 0..3 {
            assert!(matches!(w.kept.get(&w.digest), Lookup::Kept(p) if p == principal));
        }
        // Another connection, as the CLI's, rotates the owner token.
        tokens::rotate_owner(&again).expect("rotate");
        assert!(!w.kept());
        assert!(
            tokens::authenticate_digest(&w.store, &w.digest)
                .expect("read")
                .is_none()
        );
    }

    /// A decision read while something changed is not kept: it may be
    /// from before the change.
    #[test]
    fn a_decision_read_across_a_commit_is_not_kept() {
        let w = world();
        let (principal, expires_at, generation) = w.read();
        w.store.add_source("work").expect("a commit");
        w.kept.keep(w.digest, principal, expires_at, generation);
        assert!(!w.kept());
    }

    /// A view is found with its token's decision, and goes with the next
    /// commit; one read across a commit is not kept.
    #[test]
    fn a_view_is_kept_with_its_tokens_decision_until_the_next_commit() {
        let w = world();
        let view = Bytes::from_static(b"{\"source\":\"work\"}");
        let kept_view = || w.kept.view(&w.digest, "work");

        let (principal, expires_at, generation) = w.read();
        w.kept.keep_view("work", view.clone(), generation);
        // Without the token's decision the view is not enough.
        assert!(matches!(kept_view(), ViewLookup::Read(Some(_))));
        w.kept
            .keep(w.digest, principal.clone(), expires_at, generation);
        assert!(matches!(
            kept_view(),
            ViewLookup::Kept(p, v) if p == principal && v == view
        ));
        assert!(matches!(
            w.kept.view(&w.digest, "home"),
            ViewLookup::Read(Some(_))
        ));

        w.store.add_source("home").expect("a commit");
        let ViewLookup::Read(Some(generation)) = kept_view() else {
            panic!("kept past a commit");
        };
        w.store.add_source("other").expect("a commit");
        w.kept.keep_view("work", view, generation);
        w.kept.keep(w.digest, principal, expires_at, generation);
        assert!(matches!(kept_view(), ViewLookup::Read(Some(_))));
    }

    /// Nothing is kept past its maximum age, changes or not; nothing at
    /// all once the directory is no longer at its path.
    #[test]
    fn age_and_a_moved_directory_end_what_is_kept() {
        let w = world();
        let (principal, expires_at, generation) = w.read();
        w.kept
            .keep(w.digest, principal.clone(), expires_at, generation);
        assert!(w.kept());
        std::thread::sleep(MAX_AGE);
        let (_, _, generation) = w.read();

        w.kept.keep(w.digest, principal, expires_at, generation);
        assert!(w.kept());
        std::fs::rename(&w.dir, w.tmp.path().join("moved")).expect("move");
        assert!(matches!(w.kept.get(&w.digest), Lookup::Read(None)));
    }

    /// An expired decision is not used, and nothing is kept once the
    /// directory is gone.
    #[test]
    fn expiry_and_a_lost_watch_end_what_is_kept() {
        let w = world();
        let (principal, _, generation) = w.read();
        w.kept
            .keep(w.digest, principal.clone(), Some(now_ms() - 1), generation);
        assert!(!w.kept());

        let (_, _, generation) = w.read();
        w.kept.keep(w.digest, principal, None, generation);
        assert!(w.kept());
        // Its last connection closed: the directory's inode goes with it.
        drop(w.store);
        std::fs::remove_dir_all(&w.dir).expect("remove");
        assert!(matches!(w.kept.get(&w.digest), Lookup::Read(None)));
    }
}

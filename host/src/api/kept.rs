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
//! queues an event before the write that causes it returns, from this
//! process or any other (the CLI revoking a token, say). A commit's own
//! write to the log comes before the commit is visible. Every sourcebox
//! connection therefore also touches [`crate::store::COMMIT_FILE`] once its
//! commit is visible (a WAL hook). Each lookup first takes what is queued,
//! under the same lock as the lookup itself. So a decision from before a
//! commit that has returned is never used, and a decision read while a
//! commit was under way is not kept.
//!
//! Where the watch cannot be set up, or stops being trustworthy (its
//! directory removed, a read error), nothing is kept and every request
//! reads the database, as before.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use bytes::Bytes;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::store::now_ms;
use crate::tokens::Principal;

/// At most this many decisions, and this many views, are kept; past it,
/// all of that kind are dropped.
const CAPACITY: usize = 4096;

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
}

impl State {
    fn forget(&mut self) {
        self.by_digest.clear();
        self.views.clear();
        self.generation += 1;
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
        let mut state = self.state.lock().expect("kept lock");
        self.take_changes(&mut state);
        if !state.watching {
            return Lookup::Read(None);
        }
        match state.principal(digest) {
            Some(principal) => Lookup::Kept(principal),
            None => Lookup::Read(Some(state.generation)),
        }
    }

    /// The principal kept for the token whose digest is `digest`, and the
    /// setup view kept for `source`.
    pub(super) fn view(&self, digest: &[u8; 32], source: &str) -> ViewLookup {
        let mut state = self.state.lock().expect("kept lock");
        self.take_changes(&mut state);
        if !state.watching {
            return ViewLookup::Read(None);
        }
        match (state.principal(digest), state.views.get(source)) {
            (Some(principal), Some(view)) => ViewLookup::Kept(principal, view.clone()),
            _ => ViewLookup::Read(Some(state.generation)),
        }
    }

    /// Keeps a setup view read after [`Kept::view`] gave `generation`,
    /// unless something changed since.
    pub(super) fn keep_view(&self, source: &str, view: Bytes, generation: u64) {
        let mut state = self.state.lock().expect("kept lock");
        self.take_changes(&mut state);
        if !state.watching || state.generation != generation {
            return;
        }
        if state.views.len() >= CAPACITY {
            state.views.clear();
        }
        state.views.insert(source.to_owned(), view);
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
        let mut state = self.state.lock().expect("kept lock");
        self.take_changes(&mut state);
        if !state.watching || state.generation != generation {
            return;
        }
        if state.by_digest.len() >= CAPACITY {
            state.by_digest.clear();
        }
        state.by_digest.insert(digest, (principal, expires_at));
    }

    /// Takes every queued event; any event drops what is kept.
    fn take_changes(&self, state: &mut State) {
        let Some(watch) = &self.watch else { return };
        loop {
            match watch.read_events() {
                Ok(events) => {
                    state.forget();
                    // The directory is gone, or no longer on a mounted
                    // file system: no more events will come.
                    if events
                        .iter()
                        .any(|e| e.mask.contains(AddWatchFlags::IN_IGNORED))
                    {
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

    /// A data directory with an owner token; the token's digest.
    fn owner(dir: &Path) -> [u8; 32] {
        let store = Store::init(dir, &[]).expect("init");
        let token = tokens::ensure_owner_token(&store)
            .expect("token")
            .expect("a new one");
        tokens::digest(token.expose_secret())
    }

    fn read(store: &Store, digest: &[u8; 32]) -> (Principal, Option<i64>) {
        tokens::authenticate_digest(store, digest)
            .expect("read")
            .expect("a live token")
    }

    /// A decision is used until any connection commits; then the next
    /// lookup reads the database again.
    #[test]
    fn a_kept_decision_lasts_until_the_next_commit() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let digest = owner(&dir);
        let store = Store::open(&dir).expect("open");
        let again = Store::open(&dir).expect("open");
        let kept = Kept::new(&dir);

        let Lookup::Read(Some(generation)) = kept.get(&digest) else {
            panic!("nothing was kept yet");
        };
        let (principal, expires_at) = read(&store, &digest);
        kept.keep(digest, principal.clone(), expires_at, generation);
        // Reads change nothing.
        read(&again, &digest);
        for _ in 0..3 {
            assert!(matches!(kept.get(&digest), Lookup::Kept(p) if p == principal));
        }
        // Another connection, as the CLI's, rotates the owner token.
        tokens::rotate_owner(&again).expect("rotate");
        assert!(matches!(kept.get(&digest), Lookup::Read(Some(_))));
        assert!(
            tokens::authenticate_digest(&store, &digest)
                .expect("read")
                .is_none()
        );
    }

    /// A decision read while something changed is not kept: it may be
    /// from before the change.
    #[test]
    fn a_decision_read_across_a_commit_is_not_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let digest = owner(&dir);
        let kept = Kept::new(&dir);
        let store = Store::open(&dir).expect("open");

        let Lookup::Read(Some(generation)) = kept.get(&digest) else {
            panic!("nothing was kept yet");
        };
        let (principal, expires_at) = read(&store, &digest);
        store.add_source("work").expect("a commit");
        kept.keep(digest, principal, expires_at, generation);
        assert!(matches!(kept.get(&digest), Lookup::Read(Some(_))));
    }

    /// A view is found with its token's decision, and goes with the next
    /// commit; one read across a commit is not kept.
    #[test]
    fn a_view_is_kept_with_its_tokens_decision_until_the_next_commit() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let digest = owner(&dir);
        let store = Store::open(&dir).expect("open");
        let kept = Kept::new(&dir);
        let (principal, expires_at) = read(&store, &digest);
        let view = Bytes::from_static(b"{\"source\":\"work\"}");

        let ViewLookup::Read(Some(generation)) = kept.view(&digest, "work") else {
            panic!("nothing was kept yet");
        };
        kept.keep_view("work", view.clone(), generation);
        // Without the token's decision the view is not enough.
        assert!(matches!(
            kept.view(&digest, "work"),
            ViewLookup::Read(Some(_))
        ));
        kept.keep(digest, principal.clone(), expires_at, generation);
        assert!(matches!(
            kept.view(&digest, "work"),
            ViewLookup::Kept(p, v) if p == principal && v == view
        ));
        assert!(matches!(
            kept.view(&digest, "home"),
            ViewLookup::Read(Some(_))
        ));

        store.add_source("home").expect("a commit");
        let ViewLookup::Read(Some(generation)) = kept.view(&digest, "work") else {
            panic!("kept past a commit");
        };
        store.add_source("other").expect("a commit");
        kept.keep_view("work", view, generation);
        kept.keep(digest, principal, expires_at, generation);
        assert!(matches!(
            kept.view(&digest, "work"),
            ViewLookup::Read(Some(_))
        ));
    }

    /// An expired decision is not used, and nothing is kept once the
    /// directory is gone.
    #[test]
    fn expiry_and_a_lost_watch_end_what_is_kept() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        let digest = owner(&dir);
        let kept = Kept::new(&dir);
        let store = Store::open(&dir).expect("open");
        let (principal, _) = read(&store, &digest);

        let Lookup::Read(Some(generation)) = kept.get(&digest) else {
            panic!("nothing was kept yet");
        };
        kept.keep(digest, principal.clone(), Some(now_ms() - 1), generation);
        assert!(matches!(kept.get(&digest), Lookup::Read(Some(_))));

        let Lookup::Read(Some(generation)) = kept.get(&digest) else {
            panic!("expired");
        };
        kept.keep(digest, principal, None, generation);
        assert!(matches!(kept.get(&digest), Lookup::Kept(_)));
        drop(store);
        std::fs::remove_dir_all(&dir).expect("remove");
        assert!(matches!(kept.get(&digest), Lookup::Read(None)));
    }
}

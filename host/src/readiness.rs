//! May a source run now, and if not, why: one decision, made from what the
//! store holds about the source (metadata only: nothing is decrypted and
//! no audit row is written), for the launch, the scheduler and the setup
//! view alike. [`decide`] is pure; [`facts`] reads what it needs.

use serde::{Deserialize, Serialize};

use crate::catalog::{CatalogError, SourceSetup};
use crate::store::{Store, StoreError};

/// What the decision needs to know about a source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The connector version whose approval the owner chose to wait for,
    /// the source paused meanwhile.
    pub paused_for: Option<String>,
    /// Why a run's credentials were refused, until new ones are stored.
    pub needs_reauth: Option<String>,
    /// Set up by OAuth: new credentials come from authorizing again.
    pub oauth: bool,
    /// The account the source was connected to, when its credentials now
    /// belong to another and the owner has not chosen what to do.
    pub account_changed_from: Option<String>,
    /// Required credentials that are not stored, revoked ones included.
    pub missing: Vec<String>,
    /// Of those, the ones that were revoked.
    pub revoked: Vec<String>,
    /// An older source of the same connector connected to the same
    /// account, when the owner has not confirmed this one may be too.
    pub same_account_as: Option<String>,
}

/// What a launch is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Collect records: every condition holds.
    Collect,
    /// Verify the credentials (setup): collects nothing, so it is how a
    /// source whose account changed, or that needs re-authentication, is
    /// checked again.
    Verify,
}

/// Why a source may not run now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Blocked {
    /// It has no connector yet.
    NoConnector,
    /// The owner paused it until they approve a newer connector version.
    Paused {
        /// The version waiting for approval.
        version: String,
    },
    /// A required credential was revoked.
    CredentialRevoked {
        /// The credentials missing, revoked ones among them.
        credentials: Vec<String>,
    },
    /// A required credential is not stored.
    CredentialsMissing {
        /// The credentials missing.
        credentials: Vec<String>,
    },
    /// The provider refused its credentials; new ones are needed.
    NeedsReauth {
        /// What the provider said.
        detail: String,
        /// They come from authorizing with the provider again (OAuth).
        authorize: bool,
    },
    /// Its credentials now belong to another account than the one it was
    /// connected to; the owner chooses what happens.
    AccountChanged {
        /// The account it was connected to.
        previous: String,
    },
    /// Another source of its connector is connected to the same account;
    /// the owner confirms that this one may be too.
    IdentityUnconfirmed {
        /// The other source.
        existing: String,
    },
}

/// Whether a source with `facts` may run now for `purpose`, and if not,
/// the first reason in this order: paused, credentials revoked or
/// missing, re-authentication needed, account changed, account already
/// connected by another source.
pub fn decide(facts: &Facts, purpose: Purpose) -> Result<(), Blocked> {
    if let Some(version) = &facts.paused_for {
        return Err(Blocked::Paused {
            version: version.clone(),
        });
    }
    if !facts.revoked.is_empty() {
        return Err(Blocked::CredentialRevoked {
            credentials: facts.missing.clone(),
        });
    }
    if !facts.missing.is_empty() {
        return Err(Blocked::CredentialsMissing {
            credentials: facts.missing.clone(),
        });
    }
    if purpose == Purpose::Verify {
        return Ok(());
    }
    if let Some(detail) = &facts.needs_reauth {
        return Err(Blocked::NeedsReauth {
            detail: detail.clone(),
            authorize: facts.oauth,
        });
    }
    if let Some(previous) = &facts.account_changed_from {
        return Err(Blocked::AccountChanged {
            previous: previous.clone(),
        });
    }
    if let Some(existing) = &facts.same_account_as {
        return Err(Blocked::IdentityUnconfirmed {
            existing: existing.clone(),
        });
    }
    Ok(())
}

impl Blocked {
    /// The failure kind a refused run records.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoConnector => "no_connector",
            Self::Paused { .. } => "paused",
            Self::CredentialRevoked { .. } => "credential_revoked",
            Self::CredentialsMissing { .. } => "credentials_missing",
            Self::NeedsReauth { .. } => "auth_rejected",
            Self::AccountChanged { .. } => "account_changed",
            Self::IdentityUnconfirmed { .. } => "identity_unconfirmed",
        }
    }

    /// Why `source` may not run, and what the owner does about it.
    pub fn explain(&self, source: &str) -> String {
        match self {
            Self::NoConnector => format!(
                "source '{source}' has no connector; choose one: `sourcebox source rm {source}`, then `sourcebox source add {source} --connector ID`"
            ),
            Self::Paused { version } => format!(
                "source '{source}' is paused until the owner approves version {version} of its connector; see `sourcebox source show {source}`"
            ),
            Self::CredentialRevoked { credentials } | Self::CredentialsMissing { credentials } => {
                format!(
                    "source '{source}' needs {} stored; use `sourcebox source setup {source}`",
                    credentials.join(", ")
                )
            }
            Self::NeedsReauth {
                detail,
                authorize: true,
            } => format!(
                "source '{source}' needs authorizing again ({detail}); use `sourcebox source authorize {source}`"
            ),
            Self::NeedsReauth { detail, .. } => format!(
                "source '{source}' needs new credentials ({detail}); use `sourcebox source setup {source}`"
            ),
            Self::AccountChanged { previous } => format!(
                "the credentials of source '{source}' now belong to another account than {previous}; choose what happens: `sourcebox source show {source}`, then `sourcebox source account {source}`"
            ),
            Self::IdentityUnconfirmed { existing } => format!(
                "source '{source}' is connected to the same account as '{existing}'; if that is intended: `sourcebox source confirm {source}`"
            ),
        }
    }

    /// Why a run of `source` was refused: [`Blocked::explain`], saying
    /// that nothing was collected.
    pub fn refusal(&self, source: &str) -> String {
        format!("nothing was collected: {}", self.explain(source))
    }
}

/// Whether source `name` may run now for `purpose`: [`decide`] on its
/// [`facts`], or [`Blocked::NoConnector`].
pub fn of(
    store: &Store,
    name: &str,
    purpose: Purpose,
) -> Result<Result<(), Blocked>, CatalogError> {
    match crate::catalog::source_setup(store, name) {
        Ok(setup) => Ok(decide(&facts(store, &setup)?, purpose)),
        Err(CatalogError::NoConnector(_)) => Ok(Err(Blocked::NoConnector)),
        Err(e) => Err(e),
    }
}

/// The facts about `setup`'s source, from metadata.
pub fn facts(store: &Store, setup: &SourceSetup) -> Result<Facts, StoreError> {
    let source = &setup.source;
    let (needs_reauth, previous_id, previous_display, same_account_as, modality) = store
        .conn()
        .prepare_cached(FACTS)?
        .query_row([source.source_id], |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })?;
    let required = setup.required();
    // (name, usable): a revoked credential keeps its row, without a key.
    let stored: Vec<(String, bool)> = store
        .conn()
        .prepare_cached(
            "SELECT name, revoked_at IS NULL AND wrapped_key IS NOT NULL FROM credentials
             WHERE source_id = ?1",
        )?
        .query_map([source.source_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let missing: Vec<String> = required
        .iter()
        .filter(|name| !stored.iter().any(|(n, usable)| n == *name && *usable))
        .map(|name| (*name).to_owned())
        .collect();
    let revoked = missing
        .iter()
        .filter(|name| stored.iter().any(|(n, _)| n == *name))
        .cloned()
        .collect();
    Ok(Facts {
        paused_for: setup.paused_for.clone(),
        needs_reauth,
        oauth: modality.as_deref() == Some("oauth"),
        account_changed_from: previous_display.map(|display| previous(&display, previous_id)),
        missing,
        revoked,
        same_account_as,
    })
}

/// How a previous account is shown: its name and, when known, its id at
/// the provider.
pub(crate) fn previous(display: &str, id: Option<String>) -> String {
    match id {
        Some(id) => format!("{display} (provider id {id})"),
        None => display.to_owned(),
    }
}

/// A source's re-auth state, the account it was connected to before a
/// change, and the oldest other verified source of its connector
/// connected to its account unless the owner confirmed it.
const FACTS: &str = "SELECT s.needs_reauth, s.previous_identity_id, s.previous_identity_display,
        CASE WHEN s.verified_at IS NOT NULL AND s.identity_id IS NOT NULL
              AND s.confirmed_identity IS NOT s.identity_id THEN
          (SELECT d.name FROM sources d
            WHERE d.connector_id = s.connector_id AND d.identity_id = s.identity_id
              AND d.id < s.id AND d.verified_at IS NOT NULL ORDER BY d.id LIMIT 1) END,
        s.modality
     FROM sources s WHERE s.id = ?1";

#[cfg(test)]
mod tests {
    use super::*;

    fn names(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    /// Every fact on its own, and the order between them when several
    /// hold: facts → (decision to collect, decision to verify).
    #[test]
    fn the_decision_as_a_table() {
        let ready = Facts::default();
        let paused = Facts {
            paused_for: Some("2.0.0".into()),
            ..Facts::default()
        };
        let missing = Facts {
            missing: names(&["token"]),
            ..Facts::default()
        };
        let revoked = Facts {
            missing: names(&["token", "otp"]),
            revoked: names(&["token"]),
            ..Facts::default()
        };
        let reauth = Facts {
            needs_reauth: Some("401 bad credentials".into()),
            ..Facts::default()
        };
        let reauthorize = Facts {
            needs_reauth: Some("invalid_grant".into()),
            oauth: true,
            ..Facts::default()
        };
        let changed = Facts {
            account_changed_from: Some("alice (provider id 1)".into()),
            ..Facts::default()
        };
        let duplicate = Facts {
            same_account_as: Some("work".into()),
            ..Facts::default()
        };
        let everything = Facts {
            paused_for: Some("2.0.0".into()),
            needs_reauth: Some("401".into()),
            oauth: true,
            account_changed_from: Some("alice".into()),
            missing: names(&["token"]),
            revoked: names(&["token"]),
            same_account_as: Some("work".into()),
        };
        let reauth_and_changed = Facts {
            needs_reauth: Some("401".into()),
            account_changed_from: Some("alice".into()),
            same_account_as: Some("work".into()),
            ..Facts::default()
        };
        let changed_and_duplicate = Facts {
            account_changed_from: Some("alice".into()),
            same_account_as: Some("work".into()),
            ..Facts::default()
        };
        let missing_and_reauth = Facts {
            missing: names(&["token"]),
            needs_reauth: Some("401".into()),
            ..Facts::default()
        };
        let paused_blocks = Err(Blocked::Paused {
            version: "2.0.0".into(),
        });
        type Decision = Result<(), Blocked>;
        let table: Vec<(&Facts, Decision, Decision)> = vec![
            (&ready, Ok(()), Ok(())),
            (&paused, paused_blocks.clone(), paused_blocks.clone()),
            (
                &missing,
                Err(Blocked::CredentialsMissing {
                    credentials: names(&["token"]),
                }),
                Err(Blocked::CredentialsMissing {
                    credentials: names(&["token"]),
                }),
            ),
            (
                &revoked,
                Err(Blocked::CredentialRevoked {
                    credentials: names(&["token", "otp"]),
                }),
                Err(Blocked::CredentialRevoked {
                    credentials: names(&["token", "otp"]),
                }),
            ),
            (
                &reauth,
                Err(Blocked::NeedsReauth {
                    detail: "401 bad credentials".into(),
                    authorize: false,
                }),
                Ok(()),
            ),
            (
                &reauthorize,
                Err(Blocked::NeedsReauth {
                    detail: "invalid_grant".into(),
                    authorize: true,
                }),
                Ok(()),
            ),
            (
                &changed,
                Err(Blocked::AccountChanged {
                    previous: "alice (provider id 1)".into(),
                }),
                Ok(()),
            ),
            (
                &duplicate,
                Err(Blocked::IdentityUnconfirmed {
                    existing: "work".into(),
                }),
                Ok(()),
            ),
            (&everything, paused_blocks.clone(), paused_blocks),
            (
                &reauth_and_changed,
                Err(Blocked::NeedsReauth {
                    detail: "401".into(),
                    authorize: false,
                }),
                Ok(()),
            ),
            (
                &changed_and_duplicate,
                Err(Blocked::AccountChanged {
                    previous: "alice".into(),
                }),
                Ok(()),
            ),
            (
                &missing_and_reauth,
                Err(Blocked::CredentialsMissing {
                    credentials: names(&["token"]),
                }),
                Err(Blocked::CredentialsMissing {
                    credentials: names(&["token"]),
                }),
            ),
        ];
        for (facts, collect, verify) in table {
            assert_eq!(decide(facts, Purpose::Collect), collect, "{facts:?}");
            assert_eq!(decide(facts, Purpose::Verify), verify, "{facts:?}");
        }
    }

    #[test]
    fn each_refusal_says_what_to_do() {
        for blocked in [
            Blocked::NoConnector,
            Blocked::Paused {
                version: "2.0.0".into(),
            },
            Blocked::CredentialsMissing {
                credentials: names(&["token"]),
            },
            Blocked::NeedsReauth {
                detail: "401".into(),
                authorize: false,
            },
            Blocked::NeedsReauth {
                detail: "invalid_grant".into(),
                authorize: true,
            },
            Blocked::AccountChanged {
                previous: "alice".into(),
            },
            Blocked::IdentityUnconfirmed {
                existing: "work".into(),
            },
        ] {
            let text = blocked.explain("home");
            assert!(text.contains("sourcebox source"), "{text}");
            assert!(!text.contains('{'), "{text}");
        }
        let oauth = Blocked::NeedsReauth {
            detail: "invalid_grant".into(),
            authorize: true,
        };
        assert!(
            oauth
                .explain("home")
                .contains("`sourcebox source authorize home`")
        );
    }
}

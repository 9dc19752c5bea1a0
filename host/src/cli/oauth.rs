//! `sourcebox oauth-client`: the OAuth clients connectors authorize through.

use std::io::Write;
use std::path::Path;

use clap::Subcommand;

use super::common::{CliError, open_vault, print_json, read_value, writeln_out};
use crate::oauth;
use crate::vault::Actor;

/// `oauth-client` subcommands.
#[derive(Debug, Subcommand)]
pub enum OauthClientCommand {
    /// Register (or replace) the OAuth client of a connector: what the
    /// provider issued when the operator made the client with it.
    Set {
        /// Connector id.
        connector: String,
        /// The provider's authorization endpoint.
        #[arg(long, value_name = "URL")]
        authorize_url: String,
        /// The provider's token endpoint (https, or http to an address
        /// allowed with --egress-allow).
        #[arg(long, value_name = "URL")]
        token_url: String,
        /// The client id.
        #[arg(long, value_name = "ID")]
        client_id: String,
        /// The redirect URI registered with the provider: `sourcebox
        /// serve`'s /v1/oauth/callback as the owner's browser reaches it.
        #[arg(long, value_name = "URL")]
        redirect_uri: String,
        /// A scope to ask for (repeatable).
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// A confidential client: read its secret from standard input
        /// (hidden prompt on a terminal). Without it, a public client.
        #[arg(long)]
        client_secret: bool,
    },
    /// List the registered clients (never a secret).
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove a connector's client; its sources keep their grants but
    /// cannot refresh them.
    Rm {
        /// Connector id.
        connector: String,
    },
}

/// A credential value: a no-echo prompt on a terminal, otherwise all of
/// standard input with one trailing newline removed.
pub(super) fn oauth_client(
    dir: &Path,
    unlock_fd: Option<u32>,
    egress_allow: &[std::net::SocketAddr],
    cmd: OauthClientCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let vault = open_vault(dir, unlock_fd)?;
    match cmd {
        OauthClientCommand::Set {
            connector,
            authorize_url,
            token_url,
            client_id,
            redirect_uri,
            scopes,
            client_secret,
        } => {
            let client_secret = client_secret
                .then(|| read_value(&format!("client secret for {connector}: ")))
                .transpose()?;
            let view = oauth::register(
                &vault,
                Actor::OWNER_CLI,
                oauth::Registration {
                    connector,
                    authorize_url,
                    token_url,
                    client_id,
                    scopes,
                    redirect_uri,
                    client_secret,
                },
                egress_allow,
            )?;
            writeln_out(
                out,
                format_args!(
                    "OAuth client of {} registered ({}); sources of it can now be authorized",
                    view.connector,
                    if view.confidential {
                        "confidential"
                    } else {
                        "public, PKCE only"
                    }
                ),
            )
        }
        OauthClientCommand::List { json } => {
            let clients = oauth::clients(vault.store())?;
            if json {
                return print_json(&clients, out);
            }
            for c in &clients {
                writeln_out(
                    out,
                    format_args!(
                        "{}  client {}  {}  scopes: {}  redirect: {}",
                        c.connector,
                        c.client_id,
                        if c.confidential {
                            "confidential"
                        } else {
                            "public"
                        },
                        if c.scopes.is_empty() {
                            "-".to_owned()
                        } else {
                            c.scopes.join(" ")
                        },
                        c.redirect_uri
                    ),
                )?;
            }
            Ok(())
        }
        OauthClientCommand::Rm { connector } => {
            oauth::unregister(&vault, Actor::OWNER_CLI, &connector)?;
            writeln_out(out, format_args!("OAuth client of {connector} removed"))
        }
    }
}

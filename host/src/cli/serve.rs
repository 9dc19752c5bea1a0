//! `sourcebox serve`: the API, the scheduler and the runs, until stopped.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use std::sync::Arc;

use super::common::{CliError, launch_config, launcher, positive_duration, writeln_out};
use crate::oauth;
use crate::runs::scheduler::{self};
use crate::runs::{self};
use crate::vault::Vault;

/// `serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// How often schedules and the run queue are looked at.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = humantime::parse_duration)]
    pub tick: Duration,
    /// Runs in flight at once, all connectors together.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent: u16,
    /// Runs in flight at once per connector.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub per_connector: u16,
    /// Backoff before the first retry of a transient failure (doubles per
    /// attempt, with jitter; a provider's retry-after wins when longer).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub retry_base: Duration,
    /// Attempts per run in all, the first included.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub retry_attempts: u32,
    /// How long a run waits for the owner to answer an interaction.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = humantime::parse_duration)]
    pub interaction_wait: Duration,
    /// On shutdown, how long runs in flight may take to finish.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Where the HTTP API listens (port 0 picks a free port; the address
    /// is printed).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:7780")]
    pub listen: std::net::SocketAddr,
    /// Allow listening on a non-loopback address without TLS (tokens
    /// would cross the network in clear text).
    #[arg(long, conflicts_with = "tls_cert")]
    pub insecure_listen: bool,
    /// Failed authentications from one address, within a minute, after
    /// which it is refused for the rest of that minute.
    #[arg(long, value_name = "N", default_value_t = crate::api::Limits::default().auth_failures, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_failures: u32,
    /// The URL the owner's browser reaches this server by (behind a
    /// reverse proxy, the proxy's); by default, the address it listens
    /// on. OAuth clients must send the browser back to its
    /// /v1/oauth/callback.
    #[arg(long, value_name = "URL")]
    pub public_url: Option<url::Url>,
    /// A reverse proxy in front of this server (repeatable): for its
    /// requests, failed authentications count against the client address
    /// it forwards in X-Forwarded-For, not against the proxy.
    #[arg(long, value_name = "IP")]
    pub trusted_proxy: Vec<std::net::IpAddr>,
    /// How long one HTTP request may take (an event stream, once started,
    /// is not cut).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = positive_duration)]
    pub request_timeout: Duration,
    /// Serve HTTPS with this PEM certificate chain (server certificate
    /// first); needs --tls-key.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The operator's certificate, if any; a non-loopback address without one
/// is refused unless `--insecure-listen`.
pub(super) fn serve_tls(args: &ServeArgs) -> Result<Option<crate::api::Tls>, CliError> {
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            crate::api::Tls::from_pem_files(cert, key)
                .map_err(|e| CliError::Usage(e.to_string()))?,
        ),
        _ => None,
    };
    if tls.is_none() && !args.listen.ip().is_loopback() && !args.insecure_listen {
        return Err(CliError::Usage(format!(
            "{} is not a loopback address and this server has no TLS; tokens would cross the network in clear text. Pass --tls-cert and --tls-key, listen on 127.0.0.1, or pass --insecure-listen to do it anyway",
            args.listen
        )));
    }
    Ok(tls)
}

pub(super) fn serve(
    vault: Vault,
    egress_allow: &[std::net::SocketAddr],
    args: ServeArgs,
    tls: Option<crate::api::Tls>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let config = runs::LaunchConfig {
        retry: runs::RetryPolicy {
            base: args.retry_base,
            max_attempts: args.retry_attempts,
            ..runs::RetryPolicy::default()
        },
        interaction_wait: args.interaction_wait,
        // Only the server opens login browsers: the owner streams them
        // through its API.
        browser: crate::browser::find_chromium(),
        ..launch_config(egress_allow)
    };
    match &config.browser {
        Some(browser) => tracing::info!(browser = %browser.display(), "login browser"),
        None => tracing::warn!(
            "no browser for logins (install Chromium or set SOURCEBOX_CHROMIUM): a connector asking for a login hears `unsupported`"
        ),
    }
    if let Some(token) = crate::tokens::ensure_owner_token(vault.store())? {
        // The one time it is shown; only its hash is kept.
        writeln_out(
            out,
            format_args!(
                "owner token (shown once, keep it safe): {}",
                String::from_utf8_lossy(token.expose_secret())
            ),
        )?;
    }
    let dir = vault.store().dir().to_owned();
    let launcher = launcher(vault, config)?;
    let scheduler = scheduler::SchedulerConfig {
        tick: args.tick,
        max_concurrent: args.max_concurrent.into(),
        per_connector: args.per_connector.into(),
        grace: args.grace,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Io(format!("cannot start the async runtime: {e}")))?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(args.listen))
        .map_err(|e| CliError::Io(format!("cannot listen on {}: {e}", args.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::Io(format!("cannot listen on {}: {e}", args.listen)))?;
    if tls.is_none() && !local.ip().is_loopback() {
        tracing::warn!(%local, "listening on a non-loopback address without TLS");
        writeln_out(
            out,
            format_args!("warning: {local} is reachable from the network and has no TLS"),
        )?;
    }
    let public_url = match &args.public_url {
        Some(url) => url.as_str().trim_end_matches('/').to_owned(),
        None => format!("{}://{local}", if tls.is_some() { "https" } else { "http" }),
    };
    // An OAuth client that sends the owner's browser elsewhere than this
    // server's callback cannot complete an authorization here.
    let callback = oauth::callback_url(&public_url);
    let elsewhere: Vec<oauth::ClientView> = {
        let vault = launcher.vault().lock().expect("vault lock");
        oauth::clients(vault.store())?
    }
    .into_iter()
    .filter(|c| c.redirect_uri != callback)
    .collect();
    for client in &elsewhere {
        tracing::error!(
            connector = client.connector,
            redirect_uri = client.redirect_uri,
            "the OAuth client's redirect URI is not this server's callback"
        );
        writeln_out(
            out,
            format_args!(
                "warning: the OAuth client of {} sends the browser back to {}, not to this server's {callback}; register it again with --redirect-uri {callback}, or start serve with the --public-url it was registered for",
                client.connector, client.redirect_uri
            ),
        )?;
    }
    writeln_out(
        out,
        format_args!(
            "sourcebox serving {} on {}://{local}: the HTTP API, scheduled and retried runs; stop with Ctrl-C",
            dir.display(),
            if tls.is_some() { "https" } else { "http" }
        ),
    )?;
    out.flush()
        .map_err(|e| CliError::Io(format!("cannot write output: {e}")))?;
    runtime.block_on(async {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let signal = async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {}
            }
            let _ = stop.send(true);
        };
        let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let app = crate::api::router(crate::api::Api::with_limits(
            Arc::clone(&launcher),
            crate::api::Limits {
                auth_failures: args.auth_failures,
                request_timeout: args.request_timeout,
                trusted_proxies: args.trusted_proxy.clone(),
                public_url: Some(public_url.clone()),
            },
        ));
        let server = crate::api::serve(listener, tls, app, wait(stopped.clone()), args.grace);
        let (_, (), scheduled) = tokio::join!(
            signal,
            server,
            scheduler::run(launcher, scheduler, wait(stopped))
        );
        scheduled.map_err(CliError::from)
    })?;
    writeln_out(out, format_args!("sourcebox stopped"))
}

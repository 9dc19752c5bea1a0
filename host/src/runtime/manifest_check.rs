//! What a connector may say about itself. Every manifest a component
//! describes is checked here before the host keeps it, so an install, a
//! review and every later load see only manifests that hold:
//!
//! - the id: 1 to 64 characters of `a-z`, `0-9` and `-`, starting with a
//!   letter and not ending with `-` (it names files and URL paths);
//! - stream, credential and setup field names: 1 to 64 characters of
//!   `a-z`, `0-9` and `_`, starting with a letter, unique in their list;
//!   primary-key fields: 1 to 64 characters, none of them control
//!   characters;
//! - the version: semantic versioning (`1.2.3`, `0.1.0-beta.1`);
//! - egress hosts and credential hosts: a DNS name (labels of `a-z`, `0-9`
//!   and `-`) or an IP literal; no wildcard, nothing empty; a setup field
//!   an egress entry names must be declared;
//! - patterns: regular expressions that compile within a size limit;
//! - text shown to the owner (name, labels, help, defaults): bounded, with
//!   no control or reordering characters;
//! - counts (streams, credentials, setup fields, hosts) and the whole
//!   manifest's size, bounded.
//!
//! One refusal lists every problem found.

use std::collections::HashSet;

use crate::contract::{EgressHost, Manifest};

/// Most streams, credentials, setup fields and egress hosts a manifest
/// may declare, and most hosts per credential.
const MAX_STREAMS: usize = 64;
const MAX_CREDENTIALS: usize = 16;
const MAX_SETUP_FIELDS: usize = 32;
const MAX_HOSTS: usize = 32;
/// Most fields in a stream's primary key.
const MAX_KEY_FIELDS: usize = 8;
/// Longest name (id, stream, field) and longest text shown to the owner.
const MAX_NAME: usize = 64;
const MAX_LABEL: usize = 200;
const MAX_HELP: usize = 2_000;
/// Longest pattern, and the most memory its compiled form may take.
const MAX_PATTERN: usize = 1_000;
const PATTERN_SIZE_LIMIT: usize = 256 * 1024;
/// Largest JSON schema of a stream, and of the whole manifest.
const MAX_SCHEMA: usize = 64 * 1024;
const MAX_MANIFEST: usize = 256 * 1024;

/// Every problem with `manifest`, or none.
pub fn problems(manifest: &Manifest) -> Vec<String> {
    let mut found = Vec::new();
    let mut problem = |p: String| found.push(p);

    let size = serde_json::to_vec(manifest).map_or(usize::MAX, |v| v.len());
    if size > MAX_MANIFEST {
        problem(format!(
            "the manifest is {size} bytes; at most {MAX_MANIFEST} are accepted"
        ));
    }
    if !is_id(&manifest.id) {
        problem(format!(
            "id '{}' is not 1 to {MAX_NAME} characters of a-z, 0-9 and '-', starting with a letter",
            shown(&manifest.id)
        ));
    }
    if semver::Version::parse(&manifest.version).is_err() {
        problem(format!(
            "version '{}' is not a semantic version such as 1.2.3",
            shown(&manifest.version)
        ));
    }
    text("the name", &manifest.name, 1, MAX_LABEL, &mut problem);

    count("streams", manifest.streams.len(), MAX_STREAMS, &mut problem);
    let mut names = HashSet::new();
    for stream in manifest.streams.iter().take(MAX_STREAMS) {
        let what = format!("stream '{}'", shown(&stream.name));
        name(&what, &stream.name, &mut names, &mut problem);
        if stream.primary_key.is_empty() || stream.primary_key.len() > MAX_KEY_FIELDS {
            problem(format!(
                "{what} has {} primary-key fields; it needs 1 to {MAX_KEY_FIELDS}",
                stream.primary_key.len()
            ));
        }
        for field in stream.primary_key.iter().take(MAX_KEY_FIELDS) {
            text(
                &format!("{what}'s primary-key field"),
                field,
                1,
                MAX_NAME,
                &mut problem,
            );
        }
        if stream.json_schema.len() > MAX_SCHEMA {
            problem(format!(
                "{what}'s JSON schema is {} bytes; at most {MAX_SCHEMA}",
                stream.json_schema.len()
            ));
        } else if !stream.json_schema.is_empty()
            && serde_json::from_str::<serde_json::Value>(&stream.json_schema).is_err()
        {
            problem(format!("{what}'s JSON schema is not JSON"));
        }
    }

    count(
        "credentials",
        manifest.credentials.len(),
        MAX_CREDENTIALS,
        &mut problem,
    );
    let mut names = HashSet::new();
    for field in manifest.credentials.iter().take(MAX_CREDENTIALS) {
        let what = format!("credential '{}'", shown(&field.name));
        let described = Described {
            name: &field.name,
            label: &field.label,
            help: &field.help,
            pattern: field.pattern.as_deref(),
        };
        described.check(&what, &mut names, &mut problem);
        count(
            &format!("{what}'s hosts"),
            field.hosts.len(),
            MAX_HOSTS,
            &mut problem,
        );
        for host in field.hosts.iter().take(MAX_HOSTS) {
            if !is_host(host) {
                problem(format!(
                    "{what}'s host '{}' is not a DNS name or an IP address",
                    shown(host)
                ));
            }
        }
    }

    let setup = &manifest.setup;
    count(
        "setup fields",
        setup.fields.len(),
        MAX_SETUP_FIELDS,
        &mut problem,
    );
    let mut names = HashSet::new();
    for field in setup.fields.iter().take(MAX_SETUP_FIELDS) {
        let what = format!("setup field '{}'", shown(&field.name));
        let described = Described {
            name: &field.name,
            label: &field.label,
            help: &field.help,
            pattern: field.pattern.as_deref(),
        };
        described.check(&what, &mut names, &mut problem);
        if let Some(value) = &field.default_value {
            text(
                &format!("{what}'s default"),
                value,
                0,
                MAX_HELP,
                &mut problem,
            );
        }
    }
    count("egress hosts", setup.egress.len(), MAX_HOSTS, &mut problem);
    for host in setup.egress.iter().take(MAX_HOSTS) {
        match host {
            EgressHost::Fixed(host) if !is_host(host) => problem(format!(
                "egress host '{}' is not a DNS name or an IP address",
                shown(host)
            )),
            EgressHost::FromSetupField(field) if !setup.fields.iter().any(|f| f.name == *field) => {
                problem(format!(
                    "egress names setup field '{}', which is not declared",
                    shown(field)
                ))
            }
            _ => {}
        }
    }
    found
}

/// What a credential and a setup field both declare for the owner.
struct Described<'a> {
    name: &'a str,
    label: &'a str,
    help: &'a str,
    pattern: Option<&'a str>,
}

impl Described<'_> {
    fn check(&self, what: &str, names: &mut HashSet<String>, problem: &mut impl FnMut(String)) {
        name(what, self.name, names, problem);
        text(
            &format!("{what}'s label"),
            self.label,
            1,
            MAX_LABEL,
            problem,
        );
        text(&format!("{what}'s help"), self.help, 0, MAX_HELP, problem);
        if let Some(p) = self.pattern {
            pattern(what, p, problem);
        }
    }
}

/// `s` as a problem quotes it: escaped, and cut.
fn shown(s: &str) -> String {
    crate::inert::text(s, MAX_NAME)
}

fn count(what: &str, n: usize, max: usize, problem: &mut impl FnMut(String)) {
    if n > max {
        problem(format!("{n} {what}; at most {max}"));
    }
}

fn name(what: &str, name: &str, seen: &mut HashSet<String>, problem: &mut impl FnMut(String)) {
    let mut chars = name.chars();
    let valid = (1..=MAX_NAME).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid {
        problem(format!(
            "{what}: a name is 1 to {MAX_NAME} characters of a-z, 0-9 and '_', starting with a letter"
        ));
    }
    if !seen.insert(name.to_owned()) {
        problem(format!("{what} is declared twice"));
    }
}

fn text(what: &str, s: &str, min: usize, max: usize, problem: &mut impl FnMut(String)) {
    let len = s.chars().count();
    if len < min || len > max {
        problem(format!(
            "{what} is {len} characters; it takes {min} to {max}"
        ));
    }
    if crate::inert::escape(s) != s {
        problem(format!(
            "{what} holds control or reordering characters: '{}'",
            shown(s)
        ));
    }
}

fn pattern(what: &str, p: &str, problem: &mut impl FnMut(String)) {
    if p.len() > MAX_PATTERN {
        problem(format!(
            "{what}'s pattern is {} bytes; at most {MAX_PATTERN}",
            p.len()
        ));
        return;
    }
    if let Err(e) = regex::RegexBuilder::new(p)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
    {
        let e = e.to_string();
        problem(format!(
            "{what}'s pattern does not compile: {}",
            crate::inert::text(e.lines().last().unwrap_or(&e), MAX_LABEL)
        ));
    }
}

fn is_id(id: &str) -> bool {
    (1..=MAX_NAME).contains(&id.len())
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && !id.ends_with('-')
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A DNS name of letters, digits and hyphens, or an IP literal.
fn is_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    (1..=253).contains(&name.len())
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{
        CredentialClass, CredentialField, Modality, SetupDescriptor, SetupField, Stream,
    };

    fn good() -> Manifest {
        Manifest {
            id: "github".into(),
            version: "0.1.0".into(),
            name: "GitHub".into(),
            streams: vec![Stream {
                name: "repositories".into(),
                primary_key: vec!["id".into()],
                json_schema: r#"{"type":"object"}"#.into(),
            }],
            credentials: vec![CredentialField {
                name: "token".into(),
                label: "Personal access token".into(),
                help: "Settings → Developer settings".into(),
                class: CredentialClass::Token,
                secret: true,
                required: true,
                pattern: Some("^gh[pousr]_[A-Za-z0-9]{36,}$".into()),
                hosts: vec!["api.github.com".into()],
            }],
            setup: SetupDescriptor {
                modalities: vec![Modality::StaticSecret],
                fields: vec![SetupField {
                    name: "api_base_url".into(),
                    label: "API base URL".into(),
                    help: String::new(),
                    required: false,
                    default_value: Some("https://api.github.com".into()),
                    pattern: None,
                }],
                egress: vec![
                    EgressHost::Fixed("api.github.com".into()),
                    EgressHost::Fixed("127.0.0.1".into()),
                    EgressHost::Fixed("::1".into()),
                    EgressHost::FromSetupField("api_base_url".into()),
                ],
            },
        }
    }

    #[test]
    fn a_sound_manifest_has_no_problems() {
        assert_eq!(problems(&good()), Vec::<String>::new());
    }

    #[test]
    fn each_problem_is_named() {
        type Change = fn(&mut Manifest);
        let table: &[(Change, &str)] = &[
            (|m| m.id = "../../x".into(), "id '../../x' is not"),
            (|m| m.id = "Github".into(), "id 'Github' is not"),
            (|m| m.id = "x-".into(), "id 'x-' is not"),
            (|m| m.id = String::new(), "id '' is not"),
            (|m| m.version = "banana".into(), "version 'banana' is not"),
            (
                |m| m.name = "GitHub\u{1b}[8m".into(),
                "the name holds control",
            ),
            (|m| m.name = String::new(), "the name is 0 characters"),
            (
                |m| m.setup.egress.push(EgressHost::Fixed("*".into())),
                "egress host '*' is not",
            ),
            (
                |m| m.setup.egress.push(EgressHost::Fixed(String::new())),
                "egress host '' is not",
            ),
            (
                |m| {
                    m.setup
                        .egress
                        .push(EgressHost::Fixed("*.github.com".into()))
                },
                "egress host '*.github.com' is not",
            ),
            (
                |m| {
                    m.setup
                        .egress
                        .push(EgressHost::Fixed("evil.com/x@a".into()))
                },
                "egress host 'evil.com/x@a' is not",
            ),
            (
                |m| {
                    m.setup
                        .egress
                        .push(EgressHost::FromSetupField("nowhere".into()))
                },
                "setup field 'nowhere', which is not declared",
            ),
            (
                |m| m.credentials[0].hosts.push("*".into()),
                "credential 'token''s host '*'",
            ),
            (
                |m| m.credentials[0].pattern = Some("(".into()),
                "pattern does not compile",
            ),
            (
                |m| m.credentials[0].pattern = Some("\\w{1000}{1000}".into()),
                "pattern does not compile",
            ),
            (
                |m| m.credentials[0].name = "../token".into(),
                "credential '../token': a name",
            ),
            (
                |m| m.credentials.push(m.credentials[0].clone()),
                "credential 'token' is declared twice",
            ),
            (
                |m| m.credentials[0].label = "ok\nforged".into(),
                "label holds control",
            ),
            (
                |m| m.streams[0].name = "Repos!".into(),
                "stream 'Repos!': a name",
            ),
            (|m| m.streams[0].primary_key.clear(), "0 primary-key fields"),
            (
                |m| m.streams[0].json_schema = "{".into(),
                "JSON schema is not JSON",
            ),
            (
                |m| {
                    let stream = m.streams[0].clone();
                    m.streams = (0..20_000)
                        .map(|i| Stream {
                            name: format!("s{i}"),
                            ..stream.clone()
                        })
                        .collect();
                },
                "20000 streams; at most 64",
            ),
            (
                |m| m.streams[0].json_schema = format!("\"{}\"", "x".repeat(300_000)),
                "the manifest is",
            ),
        ];
        for (change, expected) in table {
            let mut manifest = good();
            change(&mut manifest);
            let found = problems(&manifest);
            assert!(
                found.iter().any(|p| p.contains(expected)),
                "{expected}: {found:?}"
            );
        }
    }

    #[test]
    fn one_refusal_lists_every_problem() {
        let mut manifest = good();
        manifest.id = "../../x".into();
        manifest.version = "banana".into();
        manifest.setup.egress = vec![
            EgressHost::Fixed("*".into()),
            EgressHost::Fixed(String::new()),
        ];
        assert_eq!(problems(&manifest).len(), 4, "{:?}", problems(&manifest));
    }
}

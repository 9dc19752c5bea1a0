//! Outbound HTTP: only where allowed, with the host injecting the credential.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_goes_only_where_allowed_and_the_host_injects_the_token() {
    let mut w = world().await;
    let (addr, seen) = common::fixture_server().await;
    let url = format!("http://{addr}/data");
    let setup = [("count", "1"), ("url", url.as_str())];

    // Loopback is refused until the operator allows this exact address.
    match w.collect(&w.echo, "a", &setup, Limits::default()).await {
        Err(RunFailure::EgressDenied(why)) => assert!(why.contains("non-public"), "{why}"),
        other => panic!("expected egress_denied, got {other:?}"),
    }
    assert!(
        seen.lock().expect("seen").is_empty(),
        "nothing reached the fixture"
    );

    w.egress_allow = vec![addr];
    w.collect(&w.echo, "a", &setup, Limits::default())
        .await
        .expect("collect with http");
    let heads = seen.lock().expect("seen").clone();
    assert_eq!(heads.len(), 1);
    assert!(
        heads[0]
            .to_ascii_lowercase()
            .contains("authorization: bearer token-of-a"),
        "{}",
        heads[0]
    );
    assert!(
        !heads[0].to_ascii_lowercase().contains("x-sourcebox-bearer"),
        "the marker header is stripped"
    );
    let vault = w.vault.lock().expect("lock");
    let page: String = vault
        .store()
        .conn()
        .query_row("SELECT data FROM records WHERE stream = 'pages'", [], |r| {
            r.get(0)
        })
        .expect("page record");
    assert!(
        page.contains(r#"\"ok\":true"#) && page.contains("200"),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_http_is_refused_before_anything_is_sent() {
    let mut w = world().await;
    let (addr, seen) = common::fixture_server().await;
    w.egress_allow = vec![addr];
    let target = format!("http://{addr}/steal");
    let cases: &[(&str, &str)] = &[
        (
            "http-undeclared",
            "example.com is not a host this connector declared",
        ),
        (
            "http-metadata",
            "169.254.169.254 resolves to 169.254.169.254, a non-public address",
        ),
        ("http-loopback", "localhost resolves to"),
        (
            "steal-credential",
            "credential 'token' may not be sent to 127.0.0.1",
        ),
        ("http-userinfo", "carries user information before its host"),
    ];
    for (attack, expected) in cases {
        let setup = [("attack", *attack), ("target", target.as_str())];
        match w.collect(&w.hostile, "a", &setup, Limits::default()).await {
            Err(RunFailure::EgressDenied(why)) => {
                assert!(why.contains(expected), "{attack}: {why}")
            }
            other => panic!("{attack}: expected egress_denied, got {other:?}"),
        }
    }
    assert!(
        seen.lock().expect("seen").is_empty(),
        "no hostile request reached the fixture"
    );
}

//! Components compiled once and kept on disk; older contracts still run; incompatible ones are refused.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_built_against_contract_0_1_0_still_runs() {
    let w = world().await;
    let legacy = w
        .runtime
        .load(&std::fs::read(LEGACY).expect("legacy component"))
        .await
        .expect("a 0.1.0 component loads");
    assert_eq!(legacy.api_version(), "0.1.0");
    assert_eq!(legacy.manifest().id, "legacy");
    let outcome = w
        .collect(&legacy, "empty", &[("count", "4")], Limits::default())
        .await
        .expect("a 0.1.0 component runs");
    match outcome {
        Outcome::Collected(summary) => assert_eq!(summary.records, 4),
        other => panic!("expected a collection, got {other:?}"),
    }
    let stored = w.records("empty");
    assert_eq!(stored.len(), 4, "{stored:?}");
    assert!(stored.iter().all(|r| r["contract"] == "0.1.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compiled_component_is_kept_on_disk_and_a_damaged_one_is_compiled_again() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let w = world().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("compiled");
    let echo = std::fs::read(ECHO).expect("echo component");
    // What wasmtime's own cache left in this directory before, with its
    // permissions: removed, and the directory closed to other users.
    let stale = dir.join("modules/wasmtime-48.0.8");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("entry"), b"compressed artifact").unwrap();
    std::fs::write(dir.join(".cleanup.wip-1"), b"").unwrap();
    // And an artifact of another engine (an earlier build, say).
    std::fs::write(dir.join(format!("{:064x}-{:016x}.cwasm", 1, 2)), b"old").unwrap();
    // A writer that died two hours ago left its partial file; one that is
    // writing now has its own, which stays.
    let abandoned = std::fs::File::create(dir.join(".partial-dead")).unwrap();
    abandoned
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(2 * 3600))
        .unwrap();
    std::fs::write(dir.join(".partial-live"), b"being written").unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();

    Runtime::new(&dir)
        .expect("runtime")
        .load(&echo)
        .await
        .expect("compile and keep");
    assert!(
        dir.join(".partial-live").exists(),
        "a live writer's file stays"
    );
    std::fs::remove_file(dir.join(".partial-live")).unwrap();
    let files = compiled_files(&dir);
    assert_eq!(
        files.len(),
        1,
        "one artifact, no partial or stale files: {files:?}"
    );
    let artifact = &files[0];
    let digest = sourcebox::runtime::digest(&echo);
    let name = artifact.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with(&format!("{digest}-")) && name.ends_with(".cwasm"),
        "{name}"
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(artifact), 0o600);
    let kept = std::fs::metadata(artifact).unwrap().ino();

    // A fresh engine (another process, as far as the cache can tell) loads
    // the kept file: it is not written again.
    let runtime = Runtime::new(&dir).expect("runtime");
    let loaded = runtime.load(&echo).await.expect("load from disk");
    assert_eq!(loaded.manifest().id, w.echo.manifest().id);
    assert_eq!(std::fs::metadata(artifact).unwrap().ino(), kept);
    assert_eq!(compiled_files(&dir), files);
    runs_as_compiled(&w, &runtime, &loaded).await;

    // Damaged: compiled again, replaced whole, and the run still works.
    std::fs::write(artifact, b"not a compiled component").unwrap();
    let runtime = Runtime::new(&dir).expect("runtime");
    let loaded = runtime.load(&echo).await.expect("compiled again");
    let replaced = std::fs::metadata(artifact).unwrap().ino();
    assert_ne!(replaced, kept);
    assert_eq!(compiled_files(&dir), files);
    assert_eq!(mode(artifact), 0o600);
    runtime
        .run(
            &loaded,
            w.binding("a", &[], Limits::default()),
            Call::Verify,
        )
        .await
        .expect("the recompiled component runs");
    Runtime::new(&dir)
        .expect("runtime")
        .load(&echo)
        .await
        .expect("the replacement loads");
    assert_eq!(std::fs::metadata(artifact).unwrap().ino(), replaced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installed_connector_loads_from_its_compiled_copy_by_digest_alone() {
    let w = world().await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("compiled");
    let echo = std::fs::read(ECHO).expect("echo component");
    let digest = sourcebox::runtime::digest(&echo);
    let manifest = Arc::new(w.echo.manifest().clone());
    let api = w.echo.api_version().to_owned();

    // Nothing compiled yet: the caller is told to load the component.
    let runtime = Runtime::new(&dir).expect("runtime");
    let none = runtime
        .load_compiled(&digest, &api, Arc::clone(&manifest))
        .expect("no compiled copy is not an error");
    assert!(none.is_none());
    runtime.load(&echo).await.expect("compile and keep");

    // A fresh engine runs the compiled copy with the manifest it is given.
    let runtime = Runtime::new(&dir).expect("runtime");
    let loaded = runtime
        .load_compiled(&digest, &api, Arc::clone(&manifest))
        .expect("load")
        .expect("the compiled copy is found by digest");
    assert_eq!(loaded.manifest(), &*manifest);
    assert_eq!(loaded.api_version(), api);
    runs_as_compiled(&w, &runtime, &loaded).await;

    // Another digest has no compiled copy; a damaged copy is none either.
    assert!(
        runtime
            .load_compiled(&"0".repeat(64), &api, Arc::clone(&manifest))
            .expect("unknown digest")
            .is_none()
    );
    for file in compiled_files(&dir) {
        std::fs::write(file, b"not a compiled component").unwrap();
    }
    assert!(
        Runtime::new(&dir)
            .expect("runtime")
            .load_compiled(&digest, &api, Arc::clone(&manifest))
            .expect("damaged")
            .is_none()
    );

    // A contract version this host no longer serves is refused, naming both.
    match runtime.load_compiled(&digest, "0.0.9", manifest) {
        Err(RuntimeError::IncompatibleApi { component, host }) => {
            assert_eq!(component, "0.0.9");
            assert!(host.contains("0.1.1"), "{host}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_compiled_components_path_that_is_not_a_directory_is_refused_with_what_to_do() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("cache");
    std::fs::write(&path, b"a file").unwrap();
    match Runtime::new(&path) {
        Err(RuntimeError::Engine(message)) => {
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains("must be a directory"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), b"a file", "left as it was");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incompatible_api_version_is_refused_with_both_versions_named() {
    let w = world().await;
    let mut bytes = std::fs::read(ECHO).expect("echo");
    let marker = b"sourcebox:api-version";
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("section present")
        + marker.len();
    assert_eq!(&bytes[at..at + 5], b"0.1.1");
    bytes[at..at + 5].copy_from_slice(b"0.9.0");
    match w.runtime.load(&bytes).await {
        Err(e @ RuntimeError::IncompatibleApi { .. }) => {
            let message = e.to_string();
            assert!(
                message.contains("0.9.0") && message.contains("0.1.1"),
                "{message}"
            );
        }
        other => panic!("expected IncompatibleApi, got {other:?}"),
    }
}

/// Compiling a component (on a cache miss: a new install, an upgraded
/// host) takes long enough to stall every task queued on the worker it
/// runs on. On a multi-threaded runtime, such as the server's, the other
/// tasks go on meanwhile. Here the runtime has one worker, so a task that
/// ticks every millisecond can tick during the compile only if the
/// compile is off that worker.
#[test]
fn compiling_a_component_does_not_hold_up_the_other_tasks_of_its_worker() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio");
    let tmp = tempfile::tempdir().expect("tempdir");
    let runtime = Runtime::new(&tmp.path().join("compiled")).expect("runtime");
    let echo = std::fs::read(ECHO).expect("echo component");
    let ticks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ticking = Arc::clone(&ticks);
    rt.block_on(async move {
        let ticker = tokio::spawn(async move {
            loop {
                ticking.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        // Both tasks are on the one worker (the test's own future is not).
        let (during, ms) = tokio::spawn(async move {
            let before = ticks.load(std::sync::atomic::Ordering::Relaxed);
            let started = std::time::Instant::now();
            runtime.load(&echo).await.expect("compile");
            let ms = started.elapsed().as_millis();
            (
                ticks.load(std::sync::atomic::Ordering::Relaxed) - before,
                ms,
            )
        })
        .await
        .expect("load task");
        ticker.abort();
        assert!(
            during >= 5,
            "the other task ticked {during} times during a {ms} ms load"
        );
    });
}

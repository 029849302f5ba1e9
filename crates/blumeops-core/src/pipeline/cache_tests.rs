//! Step cache, parallel stages and zstd layers, on real steps in the sandbox (root only, like
//! the other evaluation tests; without root they print why and pass).

use std::path::Path;
use std::sync::{Arc, Mutex};

use super::eval_tests::{base, can_run, rt};
use super::*;
use crate::layer::{Compression, HostCopy};
use crate::store::Store;

/// What a build reported per step: (description, cache status), in finishing order, and
/// the order steps started and finished in.
#[derive(Default)]
struct Log {
    steps: Vec<(String, CacheStatus)>,
    order: Vec<String>,
    running: std::collections::HashMap<usize, String>,
}

fn engine(store: &Path, opts: impl FnOnce(&mut EngineOptions)) -> (Engine, Arc<Mutex<Log>>) {
    let log = Arc::new(Mutex::new(Log::default()));
    let mut o = EngineOptions::new(Store::open(store).unwrap());
    o.epoch = 1_700_000_000;
    let l = log.clone();
    o.progress = Some(Arc::new(move |e: &Event| {
        let mut log = l.lock().unwrap();
        match e {
            Event::StepStarted {
                index, description, ..
            } => {
                log.running.insert(*index, description.clone());
                log.order.push(format!("start {description}"));
            }
            Event::StepFinished { index, cache, .. } => {
                let d = log.running.remove(index).unwrap();
                log.order.push(format!("end {d}"));
                log.steps.push((d, cache.clone()));
            }
            _ => {}
        }
    }));
    opts(&mut o);
    (Engine::new(o).unwrap(), log)
}

fn statuses(log: &Arc<Mutex<Log>>, contains: &str) -> Vec<CacheStatus> {
    let log = std::mem::take(&mut *log.lock().unwrap());
    log.steps
        .into_iter()
        .filter(|(d, _)| d.contains(contains))
        .map(|(_, s)| s)
        .collect()
}

fn ran(status: &CacheStatus) -> Option<&str> {
    match status {
        CacheStatus::Ran { reason } => Some(reason),
        _ => None,
    }
}

fn layer_digests(built: &BuiltImage) -> Vec<String> {
    built
        .image
        .layers
        .iter()
        .map(|l| l.digest.to_string())
        .collect()
}

/// A pipeline with a host copy between two commands; the second command's output depends
/// on the copied file, the first's does not.
fn app(src: &Path) -> Container {
    base()
        .with_exec(["sh", "-c", "echo prepared > /prepared"])
        .with_directory("/app", src, HostCopy::default())
        .with_exec([
            "sh",
            "-c",
            "cat /app/*.txt > /combined; head -c 8 /dev/urandom > /noise",
        ])
        .with_label("built", "yes")
}

#[test]
fn unchanged_rebuild_runs_nothing_and_one_changed_file_reruns_only_what_follows() {
    if !can_run() {
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("a.txt"), "a\n").unwrap();
    std::fs::write(src.path().join("b.txt"), "b\n").unwrap();
    let rt = rt();

    let (e, log) = engine(store.path(), |_| {});
    let cold = rt.block_on(app(src.path()).build(&e)).unwrap();
    let first = statuses(&log, "");
    assert!(
        first.iter().all(|s| !matches!(s, CacheStatus::Hit)),
        "empty cache: nothing cached"
    );
    assert!(
        first
            .iter()
            .filter_map(ran)
            .all(|r| r.contains("not in the cache")),
        "{first:?}"
    );

    // Nothing changed: every layer step is a hit and the image is identical, although the
    // last command writes random bytes.
    let warm = rt.block_on(app(src.path()).build(&e)).unwrap();
    assert_eq!(warm.image.manifest.digest, cold.image.manifest.digest);
    let second = statuses(&log, "");
    assert!(second.iter().all(|s| ran(s).is_none()), "{second:?}");
    assert_eq!(
        second
            .iter()
            .filter(|s| matches!(s, CacheStatus::Hit))
            .count(),
        5,
        "busybox copy, install, prepare, app copy, cat: {second:?}"
    );

    // One file changed: the steps before the copy are cached, the copy and the command
    // after it run, and the copy says which file changed.
    std::fs::write(src.path().join("b.txt"), "B\n").unwrap();
    let changed = rt.block_on(app(src.path()).build(&e)).unwrap();
    let log3 = std::mem::take(&mut *log.lock().unwrap());
    let by_step = |needle: &str| {
        log3.steps
            .iter()
            .find(|(d, _)| d.contains(needle))
            .map(|(_, s)| s.clone())
            .unwrap()
    };
    assert_eq!(by_step("echo prepared"), CacheStatus::Hit);
    assert_eq!(
        ran(&by_step("with_directory /app")),
        Some("files changed: app/b.txt (changed)")
    );
    assert_eq!(
        ran(&by_step("cat /app")),
        Some("an earlier step's result changed")
    );
    let (old, new) = (layer_digests(&cold), layer_digests(&changed));
    let differing = old.iter().zip(&new).filter(|(a, b)| a != b).count();
    assert_eq!(old.len(), new.len());
    assert_eq!(differing, 2, "the copy and the command after it");
    assert_eq!(
        rt.block_on(app(src.path()).file(&e, "/combined")).unwrap(),
        b"a\nB\n"
    );
}

#[test]
fn a_step_that_reruns_with_the_same_result_leaves_later_steps_cached() {
    if !can_run() {
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let rt = rt();
    let pipeline = || {
        base()
            .with_exec(["sh", "-c", "echo same > /same"])
            .with_exec(["sh", "-c", "head -c 8 /dev/urandom > /noise"])
    };
    let (e, log) = engine(store.path(), |_| {});
    let first = rt.block_on(pipeline().build(&e)).unwrap();
    log.lock().unwrap().steps.clear();

    let (busted, log) = engine(store.path(), |o| o.cache.bust = vec!["echo same".into()]);
    let second = rt.block_on(pipeline().build(&busted)).unwrap();
    let steps = std::mem::take(&mut log.lock().unwrap().steps);
    let status = |needle: &str| {
        steps
            .iter()
            .find(|(d, _)| d.contains(needle))
            .map(|(_, s)| s.clone())
            .unwrap()
    };
    assert_eq!(
        ran(&status("echo same")),
        Some("cache busted for steps matching `echo same`")
    );
    // Same result, so the random step is reused, and the image is the same.
    assert_eq!(status("urandom"), CacheStatus::Hit);
    assert_eq!(second.image.manifest.digest, first.image.manifest.digest);

    let (nocache, log) = engine(store.path(), |o| o.cache.disabled = true);
    let third = rt.block_on(pipeline().build(&nocache)).unwrap();
    let steps = std::mem::take(&mut log.lock().unwrap().steps);
    assert!(
        steps.iter().all(|(_, s)| !matches!(s, CacheStatus::Hit)),
        "{steps:?}"
    );
    assert_ne!(
        third.image.manifest.digest, first.image.manifest.digest,
        "the random step ran again"
    );
}

#[test]
fn cached_exec_keeps_its_stdout() {
    if !can_run() {
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let rt = rt();
    let c = base().with_exec(["sh", "-c", "echo out-$((6*7))"]);
    let (e, log) = engine(store.path(), |_| {});
    assert_eq!(rt.block_on(c.stdout(&e)).unwrap(), "out-42\n");
    log.lock().unwrap().steps.clear();
    assert_eq!(rt.block_on(c.stdout(&e)).unwrap(), "out-42\n");
    assert_eq!(statuses(&log, "out-"), [CacheStatus::Hit]);
}

#[test]
fn independent_stages_run_concurrently_within_jobs() {
    if !can_run() {
        return;
    }
    let rt = rt();
    let build = |jobs: usize| {
        let store = tempfile::tempdir().unwrap();
        let (e, log) = engine(store.path(), |o| o.jobs = jobs);
        let stage =
            |name: &str| base().with_exec(["sh", "-c", &format!("sleep 1; echo {name} > /{name}")]);
        let (a, b) = (stage("left"), stage("right"));
        let fin = base()
            .with_file_from("/left", &a, "/left", CopyOptions::default())
            .with_file_from("/right", &b, "/right", CopyOptions::default());
        rt.block_on(fin.build(&e)).unwrap();
        let order = std::mem::take(&mut log.lock().unwrap().order);
        // Did one stage's command start before the other's finished?
        let pos = |s: &str| order.iter().position(|o| o == s).unwrap();
        let (l, r) = (
            "with_exec sh -c 'sleep 1; echo left > /left'",
            "with_exec sh -c 'sleep 1; echo right > /right'",
        );
        let overlap = pos(&format!("start {r}")) < pos(&format!("end {l}"))
            && pos(&format!("start {l}")) < pos(&format!("end {r}"));
        (overlap, order)
    };
    let (overlap, order) = build(2);
    assert!(overlap, "two jobs: the stages overlap: {order:#?}");
    let (overlap, order) = build(1);
    assert!(!overlap, "one job: one step at a time: {order:#?}");
}

#[test]
fn the_same_step_in_two_stages_runs_once() {
    if !can_run() {
        return;
    }
    let store = tempfile::tempdir().unwrap();
    let rt = rt();
    let (e, log) = engine(store.path(), |o| o.jobs = 2);
    // Two separately built, identical stages: different nodes, the same keys.
    let stage = || base().with_exec(["sh", "-c", "sleep 1; head -c 8 /dev/urandom > /r"]);
    let (a, b) = (stage(), stage());
    let fin = Container::scratch()
        .with_file_from("/a", &a, "/r", CopyOptions::default())
        .with_file_from("/b", &b, "/r", CopyOptions::default());
    rt.block_on(fin.build(&e)).unwrap();
    let steps = statuses(&log, "urandom");
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert_eq!(
        steps.iter().filter(|s| ran(s).is_some()).count(),
        1,
        "{steps:?}"
    );
    // Both copies hold the same random bytes: the second stage reused the first's layer.
    assert_eq!(
        rt.block_on(fin.file(&e, "/a")).unwrap(),
        rt.block_on(fin.file(&e, "/b")).unwrap()
    );
}

#[test]
fn zstd_layers_are_deterministic_and_usable_by_later_steps() {
    if !can_run() {
        return;
    }
    let rt = rt();
    let build = || {
        let store = tempfile::tempdir().unwrap();
        let (e, _) = engine(store.path(), |o| o.compression = Compression::Zstd);
        let c = base().with_exec(["sh", "-c", "echo z > /z && cat /z"]);
        let built = rt.block_on(c.build(&e)).unwrap();
        assert_eq!(rt.block_on(c.stdout(&e)).unwrap(), "z\n");
        built
    };
    let (one, two) = (build(), build());
    assert_eq!(one.image.manifest.digest, two.image.manifest.digest);
    assert!(
        one.image
            .layers
            .iter()
            .all(|l| l.media_type == crate::image::media_types::OCI_LAYER_ZSTD),
        "{:?}",
        one.image.layers
    );
}

/// The reason of every step that ran, by description (without its details in brackets).
fn reasons(log: &Arc<Mutex<Log>>) -> Vec<(String, String)> {
    let log = std::mem::take(&mut *log.lock().unwrap());
    log.steps
        .into_iter()
        .filter_map(|(d, s)| {
            let short = d.split(" (").next().unwrap_or_default().to_owned();
            ran(&s).map(|r| (short, r.to_owned()))
        })
        .collect()
}

/// Reasons compare a step with the same step of the same stage of the same container:
/// another container on the same base is a first build, an inserted step is new and the
/// steps after it say their parent changed, a changed step says its definition changed,
/// and a new stage is a first build. (File steps only: no sandbox needed.)
#[test]
fn reasons_compare_with_the_same_step_of_the_same_container_and_stage() {
    let store = tempfile::tempdir().unwrap();
    let rt = rt();
    let build = |name: &str, c: Container| {
        let (e, log) = engine(store.path(), |o| o.container_name = name.to_owned());
        rt.block_on(c.build(&e)).unwrap();
        reasons(&log)
    };
    let file = |c: Container, p: &str, body: &str| c.with_new_file(p, body, 0o644);
    let first = "not in the cache (first build of this step)";

    let one = file(file(Container::scratch(), "/a", "a"), "/b", "b");
    assert_eq!(
        build("one", one),
        [
            ("with_new_file /a".to_owned(), first.to_owned()),
            ("with_new_file /b".to_owned(), first.to_owned())
        ]
    );
    // Same base, same kinds of steps, another container: its own first build.
    let two = file(Container::scratch(), "/x", "x");
    assert_eq!(
        build("two", two),
        [("with_new_file /x".to_owned(), first.to_owned())]
    );
    // A step inserted between /a and /b.
    let inserted = file(
        file(file(Container::scratch(), "/a", "a"), "/new", "n"),
        "/b",
        "b",
    );
    assert_eq!(
        build("one", inserted),
        [
            ("with_new_file /new".to_owned(), "new step".to_owned()),
            (
                "with_new_file /b".to_owned(),
                "an earlier step's result changed".to_owned()
            )
        ]
    );
    // /b's contents changed (compared with the build just before, which had /new).
    let changed = file(
        file(file(Container::scratch(), "/a", "a"), "/new", "n"),
        "/b",
        "B",
    );
    assert_eq!(
        build("one", changed.clone()),
        [(
            "with_new_file /b".to_owned(),
            "the step's definition changed".to_owned()
        )]
    );
    // A stage added (copied from): its steps are a first build; the final stage's copy is
    // a new step and what follows it is cached.
    let tool = file(Container::scratch(), "/tool", "t");
    let with_stage = changed.with_file_from("/tool", &tool, "/tool", CopyOptions::default());
    assert_eq!(
        build("one", with_stage),
        [
            ("with_new_file /tool".to_owned(), first.to_owned()),
            (
                "with_file /tool from another container's /tool".to_owned(),
                "new step".to_owned()
            ),
        ]
    );
}

/// Alignment inside a gap: an inserted step in front of an edited one is the new step,
/// and the edited one is paired with what it was (the most alike of the same kind).
#[test]
fn an_inserted_step_before_an_edited_one_is_the_new_one() {
    use crate::reference::Digest;
    use crate::store::{StageRecord, StepInputsRecord};
    let step = |d: &str| (Digest::of(d.as_bytes()), d.to_owned());
    let record = |steps: &[(Digest, String)]| {
        StageRecord::new(
            steps
                .iter()
                .map(|(operation, description)| StepInputsRecord {
                    operation: operation.clone(),
                    description: description.clone(),
                    key: operation.clone(),
                    inputs: Vec::new(),
                })
                .collect(),
        )
    };
    let (a, b, c) = (
        step("from busybox"),
        step("with_exec make -j4 all"),
        step("with_label x=y"),
    );
    let old = record(&[a.clone(), b.clone(), c.clone()]);
    let now = [
        a.clone(),
        step("with_exec apk add git"),
        step("with_exec make -j8 all"),
        c.clone(),
    ];
    let was = |p: &cache::Previous| match p {
        cache::Previous::Was(r) => Some(r.description.clone()),
        _ => None,
    };
    let aligned = cache::align(Some(&old), &now);
    assert_eq!(
        aligned.iter().map(was).collect::<Vec<_>>(),
        [
            Some(a.1.clone()),
            None,
            Some(b.1.clone()),
            Some(c.1.clone())
        ]
    );
    assert_eq!(aligned[1], cache::Previous::NewStep);
    // A step of another kind in the place of a removed one is new, not an edit.
    let now = [a.clone(), step("with_new_file /x (1 bytes)"), c.clone()];
    assert_eq!(cache::align(Some(&old), &now)[1], cache::Previous::NewStep);
    assert_eq!(
        cache::align(None, &now),
        vec![cache::Previous::FirstBuild; 3]
    );
}

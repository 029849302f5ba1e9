//! The step cache: keys, lookups and the reason a step ran again.
//!
//! A step's key is a hash ([`FieldHasher`], versioned by [`KEY_VERSION`]) of its named
//! inputs: the state before it (`parent`), the operation with its arguments (`operation`),
//! the build settings that shape a layer (`settings`: epoch and compression), the content of
//! copied host files (`files`, after include/exclude and `.dockerignore`) or of a mounted
//! host directory, and the state of a stage it copies or mounts from (`source`). Secret
//! values, cache-volume and temp mount contents are never inputs: only a secret's name and
//! a volume's name and mount path are.
//!
//! The state after a step is keyed by the step's key *and its result* (the layer's
//! diff_id), so a step that runs again and produces the same layer leaves every later step
//! cached, and a later step is never reused on top of a different layer.

use std::collections::BTreeMap;

use super::Op;
use super::exec::{Expect, Network};
use crate::fields::FieldHasher;
use crate::layer::{Compression, HostCopy};
use crate::reference::Digest;
use crate::store::{StageRecord, StepInputsRecord, Store};

/// Version of the key format. Bump it whenever what a key covers, or how, changes.
pub(crate) const KEY_VERSION: &str = "blumeops step key v2";

/// How a build uses the step cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheOptions {
    /// Run every step, whatever the cache holds (`--no-cache`). Results are still saved.
    pub disabled: bool,
    /// Run the steps whose description contains one of these (`--no-cache-step`), and
    /// reuse what follows them when their result is unchanged.
    pub bust: Vec<String>,
}

impl CacheOptions {
    /// Why a step with `description` must run even when cached, if it must.
    pub(crate) fn busted(&self, description: &str) -> Option<String> {
        if self.disabled {
            return Some("cache disabled (--no-cache)".to_owned());
        }
        self.bust
            .iter()
            .find(|b| description.contains(b.as_str()))
            .map(|b| format!("cache busted for steps matching `{b}`"))
    }
}

/// What the cache did for one step (reported with [`super::Event::StepFinished`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheStatus {
    /// The step's result came from the cache; it did not run.
    Hit,
    /// The step's result came from the registry cache (another machine's build); it did
    /// not run.
    Imported,
    /// The step ran; `reason` says why (which input changed, or that it was never run).
    Ran {
        /// e.g. "files changed: app/main.go".
        reason: String,
    },
    /// The step only changes the image config: nothing to cache.
    Config,
}

/// The named inputs of one step.
#[derive(Debug, Clone)]
pub(crate) struct StepInputs {
    pub(crate) parts: Vec<(String, Digest)>,
    /// Per-file digests of a host copy (saved to explain a later change).
    pub(crate) files: Option<BTreeMap<String, Digest>>,
}

impl StepInputs {
    pub(crate) fn new(parent: &Digest, operation: Digest) -> Self {
        Self {
            parts: vec![
                ("parent".to_owned(), parent.clone()),
                ("operation".to_owned(), operation),
            ],
            files: None,
        }
    }

    pub(crate) fn with(mut self, name: &str, digest: Digest) -> Self {
        self.parts.push((name.to_owned(), digest));
        self
    }

    /// The step's key.
    pub(crate) fn key(&self) -> Digest {
        let mut h = FieldHasher::new(KEY_VERSION);
        h.u64(self.parts.len() as u64);
        for (name, digest) in &self.parts {
            h.str(name).digest(digest);
        }
        h.finish()
    }
}

/// The build settings every layer depends on.
pub(crate) fn settings(epoch: u64, compression: Compression) -> Digest {
    let mut h = FieldHasher::new("settings");
    h.u64(epoch)
        .str(compression.media_type())
        .str(crate::layer::LAYER_FORMAT);
    h.finish()
}

/// The state key after a step with `key` produced `layer` (a diff_id, or none).
pub(crate) fn state_after(key: &Digest, layer: Option<&Digest>) -> Digest {
    let mut h = FieldHasher::new("state");
    h.digest(key);
    match layer {
        Some(d) => h.digest(d),
        None => h.str("no layer"),
    };
    h.finish()
}

/// What a step is compared with to say why it ran: the same step of the same stage of the
/// same container in the last build that finished that stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Previous {
    /// The container's stage was never built (with this store).
    FirstBuild,
    /// The stage was built, but without this step: it was inserted since.
    NewStep,
    /// The step as it was last built.
    Was(StepInputsRecord),
}

/// Where the history of a container's stage is kept: by the container's name and the
/// stage's history key (see `plan::Planner::history_keys`).
pub(crate) fn stage_history(container: &str, stage_key: &str) -> Digest {
    let mut h = FieldHasher::new("stage history");
    h.str(container).str(stage_key);
    h.finish()
}

/// For each step of a stage now (operation digest, description), what it was last time:
/// the longest common subsequence of the two lists pairs up unchanged operations; between
/// two such pairs, a new step is paired with the old step of the same kind it resembles
/// most (an edited step: "definition changed"), and new steps left over were inserted.
pub(crate) fn align(old: Option<&StageRecord>, now: &[(Digest, String)]) -> Vec<Previous> {
    let Some(old) = old else {
        return vec![Previous::FirstBuild; now.len()];
    };
    let was: Vec<&Digest> = old.steps.iter().map(|s| &s.operation).collect();
    let (n, m) = (was.len(), now.len());
    // lcs[i][j]: the longest common subsequence of was[i..] and now[j..].
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if was[i] == &now[j].0 {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = vec![Previous::NewStep; m];
    let (mut i, mut j) = (0, 0);
    // Unmatched steps since the last pair, old and new.
    let (mut gap_old, mut gap_now) = (Vec::new(), Vec::new());
    while i < n || j < m {
        if i < n && j < m && was[i] == &now[j].0 {
            pair_gap(old, now, &mut gap_old, &mut gap_now, &mut out);
            out[j] = Previous::Was(old.steps[i].clone());
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            gap_now.push(j);
            j += 1;
        } else {
            gap_old.push(i);
            i += 1;
        }
    }
    pair_gap(old, now, &mut gap_old, &mut gap_now, &mut out);
    out
}

/// Pair the unmatched steps between two matched ones: same kind (the description's first
/// word), most alike first (the longest common start plus end of the descriptions).
fn pair_gap(
    old: &StageRecord,
    now: &[(Digest, String)],
    gap_old: &mut Vec<usize>,
    gap_now: &mut Vec<usize>,
    out: &mut [Previous],
) {
    let kind = |d: &str| d.split(' ').next().unwrap_or_default().to_owned();
    let alike = |a: &str, b: &str| {
        let start = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
        let end = a
            .chars()
            .rev()
            .zip(b.chars().rev())
            .take_while(|(x, y)| x == y)
            .count();
        start + end
    };
    let mut candidates = Vec::new();
    for (rank_o, o) in gap_old.iter().enumerate() {
        for (rank_n, k) in gap_now.iter().enumerate() {
            let (a, b) = (&old.steps[*o].description, &now[*k].1);
            if kind(a) == kind(b) {
                candidates.push((std::cmp::Reverse(alike(a, b)), rank_n, rank_o, *o, *k));
            }
        }
    }
    candidates.sort();
    let (mut used_old, mut used_now) = (Vec::new(), Vec::new());
    for (_, _, _, o, k) in candidates {
        if !used_old.contains(&o) && !used_now.contains(&k) {
            out[k] = Previous::Was(old.steps[o].clone());
            used_old.push(o);
            used_now.push(k);
        }
    }
    gap_old.clear();
    gap_now.clear();
}

/// Why a step with these inputs ran, compared with what it was last time.
pub(crate) fn explain(store: &Store, previous: &Previous, inputs: &StepInputs) -> String {
    let last = match previous {
        Previous::FirstBuild => return "not in the cache (first build of this step)".to_owned(),
        Previous::NewStep => return "new step".to_owned(),
        Previous::Was(last) => last,
    };
    if last.key == inputs.key() {
        return "its cached result is gone (pruned, or evicted by the size limit)".to_owned();
    }
    let old: BTreeMap<&str, &Digest> = last.inputs.iter().map(|(n, d)| (n.as_str(), d)).collect();
    let mut changed = Vec::new();
    for (name, digest) in &inputs.parts {
        if old.get(name.as_str()) == Some(&digest) {
            continue;
        }
        changed.push(match name.as_str() {
            "parent" => "an earlier step's result changed".to_owned(),
            "operation" => "the step's definition changed".to_owned(),
            "settings" => "the build epoch or compression changed".to_owned(),
            "source" => "the stage it copies from changed".to_owned(),
            "files" => files_changed(store, old.get("files").copied(), inputs),
            other => format!("{other} changed"),
        });
    }
    if changed.is_empty() {
        "inputs changed".to_owned()
    } else {
        changed.join("; ")
    }
}

/// Most changed paths named in a reason.
const MAX_NAMED_FILES: usize = 5;

fn files_changed(store: &Store, old: Option<&Digest>, inputs: &StepInputs) -> String {
    let (Some(old), Some(new)) = (old.and_then(|d| store.file_digests(d)), &inputs.files) else {
        return "copied files changed".to_owned();
    };
    let mut names = Vec::new();
    for (path, digest) in new {
        match old.get(path) {
            None => names.push(format!("{path} (added)")),
            Some(d) if d != digest => names.push(format!("{path} (changed)")),
            Some(_) => {}
        }
    }
    names.extend(
        old.keys()
            .filter(|p| !new.contains_key(*p))
            .map(|p| format!("{p} (removed)")),
    );
    let total = names.len();
    names.truncate(MAX_NAMED_FILES);
    let more = total.saturating_sub(MAX_NAMED_FILES);
    let mut text = format!("files changed: {}", names.join(", "));
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::From(..) => "from",
        Op::Scratch(_) => "scratch",
        Op::ScratchDefaultPath(_) => "scratch-path",
        Op::NewFile { .. } => "new-file",
        Op::HostFile { .. } => "host-file",
        Op::HostDirectory { .. } => "host-directory",
        Op::Env(..) => "env",
        Op::Workdir(_) => "workdir",
        Op::User(_) => "user",
        Op::Label(..) => "label",
        Op::Annotation(..) => "annotation",
        Op::ExposedPort(..) => "exposed-port",
        Op::Entrypoint(_) => "entrypoint",
        Op::DefaultArgs(_) => "default-args",
        Op::Exec { .. } => "exec",
        Op::MountCache { .. } => "mount-cache",
        Op::SecretVariable(_) => "secret-variable",
        Op::UnsetSecretVariable(_) => "unset-secret-variable",
        Op::MountSecret { .. } => "mount-secret",
        Op::MountHostDirectory { .. } => "mount-host-directory",
        Op::MountDirectoryFrom { .. } => "mount-directory-from",
        Op::MountTemp { .. } => "mount-temp",
        Op::CopyFrom { .. } => "copy-from",
        Op::Remove { .. } => "remove",
        Op::Volume(_) => "volume",
        Op::StopSignal(_) => "stop-signal",
        Op::Healthcheck(_) => "healthcheck",
        Op::Shell(_) => "shell",
        Op::Author(_) => "author",
        Op::OnBuild(_) => "onbuild",
        Op::EnvExpand(..) => "env-expand",
        Op::EnvExpandAll(_) => "env-expand-all",
        Op::Unmount(_) => "unmount",
        Op::CopyPathFrom { .. } => "copy-path-from",
        Op::HttpFile { .. } => "http-file",
        Op::HostArchive { .. } => "host-archive",
        Op::GitRepository { .. } => "git-repository",
    }
}

fn host_copy(h: &mut FieldHasher, opts: &HostCopy) {
    // The owner, mode and include/exclude shape the fingerprint of the copied entries,
    // which is what counts: include/exclude are left out here because `.dockerignore`
    // patterns are made by listing the checkout (a file that is ignored in one checkout
    // and absent from another, such as a build context without it, gives other patterns
    // for the same layer). An owner given by name is resolved later, in the image, so it
    // counts here.
    h.opt_str(opts.owner_name.as_deref())
        .bool(opts.preserve_owners);
}

/// The operation with its arguments. Host paths are left out (their content counts, via
/// `files`), and so are secret values.
pub(crate) fn operation(op: &Op) -> Digest {
    let mut h = FieldHasher::new("operation");
    h.str(op_name(op));
    match op {
        Op::From(reference, platform) => {
            h.str(reference)
                .opt_str(platform.as_ref().map(ToString::to_string).as_deref());
        }
        Op::Scratch(platform) | Op::ScratchDefaultPath(platform) => {
            h.opt_str(platform.as_ref().map(ToString::to_string).as_deref());
        }
        Op::NewFile {
            path,
            contents,
            mode,
            owner,
        } => {
            h.str(path)
                .digest(&Digest::of(contents))
                .u64((*mode).into())
                .u64(owner.uid.into())
                .u64(owner.gid.into());
        }
        Op::HostFile { path, opts, .. }
        | Op::HostDirectory { path, opts, .. }
        | Op::HostArchive { path, opts, .. } => {
            h.str(path);
            host_copy(&mut h, opts);
            if let Op::HostArchive { .. } = op {
                // Archive entries are extracted with the requested owner and mode.
                h.opt_u64(
                    opts.owner
                        .map(|o| (u64::from(o.uid) << 32) | u64::from(o.gid)),
                )
                .opt_u64(opts.mode.map(u64::from));
            }
        }
        Op::Env(k, v) | Op::Label(k, v) | Op::Annotation(k, v) | Op::EnvExpand(k, v) => {
            h.str(k).str(v);
        }
        Op::EnvExpandAll(pairs) => {
            h.u64(pairs.len() as u64);
            for (k, v) in pairs {
                h.str(k).str(v);
            }
        }
        Op::Workdir(s)
        | Op::User(s)
        | Op::Volume(s)
        | Op::StopSignal(s)
        | Op::Author(s)
        | Op::OnBuild(s)
        | Op::Unmount(s) => {
            h.str(s);
        }
        Op::ExposedPort(port, proto) => {
            h.u64((*port).into()).str(proto);
        }
        Op::Entrypoint(a) | Op::DefaultArgs(a) | Op::Shell(a) => {
            h.strs(a);
        }
        Op::Healthcheck(hc) => {
            h.str(&hc.to_json().to_string());
        }
        Op::Exec { args, opts } => {
            h.strs(args);
            match &opts.expect {
                Expect::Success => h.str("success"),
                Expect::Failure => h.str("failure"),
                Expect::Any => h.str("any"),
                Expect::Codes(codes) => {
                    h.str("codes").u64(codes.len() as u64);
                    for c in codes {
                        h.i64((*c).into());
                    }
                    &mut h
                }
            };
            match &opts.stdin {
                None => h.str("no stdin"),
                Some(bytes) => h.str("stdin").digest(&Digest::of(bytes)),
            };
            h.u64(opts.env.len() as u64);
            for (k, v) in &opts.env {
                h.str(k).str(v);
            }
            h.str(match opts.network {
                Network::Isolated => "isolated",
                Network::Host => "host",
                Network::None => "none",
            });
        }
        Op::MountCache { path, volume } => {
            h.str(path).str(volume.name());
        }
        // The name only: the value must never reach a key.
        Op::SecretVariable(v) => {
            h.str(&v.name);
        }
        Op::UnsetSecretVariable(name) => {
            h.str(name);
        }
        // The secret's name only, as for a variable.
        Op::MountSecret { path, opts, .. } => {
            h.str(path)
                .str(&opts.name)
                .u64(opts.mode.into())
                .u64(opts.uid.into())
                .u64(opts.gid.into());
        }
        // The directory's content counts too: `files` (host) or `source` (a container).
        Op::MountHostDirectory { path, opts, .. } => {
            h.str(path).bool(opts.writable);
        }
        Op::MountDirectoryFrom {
            path,
            src_path,
            opts,
            ..
        } => {
            h.str(path).str(src_path).bool(opts.writable);
        }
        // An empty file system: nothing but where it is.
        Op::MountTemp { path, .. } => {
            h.str(path);
        }
        Op::CopyFrom {
            path,
            src_path,
            opts,
            directory,
            ..
        } => {
            h.str(path).str(src_path).bool(*directory);
            copy_options(&mut h, opts);
        }
        Op::CopyPathFrom {
            path,
            src_path,
            opts,
            ..
        } => {
            h.str(path).str(src_path);
            copy_options(&mut h, opts);
        }
        Op::Remove { path, directory } => {
            h.str(path).bool(*directory);
        }
        Op::HttpFile {
            path,
            url,
            checksum,
            opts,
        } => {
            h.str(path);
            // A pinned checksum names the content; without one the step always downloads.
            match checksum {
                Some(c) => h.digest(c),
                None => h.str(url),
            };
            copy_options(&mut h, opts);
        }
        Op::GitRepository {
            path,
            url,
            reference,
            keep_git_dir,
            opts,
        } => {
            h.str(path)
                .str(url)
                .opt_str(reference.as_deref())
                .bool(*keep_git_dir);
            copy_options(&mut h, opts);
        }
    }
    h.finish()
}

fn copy_options(h: &mut FieldHasher, opts: &super::CopyOptions) {
    h.opt_str(opts.owner.as_deref())
        .opt_u64(opts.mode.map(u64::from))
        .strs(&opts.include)
        .strs(&opts.exclude);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{Container, ExecOptions};
    use crate::secret::Secret;

    fn last_op(c: &Container) -> Op {
        c.node.op.clone()
    }

    #[test]
    fn secret_values_stay_out_of_keys() {
        let base = Container::scratch();
        let a = base.with_secret_variable("TOKEN", Secret::new("one"));
        let b = base.with_secret_variable("TOKEN", Secret::new("two"));
        assert_eq!(operation(&last_op(&a)), operation(&last_op(&b)));
        let c = base.with_secret_variable("OTHER", Secret::new("one"));
        assert_ne!(operation(&last_op(&a)), operation(&last_op(&c)));
    }

    #[test]
    fn exec_arguments_and_options_count() {
        let base = Container::scratch();
        let run = |args: &[&str], opts: ExecOptions| {
            operation(&last_op(&base.with_exec_opts(args.to_vec(), opts)))
        };
        let plain = run(&["echo", "a"], ExecOptions::default());
        assert_eq!(plain, run(&["echo", "a"], ExecOptions::default()));
        assert_ne!(plain, run(&["echo", "b"], ExecOptions::default()));
        assert_ne!(plain, run(&["echo a"], ExecOptions::default()));
        assert_ne!(
            plain,
            run(&["echo", "a"], ExecOptions::default().with_env("X", "1"))
        );
        assert_ne!(
            plain,
            run(
                &["echo", "a"],
                ExecOptions::default().with_network(Network::None)
            )
        );
    }

    #[test]
    fn keys_depend_on_every_part_and_are_pinned() {
        let parent = Digest::of(b"parent");
        let inputs = StepInputs::new(&parent, Digest::of(b"op"));
        let key = inputs.key();
        assert_ne!(key, inputs.clone().with("files", Digest::of(b"f")).key());
        assert_ne!(
            key,
            StepInputs::new(&Digest::of(b"other"), Digest::of(b"op")).key()
        );
        // A change here invalidates every user's cache: bump KEY_VERSION with it.
        assert_eq!(
            key.to_string(),
            "sha256:a8a9f69f0957b4756f2d0f6f9c3f26fd5ab9f1199251e408878e37e1a41dcf4f"
        );
    }

    #[test]
    fn a_host_copy_is_keyed_by_what_it_copies_not_by_its_patterns() {
        // `.dockerignore` patterns list what the checkout has, so a context without an
        // ignored file gives other patterns for the same copy.
        let copy = |exclude: Vec<String>| Op::HostDirectory {
            path: "/opt/files".to_owned(),
            src: "/src/files".into(),
            opts: HostCopy {
                exclude,
                ..HostCopy::default()
            },
        };
        assert_eq!(
            operation(&copy(Vec::new())),
            operation(&copy(vec!["local.env".to_owned()]))
        );
        let by_name = Op::HostDirectory {
            path: "/opt/files".to_owned(),
            src: "/src/files".into(),
            opts: HostCopy::default().with_owner_name("app"),
        };
        assert_ne!(operation(&copy(Vec::new())), operation(&by_name));
    }

    #[test]
    fn state_depends_on_the_layer_produced() {
        let key = Digest::of(b"k");
        assert_ne!(
            state_after(&key, Some(&Digest::of(b"a"))),
            state_after(&key, Some(&Digest::of(b"b")))
        );
        assert_ne!(
            state_after(&key, None),
            state_after(&key, Some(&Digest::of(b"a")))
        );
    }

    #[test]
    fn bust_matches_descriptions() {
        let opts = CacheOptions {
            disabled: false,
            bust: vec!["npm ci".into()],
        };
        assert!(opts.busted("with_exec sh -c 'npm ci'").is_some());
        assert!(opts.busted("with_exec go build").is_none());
        let off = CacheOptions {
            disabled: true,
            bust: vec![],
        };
        assert!(off.busted("anything").is_some());
    }
}

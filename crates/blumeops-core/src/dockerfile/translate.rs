//! Parsed instructions to `Container` steps.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::GlobBuilder;

use super::Error;
use super::expand::{self, ExpandError, Var, Word};
use super::ignore::{self, Ignore};
use super::parser::{self, Heredoc, Instruction, Keyword};
use crate::definition::BuildArgs;
use crate::layer::{HostCopy, Owner};
use crate::limits::{self, LimitExceeded};
use crate::pipeline::{
    CacheVolume, Container, CopyOptions, ExecOptions, Healthcheck, MountOptions, Network,
    SecretFileOptions,
};
use crate::reference::{Digest, Platform};

/// Docker's default `SHELL`.
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

/// Build arguments Docker passes to `RUN` without an `ARG` line.
const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

pub(super) fn translate(
    text: &str,
    file: &str,
    context: &Path,
    ignore: &Ignore,
    args: &BuildArgs,
    target: Option<&str>,
    platform: &Platform,
) -> Result<(Container, Vec<String>), Error> {
    let parsed = parser::parse(text).map_err(|e| Error::Instruction {
        file: file.to_owned(),
        line: e.line,
        message: e.message,
    })?;
    let mut notes = Vec::new();
    for d in &parsed.directives {
        // Accepted so Dockerfiles written for BuildKit build as they are; said once so
        // nobody expects the named frontend or the checks to run.
        let why = match d.name.as_str() {
            "syntax" => "blumeops translates the Dockerfile itself and loads no frontend image",
            "check" => "blumeops runs no build checks",
            _ => continue,
        };
        notes.push(format!(
            "{file}:{}: parser directive `{}={}` noted: {why}",
            d.line, d.name, d.value
        ));
    }
    let mut t = Translator {
        file,
        context,
        ignore,
        escape: parsed.escape,
        args,
        globals: platform_args(args, platform),
        stages: Vec::new(),
        built: Vec::new(),
        expanded: std::cell::Cell::new(0),
        pattern_steps: std::cell::Cell::new(limits::MAX_PATTERN_STEPS),
    };
    let mut global = Vec::new();
    for inst in &parsed.instructions {
        if inst.keyword == Keyword::From {
            let (image, name) = t.parse_from(inst)?;
            if let Some(n) = &name
                && t.stages.iter().any(|s| s.name.as_ref() == Some(n))
            {
                return Err(t.err(inst, format!("duplicate stage name `{n}`")));
            }
            t.stages.push(StageDef {
                from: inst,
                image,
                name,
                body: Vec::new(),
            });
        } else if let Some(stage) = t.stages.last_mut() {
            stage.body.push(inst);
        } else if inst.keyword == Keyword::Arg {
            global.push(inst);
        } else {
            return Err(t.err(
                inst,
                format!(
                    "{} before the first FROM: only ARG may come before FROM",
                    inst.keyword
                ),
            ));
        }
    }
    if t.stages.is_empty() {
        return Err(Error::NoStage {
            file: file.to_owned(),
        });
    }
    for inst in global {
        t.global_arg(inst)?;
    }
    t.built = vec![None; t.stages.len()];
    let index = match target {
        None => t.stages.len() - 1,
        Some(name) => {
            let lower = name.to_ascii_lowercase();
            t.stages
                .iter()
                .position(|s| s.name.as_deref() == Some(lower.as_str()))
                .ok_or_else(|| Error::UnknownTarget {
                    file: file.to_owned(),
                    target: name.to_owned(),
                    stages: t.stages.iter().filter_map(|s| s.name.clone()).collect(),
                })?
        }
    };
    Ok((t.stage(index)?.container, notes))
}

/// `BUILDPLATFORM`, `BUILDOS`... for the host, and `TARGETPLATFORM`, `TARGETARCH`... for the
/// platform being built (`target`), unless given as build arguments.
fn platform_args(args: &BuildArgs, target: &Platform) -> BTreeMap<String, Option<String>> {
    let host = Platform::host();
    let mut m = BTreeMap::new();
    for (prefix, p) in [("BUILD", &host), ("TARGET", target)] {
        for (suffix, value) in [
            ("PLATFORM", Some(p.to_string())),
            ("OS", Some(p.os().to_owned())),
            ("ARCH", Some(p.architecture().to_owned())),
            ("VARIANT", p.variant().map(str::to_owned)),
        ] {
            let name = format!("{prefix}{suffix}");
            let value = args.get(&name).map(str::to_owned).or(value);
            m.insert(name, value);
        }
    }
    m
}

/// One `RUN --mount`, translated.
enum RunMount {
    Cache(String, CacheVolume),
    Secret {
        /// (target, secret, file options); `None` when only a variable, or nothing.
        file: Option<(String, crate::secret::Secret, SecretFileOptions)>,
        /// (variable name, secret).
        env: Option<(String, crate::secret::Secret)>,
    },
    Bind {
        target: String,
        source: BindSource,
        opts: MountOptions,
    },
    Tmpfs(String, Option<u64>),
}

/// Where a bind mount's files come from.
enum BindSource {
    Host(PathBuf),
    /// Another stage or an image, and the path in it.
    Container(Container, String),
}

struct StageDef<'a> {
    from: &'a Instruction,
    /// The base as written (before substitution).
    image: String,
    /// Lowercase stage name.
    name: Option<String>,
    body: Vec<&'a Instruction>,
}

/// What a stage hands to stages built on it.
#[derive(Clone)]
struct Base {
    container: Container,
    /// Variables set by `ENV` in this Dockerfile.
    env: BTreeMap<String, EnvVal>,
    /// Whether `env` is the whole environment (no base image below).
    env_complete: bool,
    /// Absolute working directory, when known.
    workdir: Option<String>,
    shell: Vec<String>,
}

#[derive(Clone)]
enum EnvVal {
    Known(String),
    /// Depends on the base image's environment.
    Later,
}

struct Stage {
    index: usize,
    b: Base,
    /// Declared `ARG`s and their values.
    args: BTreeMap<String, Option<String>>,
    /// `CMD` set in this stage (kept by a later `ENTRYPOINT`, as Docker does).
    cmd: Option<Vec<String>>,
}

impl Stage {
    fn var(&self, name: &str) -> Var {
        match self.b.env.get(name) {
            Some(EnvVal::Known(v)) => return Var::Set(v.clone()),
            Some(EnvVal::Later) => return Var::Unknown,
            None => {}
        }
        match self.args.get(name) {
            Some(Some(v)) => Var::Set(v.clone()),
            Some(None) => Var::Unset,
            None if self.b.env_complete => Var::Unset,
            None => Var::Unknown,
        }
    }

    fn c(&mut self, f: impl FnOnce(&Container) -> Container) {
        self.b.container = f(&self.b.container);
    }
}

struct Translator<'a> {
    file: &'a str,
    context: &'a Path,
    ignore: &'a Ignore,
    escape: char,
    args: &'a BuildArgs,
    /// ARGs before the first FROM (and the platform ones).
    globals: BTreeMap<String, Option<String>>,
    stages: Vec<StageDef<'a>>,
    built: Vec<Option<Base>>,
    /// Bytes produced by variable substitution so far (bounded by
    /// [`limits::MAX_EXPANDED_TOTAL_BYTES`]).
    expanded: std::cell::Cell<usize>,
    /// Pattern matching work left (bounded by [`limits::MAX_PATTERN_STEPS`]).
    pattern_steps: std::cell::Cell<u64>,
}

impl Translator<'_> {
    /// Count `w` against the whole Dockerfile's substitution budget.
    fn budget(&self, inst: &Instruction, w: Word) -> Result<Word, Error> {
        let total = self.expanded.get().saturating_add(w.len());
        self.expanded.set(total);
        if total > limits::MAX_EXPANDED_TOTAL_BYTES {
            return Err(self.expand_err(
                inst,
                ExpandError::Limit(LimitExceeded::new(
                    "the text produced by variable substitution in this Dockerfile",
                    limits::MAX_EXPANDED_TOTAL_BYTES as u64,
                    "bytes",
                )),
            ));
        }
        Ok(w)
    }

    fn err(&self, inst: &Instruction, message: impl Into<String>) -> Error {
        Error::Instruction {
            file: self.file.to_owned(),
            line: inst.line,
            message: message.into(),
        }
    }

    fn expand_err(&self, inst: &Instruction, e: ExpandError) -> Error {
        self.err(inst, format!("{}: {e}", inst.keyword))
    }

    fn words(&self, inst: &Instruction, s: &str) -> Result<Vec<String>, Error> {
        expand::split_words(s, self.escape).map_err(|e| self.expand_err(inst, e))
    }

    fn process(&self, st: &Stage, inst: &Instruction, raw: &str) -> Result<Word, Error> {
        let w = expand::process(raw, self.escape, &|n| st.var(n), &self.pattern_steps)
            .map_err(|e| self.expand_err(inst, e))?;
        self.budget(inst, w)
    }

    /// Process a word whose variables must all be known now.
    fn word(&self, st: &Stage, inst: &Instruction, raw: &str) -> Result<String, Error> {
        let w = self.process(st, inst, raw)?;
        w.plain().ok_or_else(|| {
            self.err(
                inst,
                format!(
                    "{} refers to ${}, which this Dockerfile does not set; the base image's \
                     environment is only substituted in ENV values",
                    inst.keyword,
                    w.unknown().unwrap_or_default()
                ),
            )
        })
    }

    fn global_word(&self, inst: &Instruction, raw: &str) -> Result<String, Error> {
        let vars = |n: &str| match self.globals.get(n) {
            Some(Some(v)) => Var::Set(v.clone()),
            _ => Var::Unset,
        };
        let w = expand::process(raw, self.escape, &vars, &self.pattern_steps)
            .map_err(|e| self.expand_err(inst, e))?;
        Ok(self.budget(inst, w)?.plain().unwrap_or_default())
    }

    /// `FROM [--platform=p] image [AS name]`: the image word and the stage name.
    fn parse_from(&self, inst: &Instruction) -> Result<(String, Option<String>), Error> {
        let words = self.words(inst, &inst.rest)?;
        match words.as_slice() {
            [image] => Ok((image.clone(), None)),
            [image, as_, name] if as_.eq_ignore_ascii_case("as") => {
                let ok = name.starts_with(|c: char| c.is_ascii_alphabetic())
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !ok {
                    return Err(self.err(inst, format!("invalid stage name `{name}`")));
                }
                Ok((image.clone(), Some(name.to_ascii_lowercase())))
            }
            _ => Err(self.err(inst, "FROM expects `image [AS name]`")),
        }
    }

    fn global_arg(&mut self, inst: &Instruction) -> Result<(), Error> {
        for raw in self.words(inst, &inst.rest)? {
            let (name, default) = split_arg(&raw);
            check_name(self, inst, name)?;
            let default = match default {
                Some(d) => Some(self.global_word(inst, d)?),
                None => None,
            };
            let value = self.args.get(name).map(str::to_owned).or(default);
            self.globals.insert(name.to_owned(), value);
        }
        Ok(())
    }

    /// The stage's result, translating it (and what it needs) the first time.
    fn stage(&mut self, index: usize) -> Result<Base, Error> {
        if let Some(b) = &self.built[index] {
            return Ok(b.clone());
        }
        let from = self.stages[index].from;
        let image_raw = self.stages[index].image.clone();
        let body = self.stages[index].body.clone();
        let image = self.global_word(from, &image_raw)?;
        if image.is_empty() {
            return Err(self.err(
                from,
                format!("FROM `{image_raw}` is empty after substitution"),
            ));
        }
        let lower = image.to_ascii_lowercase();
        // `FROM --platform=$BUILDPLATFORM`: this stage is for that platform, whatever the
        // target (a stage named as the base keeps its own).
        let platform = match from.flag("platform") {
            Some(raw) => {
                let text = self.global_word(from, raw)?;
                let platform: Platform = text.parse().map_err(|_| {
                    self.err(
                        from,
                        format!(
                            "FROM --platform=`{text}` is not a platform (OS/ARCH[/VARIANT], \
                             e.g. linux/arm64)"
                        ),
                    )
                })?;
                Some(platform)
            }
            None => None,
        };
        let base = if lower == "scratch" {
            // As BuildKit and buildah do, an image from scratch gets the default PATH.
            Base {
                container: Container::scratch_with_default_path(platform),
                env: BTreeMap::from([(
                    "PATH".to_owned(),
                    EnvVal::Known(crate::sandbox::DEFAULT_PATH.to_owned()),
                )]),
                env_complete: true,
                workdir: Some("/".to_owned()),
                shell: DEFAULT_SHELL.map(String::from).to_vec(),
            }
        } else if let Some(j) = self.stages[..index]
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            self.stage(j)?
        } else {
            Base {
                container: match platform {
                    Some(platform) => Container::from_platform(image, platform),
                    None => Container::from(image),
                },
                env: BTreeMap::new(),
                env_complete: false,
                workdir: None,
                shell: DEFAULT_SHELL.map(String::from).to_vec(),
            }
        };
        let mut st = Stage {
            index,
            b: base,
            args: BTreeMap::new(),
            cmd: None,
        };
        for p in PROXY_ARGS {
            if let Some(v) = self.args.get(p) {
                st.args.insert(p.to_owned(), Some(v.to_owned()));
            }
        }
        for inst in body {
            self.instruction(&mut st, inst)?;
        }
        self.built[index] = Some(st.b.clone());
        Ok(st.b)
    }

    fn instruction(&mut self, st: &mut Stage, inst: &Instruction) -> Result<(), Error> {
        match inst.keyword {
            Keyword::From => unreachable!("FROM starts a stage"),
            Keyword::Arg => self.arg(st, inst),
            Keyword::Env => self.env(st, inst),
            Keyword::Label => {
                for (k, v) in self.pairs(inst)? {
                    let k = self.word(st, inst, &k)?;
                    let v = self.word(st, inst, &v)?;
                    st.c(|c| c.with_label(k, v));
                }
                Ok(())
            }
            Keyword::Run => self.run(st, inst),
            Keyword::Cmd => {
                let args = self.command(st, inst);
                st.cmd = Some(args.clone());
                st.c(|c| c.with_default_args(args));
                Ok(())
            }
            Keyword::Entrypoint => {
                let args = self.command(st, inst);
                st.c(|c| c.with_entrypoint(args));
                if let Some(cmd) = st.cmd.clone() {
                    st.c(|c| c.with_default_args(cmd));
                }
                Ok(())
            }
            Keyword::Copy => self.copy(st, inst, false),
            Keyword::Add => self.copy(st, inst, true),
            Keyword::Workdir => {
                let p = self.word(st, inst, &inst.rest)?;
                st.b.workdir = if p.starts_with('/') {
                    Some(absolute(&p))
                } else {
                    st.b.workdir
                        .as_deref()
                        .map(|w| absolute(&format!("{w}/{p}")))
                };
                st.c(|c| c.with_workdir(p));
                Ok(())
            }
            Keyword::User => {
                let u = self.word(st, inst, &inst.rest)?;
                st.c(|c| c.with_user(u));
                Ok(())
            }
            Keyword::Expose => {
                for raw in self.words(inst, &inst.rest)? {
                    // BuildKit splits what a word becomes on whitespace: `EXPOSE $PORTS` with
                    // PORTS="80 443" is two ports, and an empty one none.
                    let specs = self.word(st, inst, &raw)?;
                    for spec in specs.split_whitespace() {
                        for (port, proto) in self.port(inst, spec)? {
                            st.c(|c| c.with_exposed_port_protocol(port, proto));
                        }
                    }
                }
                Ok(())
            }
            Keyword::Volume => {
                let raws = match inst.json_args() {
                    Some(v) => v,
                    None => self.words(inst, &inst.rest)?,
                };
                for raw in raws {
                    let v = self.word(st, inst, &raw)?;
                    if v.is_empty() {
                        return Err(self.err(inst, "VOLUME specified can not be an empty string"));
                    }
                    st.c(|c| c.with_volume(v));
                }
                Ok(())
            }
            Keyword::Stopsignal => {
                let s = self.word(st, inst, &inst.rest)?;
                st.c(|c| c.with_stop_signal(s));
                Ok(())
            }
            Keyword::Shell => {
                let args = inst.json_args().filter(|a| !a.is_empty()).ok_or_else(|| {
                    self.err(
                        inst,
                        "SHELL requires a JSON array, e.g. [\"/bin/bash\", \"-c\"]",
                    )
                })?;
                st.b.shell = args.clone();
                st.c(|c| c.with_shell(args));
                Ok(())
            }
            Keyword::Healthcheck => {
                let h = self.healthcheck(inst)?;
                st.c(|c| c.with_healthcheck(h));
                Ok(())
            }
            Keyword::Maintainer => {
                let who = inst.rest.clone();
                st.c(|c| c.with_author(who));
                Ok(())
            }
            Keyword::Onbuild => {
                let inner = parser::parse(&inst.rest)
                    .map_err(|e| self.err(inst, format!("ONBUILD: {}", e.message)))?;
                match inner.instructions.as_slice() {
                    [i] if matches!(
                        i.keyword,
                        Keyword::Onbuild | Keyword::From | Keyword::Maintainer
                    ) =>
                    {
                        Err(self.err(
                            inst,
                            format!("{} isn't allowed as an ONBUILD trigger", i.keyword),
                        ))
                    }
                    [_] => {
                        let trigger = inst.rest.clone();
                        st.c(|c| c.with_onbuild(trigger));
                        Ok(())
                    }
                    _ => Err(self.err(inst, "ONBUILD expects one instruction")),
                }
            }
        }
    }

    fn arg(&self, st: &mut Stage, inst: &Instruction) -> Result<(), Error> {
        for raw in self.words(inst, &inst.rest)? {
            let (name, default) = split_arg(&raw);
            check_name(self, inst, name)?;
            let default = match default {
                Some(d) => Some(self.word(st, inst, d)?),
                None => None,
            };
            let value = self
                .args
                .get(name)
                .map(str::to_owned)
                .or(default)
                .or_else(|| self.globals.get(name).cloned().flatten());
            st.args.insert(name.to_owned(), value);
        }
        Ok(())
    }

    /// `ENV`/`LABEL` pairs, raw: `a=b c="d e"` or the legacy `key value`.
    fn pairs(&self, inst: &Instruction) -> Result<Vec<(String, String)>, Error> {
        let words = self.words(inst, &inst.rest)?;
        let first_has_eq = words.first().is_some_and(|w| w.contains('='));
        if !first_has_eq {
            let (key, value) = inst.rest.split_once(char::is_whitespace).ok_or_else(|| {
                self.err(inst, format!("{} needs a name and a value", inst.keyword))
            })?;
            return Ok(vec![(key.to_owned(), value.trim().to_owned())]);
        }
        words
            .into_iter()
            .map(|w| match w.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
                _ => Err(self.err(inst, format!("{}: `{w}` is not NAME=VALUE", inst.keyword))),
            })
            .collect()
    }

    fn env(&self, st: &mut Stage, inst: &Instruction) -> Result<(), Error> {
        // Every value sees the environment from before this instruction, as in Docker.
        let mut processed = Vec::new();
        for (k, v) in self.pairs(inst)? {
            let k = self.word(st, inst, &k)?;
            processed.push((k, self.process(st, inst, &v)?));
        }
        // A value finished at evaluation must not see what an earlier pair of this
        // instruction set (`ENV PATH=/x:$PATH OLD=$PATH`): then all of them at once.
        let reads_an_earlier_pair = processed.iter().enumerate().any(|(j, (_, w))| {
            w.plain().is_none()
                && expand::template_references(&w.template())
                    .iter()
                    .any(|name| processed[..j].iter().any(|(k, _)| k == name))
        });
        if reads_an_earlier_pair {
            let mut pairs = Vec::with_capacity(processed.len());
            for (k, w) in processed {
                let later = match w.plain() {
                    Some(v) => EnvVal::Known(v),
                    None => EnvVal::Later,
                };
                st.b.env.insert(k.clone(), later);
                pairs.push((k, w.template()));
            }
            st.c(|c| c.with_env_variables_expand(pairs));
            return Ok(());
        }
        for (k, w) in processed {
            match w.plain() {
                Some(v) => {
                    st.b.env.insert(k.clone(), EnvVal::Known(v.clone()));
                    st.c(|c| c.with_env_variable(k, v));
                }
                None => {
                    st.b.env.insert(k.clone(), EnvVal::Later);
                    let t = w.template();
                    st.c(|c| c.with_env_variable_expand(k, t));
                }
            }
        }
        Ok(())
    }

    /// `CMD`/`ENTRYPOINT` arguments: exec form as is, shell form wrapped in the SHELL.
    fn command(&self, st: &Stage, inst: &Instruction) -> Vec<String> {
        match inst.json_args() {
            Some(a) => a,
            None => {
                let mut a = st.b.shell.clone();
                a.push(inst.rest.clone());
                a
            }
        }
    }

    fn run(&mut self, st: &mut Stage, inst: &Instruction) -> Result<(), Error> {
        let mut opts = ExecOptions::default();
        match inst.flag("network") {
            None | Some("default") => {}
            Some("host") => opts = opts.with_network(Network::Host),
            Some("none") => opts = opts.with_network(Network::None),
            Some(other) => {
                return Err(self.err(
                    inst,
                    format!("RUN --network={other} is not supported: use none, host or default"),
                ));
            }
        }
        if let Some(s) = inst.flag("security").filter(|s| *s != "sandbox") {
            return Err(self.err(inst, format!("RUN --security={s} is not supported")));
        }
        let mut mounts = Vec::new();
        for m in inst.flag_values("mount") {
            mounts.push(self.run_mount(st, inst, m)?);
        }
        let args = match inst.json_args() {
            Some(a) => a,
            None => {
                let script = self.run_script(inst)?;
                let mut a = st.b.shell.clone();
                a.push(script);
                a
            }
        };
        // ARG values reach the command as its environment, unless ENV sets the name.
        for (k, v) in &st.args {
            if let (Some(v), false) = (v, st.b.env.contains_key(k)) {
                opts = opts.with_env(k, v);
            }
        }
        // Mounted for this command only: each is undone right after it.
        // (true: a mount path, false: a secret variable's name)
        let mut undo: Vec<(bool, String)> = Vec::new();
        for m in mounts {
            match m {
                RunMount::Cache(target, volume) => {
                    st.c(|c| c.with_mounted_cache(&target, volume));
                    undo.push((true, target));
                }
                RunMount::Secret { file, env } => {
                    if let Some((target, secret, o)) = file {
                        st.c(|c| c.with_mounted_secret_opts(&target, secret, o));
                        undo.push((true, target));
                    }
                    if let Some((name, secret)) = env {
                        st.c(|c| c.with_secret_variable(&name, secret));
                        undo.push((false, name));
                    }
                }
                RunMount::Bind {
                    target,
                    source,
                    opts,
                } => {
                    match source {
                        BindSource::Host(src) => {
                            st.c(|c| c.with_mounted_directory(&target, src, opts));
                        }
                        BindSource::Container(from, path) => {
                            st.c(|c| c.with_mounted_directory_from(&target, &from, path, opts));
                        }
                    }
                    undo.push((true, target));
                }
                RunMount::Tmpfs(target, size) => {
                    match size {
                        Some(size) => st.c(|c| c.with_mounted_temp_size(&target, size)),
                        None => st.c(|c| c.with_mounted_temp(&target)),
                    }
                    undo.push((true, target));
                }
            }
        }
        st.c(|c| c.with_exec_opts(args, opts));
        for (mount, name) in undo {
            if mount {
                st.c(|c| c.without_mount(&name));
            } else {
                st.c(|c| c.without_secret_variable(&name));
            }
        }
        Ok(())
    }

    /// The shell-form command, with heredocs.
    fn run_script(&self, inst: &Instruction) -> Result<String, Error> {
        match inst.heredocs.as_slice() {
            [] => Ok(inst.rest.clone()),
            [h] if inst.rest.trim() == h.marker => {
                if h.content.starts_with("#!") {
                    return Err(self.err(
                        inst,
                        "RUN heredocs with a #! line are not supported: name the interpreter, \
                         e.g. RUN python3 <<EOF",
                    ));
                }
                Ok(h.content.clone())
            }
            docs => {
                // The shell reads the heredocs itself.
                let mut s = inst.rest.clone();
                s.push('\n');
                for h in docs {
                    s.push_str(&h.content);
                    s.push_str(&h.name);
                    s.push('\n');
                }
                Ok(s)
            }
        }
    }

    /// One `RUN --mount=...`: `type=cache|secret|bind|tmpfs` (`ssh` is refused).
    fn run_mount(&mut self, st: &Stage, inst: &Instruction, spec: &str) -> Result<RunMount, Error> {
        let mut kind = "bind".to_owned();
        let mut o: BTreeMap<String, String> = BTreeMap::new();
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = match part.split_once('=') {
                Some((k, v)) => (k, self.word(st, inst, v)?),
                // A bare flag (`rw`, `required`) means true.
                None => (part, "true".to_owned()),
            };
            let k = match k.to_ascii_lowercase().as_str() {
                "dst" | "destination" => "target".to_owned(),
                "src" => "source".to_owned(),
                "readwrite" => "rw".to_owned(),
                "readonly" => "ro".to_owned(),
                other => other.to_owned(),
            };
            if k == "type" {
                kind = v.to_ascii_lowercase();
            } else {
                o.insert(k, v);
            }
        }
        let allowed: &[&str] = match kind.as_str() {
            "cache" => &["target", "id", "sharing"],
            "secret" => &["target", "id", "required", "mode", "uid", "gid", "env"],
            "bind" => &["target", "source", "from", "rw", "ro"],
            "tmpfs" => &["target", "size"],
            "ssh" => {
                return Err(self.err(
                    inst,
                    "RUN --mount=type=ssh is not supported: blumeops forwards no SSH agent; \
                     fetch with a token given as --secret and RUN --mount=type=secret instead",
                ));
            }
            other => {
                return Err(self.err(
                    inst,
                    format!(
                        "RUN --mount=type={other} is not supported (use cache, secret, bind \
                         or tmpfs)"
                    ),
                ));
            }
        };
        if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(self.err(
                inst,
                format!("RUN --mount option `{k}` is not supported with type={kind}"),
            ));
        }
        let flag = |this: &Self, name: &str| -> Result<bool, Error> {
            match o.get(name).map(|v| v.to_ascii_lowercase()).as_deref() {
                None | Some("false") => Ok(false),
                Some("true") | Some("") => Ok(true),
                Some(v) => Err(this.err(
                    inst,
                    format!("RUN --mount option `{name}={v}`: expected true or false"),
                )),
            }
        };
        let target = o.get("target").filter(|t| !t.is_empty()).cloned();
        let needs_target = |this: &Self| {
            target.clone().ok_or_else(|| {
                this.err(inst, format!("RUN --mount=type={kind} needs target=<path>"))
            })
        };
        match kind.as_str() {
            "cache" => {
                let target = self.resolve(st, inst, &needs_target(self)?)?;
                Ok(self.cache_volume(target, o.get("id").map(String::as_str)))
            }
            "tmpfs" => {
                let target = self.resolve(st, inst, &needs_target(self)?)?;
                let size = match o.get("size") {
                    None => None,
                    Some(s) => Some(crate::store::parse_size(s).ok_or_else(|| {
                        self.err(
                            inst,
                            format!("RUN --mount=type=tmpfs: `size={s}` is not a size"),
                        )
                    })?),
                };
                Ok(RunMount::Tmpfs(target, size))
            }
            "bind" => {
                let target = self.resolve(st, inst, &needs_target(self)?)?;
                let rw = flag(self, "rw")? && !flag(self, "ro")?;
                let opts = if rw {
                    MountOptions::writable()
                } else {
                    MountOptions::default()
                };
                let source = o.get("source").cloned().unwrap_or_default();
                let source = match o.get("from").filter(|f| !f.is_empty()) {
                    Some(from) => {
                        let container = self.copy_source(st, inst, &from.clone())?;
                        BindSource::Container(container, absolute(&source))
                    }
                    None => {
                        if source.split('/').any(|c| c == "..") {
                            return Err(self.err(
                                inst,
                                format!(
                                    "RUN --mount=type=bind: `{source}` leads outside the \
                                     build context"
                                ),
                            ));
                        }
                        let rel = ignore::clean(&source);
                        let path = if rel.is_empty() {
                            self.context.to_owned()
                        } else {
                            self.context.join(&rel)
                        };
                        if !path.exists() {
                            return Err(self.err(
                                inst,
                                format!(
                                    "RUN --mount=type=bind: `{source}` not found in the \
                                     build context"
                                ),
                            ));
                        }
                        self.inside_context(inst, &source, &path)?;
                        BindSource::Host(path)
                    }
                };
                Ok(RunMount::Bind {
                    target,
                    source,
                    opts,
                })
            }
            _ => self.secret_mount(st, inst, &o, target, flag(self, "required")?),
        }
    }

    /// `--mount=type=secret,id=NAME[,target=PATH][,env=VAR][,required][,mode,uid,gid]`.
    fn secret_mount(
        &self,
        st: &Stage,
        inst: &Instruction,
        o: &BTreeMap<String, String>,
        target: Option<String>,
        required: bool,
    ) -> Result<RunMount, Error> {
        let env = o.get("env").filter(|e| !e.is_empty()).cloned();
        // As BuildKit: the id defaults to the target's file name.
        let id = match o.get("id").filter(|i| !i.is_empty()) {
            Some(id) => id.clone(),
            None => target
                .as_deref()
                .and_then(|t| t.trim_end_matches('/').rsplit('/').next())
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| self.err(inst, "RUN --mount=type=secret needs id=<name>"))?,
        };
        let number = |name: &str, radix: u32, default: u32| -> Result<u32, Error> {
            match o.get(name) {
                None => Ok(default),
                Some(v) => u32::from_str_radix(v, radix).map_err(|_| {
                    self.err(
                        inst,
                        format!("RUN --mount=type=secret: `{name}={v}` is not valid"),
                    )
                }),
            }
        };
        let opts = SecretFileOptions::named(&id)
            .with_mode(number("mode", 8, 0o400)?)
            .with_owner(number("uid", 10, 0)?, number("gid", 10, 0)?);
        let Some(secret) = self.args.secret(&id) else {
            if required {
                return Err(self.err(
                    inst,
                    format!(
                        "RUN --mount=type=secret: the required secret `{id}` was not given \
                         (pass --secret id={id},...)"
                    ),
                ));
            }
            // Not required: the command runs without it, as with BuildKit.
            return Ok(RunMount::Secret {
                file: None,
                env: None,
            });
        };
        // A file at /run/secrets/<id> unless only a variable was asked for.
        let file = match (target, &env) {
            (Some(t), _) => Some(self.resolve(st, inst, &t)?),
            (None, None) => Some(format!("/run/secrets/{id}")),
            (None, Some(_)) => None,
        };
        Ok(RunMount::Secret {
            file: file.map(|f| (f, secret.clone(), opts)),
            env: env.map(|e| (e, secret.clone())),
        })
    }

    /// A cache volume at `target` named after `id` (default: the target).
    fn cache_volume(&self, target: String, id: Option<&str>) -> RunMount {
        let id = id.filter(|i| !i.is_empty()).unwrap_or(&target);
        let name: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = name.trim_start_matches(['_', '.', '-']);
        let name = if name.is_empty() { "cache" } else { name };
        RunMount::Cache(target, CacheVolume::new(name))
    }

    /// An absolute path in the image, relative ones joined to the known WORKDIR.
    fn resolve(&self, st: &Stage, inst: &Instruction, path: &str) -> Result<String, Error> {
        if path.starts_with('/') {
            return Ok(absolute(path));
        }
        match &st.b.workdir {
            Some(w) => Ok(absolute(&format!("{w}/{path}"))),
            None => Err(self.err(
                inst,
                format!(
                    "relative path `{path}` needs a WORKDIR earlier in the stage: the base \
                     image's working directory is not known when the Dockerfile is translated"
                ),
            )),
        }
    }

    fn copy(&mut self, st: &mut Stage, inst: &Instruction, add: bool) -> Result<(), Error> {
        let kw = inst.keyword;
        let raws = match inst.json_args() {
            Some(v) => v,
            None => self.words(inst, &inst.rest)?,
        };
        if raws.len() < 2 {
            return Err(self.err(
                inst,
                format!("{kw} requires at least two arguments: source and destination"),
            ));
        }
        // `--link` needs nothing: every COPY is its own layer already, rebased on whatever
        // is below it only through the step cache's parent key.
        let parents = match inst.flag("parents") {
            None | Some("false") => false,
            Some("" | "true") => true,
            Some(other) => {
                return Err(self.err(
                    inst,
                    format!("invalid --parents `{other}`: expected true or false"),
                ));
            }
        };
        let keep_git_dir = match inst.flag("keep-git-dir") {
            None | Some("false") => false,
            Some("" | "true") => true,
            Some(other) => {
                return Err(self.err(
                    inst,
                    format!("invalid --keep-git-dir `{other}`: expected true or false"),
                ));
            }
        };
        let (dest_raw, src_raws) = raws.split_last().expect("two or more");
        let dest_word = self.word(st, inst, dest_raw)?;
        // With --parents every source keeps its path below the destination, a directory.
        let into_dir =
            parents || dest_word.ends_with('/') || dest_word == "." || dest_word.ends_with("/.");
        let dest = self.resolve(st, inst, &dest_word)?;
        let chown = match inst.flag("chown") {
            Some(c) if !c.is_empty() => Some(self.word(st, inst, c)?),
            _ => None,
        };
        let mode = match inst.flag("chmod") {
            Some(m) => {
                let m = self.word(st, inst, m)?;
                Some(
                    u32::from_str_radix(&m, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| {
                            self.err(
                                inst,
                                format!("invalid --chmod `{m}`: expected octal, e.g. 0755"),
                            )
                        })?,
                )
            }
            None => None,
        };
        let mut excludes = Vec::new();
        for e in inst.flag_values("exclude") {
            let e = self.word(st, inst, e)?;
            if e.is_empty() || e.starts_with('!') {
                return Err(self.err(
                    inst,
                    format!(
                        "{kw} --exclude=`{e}` is not supported: give a pattern to leave out \
                         (exceptions with ! are not supported)"
                    ),
                ));
            }
            excludes.push(e);
        }
        let exclude_names = self.exclude_matcher(inst, &excludes)?;
        let checksum = match inst.flag("checksum") {
            Some(c) => Some(self.word(st, inst, c)?.parse::<Digest>().map_err(|_| {
                self.err(
                    inst,
                    format!("invalid --checksum `{c}`: expected sha256:<64 hex digits>"),
                )
            })?),
            None => None,
        };

        // Sources: heredocs, URLs, context paths (or paths in another image).
        let mut sources = Vec::new();
        for raw in src_raws {
            if let Some(h) = inst.heredocs.iter().find(|h| h.marker == *raw) {
                sources.push(Source::Heredoc(h));
                continue;
            }
            let s = self.word(st, inst, raw)?;
            let is_url = s.starts_with("http://") || s.starts_with("https://");
            if (is_url || s.starts_with("git@") || s.starts_with("git://")) && !add {
                return Err(self.err(inst, format!("COPY does not take URLs (`{s}`): use ADD")));
            }
            // BuildKit's test for a git source: a URL whose path ends in .git (a `#ref`
            // after it), or the git@ and git:// forms.
            let (base, fragment) = s
                .split_once('#')
                .map_or((s.as_str(), None), |(b, f)| (b, Some(f)));
            if s.starts_with("git@")
                || s.starts_with("git://")
                || (is_url && base.ends_with(".git"))
            {
                let reference = match fragment {
                    None | Some("") => None,
                    Some(f) if f.contains(':') => {
                        return Err(self.err(
                            inst,
                            format!("ADD `{s}`: a subdirectory (`#ref:dir`) of a git repository is not supported"),
                        ));
                    }
                    Some(f) => Some(f.to_owned()),
                };
                sources.push(Source::Git(base.to_owned(), reference));
            } else if is_url {
                sources.push(Source::Url(s));
            } else {
                sources.push(Source::Path(s));
            }
        }
        if keep_git_dir && !sources.iter().any(|s| matches!(s, Source::Git(..))) {
            return Err(self.err(inst, "ADD --keep-git-dir needs a git repository source"));
        }
        if let Some(Source::Git(url, reference)) =
            sources.iter().find(|s| matches!(s, Source::Git(..)))
        {
            if sources.len() > 1 || inst.flag("from").is_some() {
                return Err(self.err(inst, "ADD of a git repository takes it as the only source"));
            }
            if mode.is_some() || !excludes.is_empty() || checksum.is_some() {
                return Err(self.err(
                    inst,
                    "ADD of a git repository does not support --chmod, --exclude or --checksum",
                ));
            }
            let opts = CopyOptions {
                owner: chown.clone(),
                ..CopyOptions::default()
            };
            let (url, reference) = (url.clone(), reference.clone());
            st.c(|c| c.with_git_repository(&dest, url, reference, keep_git_dir, opts));
            return Ok(());
        }
        if checksum.is_some() && !matches!(sources.as_slice(), [Source::Url(_)]) {
            return Err(self.err(inst, "ADD --checksum needs exactly one URL source"));
        }

        if let Some(from) = inst.flag("from") {
            let from = self.word(st, inst, from)?;
            let source = self.copy_source(st, inst, &from)?;
            let opts = CopyOptions {
                // Copies from another stage keep their owners unless --chown says otherwise
                // (BuildKit and buildah do the same); copies from the context become 0:0.
                owner: chown,
                mode,
                include: Vec::new(),
                exclude: excludes,
            };
            if src_raws.len() > 1 && !into_dir {
                return Err(self.multi_err(inst));
            }
            for s in sources {
                let Source::Path(p) = s else {
                    return Err(self.err(
                        inst,
                        format!("{kw} --from takes paths, not heredocs or URLs"),
                    ));
                };
                let dir_src = p.ends_with('/') || p.ends_with("/.") || ignore::clean(&p).is_empty();
                let norm = absolute(&p);
                let drop = if parents {
                    self.pivot_depth(inst, p.trim_start_matches('/'))?
                } else {
                    0
                };
                if has_glob(&norm) {
                    let (parent, last) = norm.rsplit_once('/').expect("absolute");
                    if has_glob(parent) {
                        return Err(self.err(
                            inst,
                            format!("{kw} --from: wildcards are supported in the last path component only (`{p}`)"),
                        ));
                    }
                    let to = if parents {
                        join_kept(&dest, &kept_path(parent, drop))
                    } else {
                        dest.clone()
                    };
                    let parent = if parent.is_empty() { "/" } else { parent };
                    let o = opts.clone().with_include(last);
                    st.c(|c| c.with_directory_from(&to, &source, parent, o));
                } else if parents && !kept_path(&norm, drop).is_empty() {
                    // The path below the pivot, kept whatever the source turns out to be.
                    let to = join_kept(&dest, &kept_path(&norm, drop));
                    st.c(|c| c.with_path_from(to, &source, norm, opts.clone()));
                } else if dir_src {
                    st.c(|c| c.with_directory_from(&dest, &source, norm, opts.clone()));
                } else {
                    let to = if into_dir {
                        dir_path(&dest)
                    } else {
                        dest.clone()
                    };
                    st.c(|c| c.with_path_from(to, &source, norm, opts.clone()));
                }
            }
            return Ok(());
        }

        let host_opts = {
            let mut o = HostCopy::default();
            match chown.as_deref().map(|c| (c, c.parse::<Owner>())) {
                Some((_, Ok(owner))) => o = o.with_owner(owner),
                Some((name, Err(_))) => o = o.with_owner_name(name),
                None => {}
            }
            o.mode = mode;
            o.exclude = excludes.clone();
            o
        };
        let mut planned: Vec<Planned> = Vec::new();
        for s in sources {
            match s {
                Source::Heredoc(h) => planned.push(Planned::Heredoc(h)),
                Source::Url(u) => planned.push(Planned::Url(u)),
                Source::Git(..) => unreachable!("a git source is the only one, handled above"),
                Source::Path(p) => {
                    let drop = if parents {
                        Some(self.pivot_depth(inst, &p)?)
                    } else {
                        None
                    };
                    let wildcard = has_glob(&p);
                    for (path, rel) in self.context_paths(inst, &p)? {
                        // A wildcard's matches are filtered by name, as the Dockerfile
                        // reference documents (`COPY --exclude=*.txt hom* /mydir/`); what a
                        // directory holds, by its path inside it (below). A source named
                        // exactly is copied whatever the patterns say, as in BuildKit.
                        let name = rel.rsplit('/').next().unwrap_or(&rel);
                        if wildcard && exclude_names.is_match(name) {
                            continue;
                        }
                        let kept = drop.map(|d| kept_path(&rel, d));
                        planned.push(Planned::Host(path, rel, kept));
                    }
                }
            }
        }
        if planned.len() > 1 && !into_dir {
            return Err(self.multi_err(inst));
        }
        for p in planned {
            match p {
                Planned::Heredoc(h) => {
                    let content = if h.expand {
                        let vars = |n: &str| st.var(n);
                        let w = expand::process_unquoted(
                            &h.content,
                            self.escape,
                            &vars,
                            &self.pattern_steps,
                        )
                        .map_err(|e| self.expand_err(inst, e))?;
                        self.budget(inst, w)?
                            .plain()
                            .ok_or_else(|| {
                                self.err(inst, format!("{kw} heredoc {} refers to a variable this Dockerfile does not set", h.name))
                            })?
                    } else {
                        h.content.clone()
                    };
                    let owner = match (&host_opts.owner, &host_opts.owner_name) {
                        (_, Some(n)) => {
                            return Err(self.err(
                                inst,
                                format!("{kw} --chown={n} with a heredoc needs numeric ids"),
                            ));
                        }
                        (o, None) => o.unwrap_or_default(),
                    };
                    let to = if into_dir {
                        join(&dest, &h.name)
                    } else {
                        dest.clone()
                    };
                    let m = mode.unwrap_or(0o644);
                    st.c(|c| c.with_new_file_owned(to, content, m, owner));
                }
                Planned::Url(u) => {
                    let to = if into_dir {
                        let name = url::Url::parse(&u)
                            .ok()
                            .and_then(|url| {
                                url.path_segments()
                                    .and_then(|mut s| s.next_back().map(str::to_owned))
                            })
                            .filter(|n| !n.is_empty())
                            .ok_or_else(|| {
                                self.err(inst, format!("cannot tell a file name from `{u}`: give a destination file, not a directory"))
                            })?;
                        join(&dest, &name)
                    } else {
                        dest.clone()
                    };
                    let opts = CopyOptions {
                        owner: Some(chown.clone().unwrap_or_else(|| "0:0".to_owned())),
                        mode: Some(mode.unwrap_or(0o600)),
                        include: Vec::new(),
                        exclude: Vec::new(),
                    };
                    let sum = checksum.clone();
                    st.c(|c| c.with_http_file(to, u, sum, opts));
                }
                Planned::Host(path, rel, kept) => {
                    let meta = std::fs::metadata(&path).map_err(|source| Error::Read {
                        path: path.clone(),
                        source,
                    })?;
                    // --parents: the source's path (below any `/./` pivot) under the
                    // destination.
                    let kept_dest = kept.filter(|k| !k.is_empty()).map(|k| join(&dest, &k));
                    if meta.is_dir() {
                        let mut o = host_opts.clone();
                        o.exclude.extend(self.ignored_within(&path, &rel, "")?);
                        let to = kept_dest.unwrap_or_else(|| dest.clone());
                        st.c(|c| c.with_directory(to, path, o));
                    } else if let Some(to) = kept_dest {
                        st.c(|c| c.with_file(to, path, host_opts.clone()));
                    } else if add && is_archive(&path)? {
                        st.c(|c| c.with_host_archive(&dest, path, host_opts.clone()));
                    } else {
                        let name = rel.rsplit('/').next().unwrap_or(&rel);
                        let to = if into_dir {
                            join(&dest, name)
                        } else {
                            dest.clone()
                        };
                        st.c(|c| c.with_file(to, path, host_opts.clone()));
                    }
                }
            }
        }
        Ok(())
    }

    fn multi_err(&self, inst: &Instruction) -> Error {
        self.err(
            inst,
            format!(
                "{} with more than one source needs a destination directory ending in /",
                inst.keyword
            ),
        )
    }

    /// How many leading components of a `--parents` source to leave out: those before a
    /// `/./` pivot (`./x/./y/*.txt` keeps `y/...`), none without one.
    fn pivot_depth(&self, inst: &Instruction, src: &str) -> Result<usize, Error> {
        let mut body = src;
        while let Some(rest) = body.strip_prefix("./") {
            body = rest.trim_start_matches('/');
        }
        let Some(i) = body.find("/./") else {
            return Ok(0);
        };
        if body[i + 2..].contains("/./") {
            return Err(self.err(
                inst,
                format!("COPY --parents: `{src}` has more than one /./ pivot"),
            ));
        }
        Ok(kept_path(&body[..i], 0)
            .split('/')
            .filter(|c| !c.is_empty())
            .count())
    }

    /// `--exclude` patterns as they are matched against a wildcard's matches.
    fn exclude_matcher(
        &self,
        inst: &Instruction,
        patterns: &[String],
    ) -> Result<globset::GlobSet, Error> {
        let mut b = globset::GlobSetBuilder::new();
        for p in patterns {
            let g = GlobBuilder::new(p.trim_end_matches('/'))
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| self.err(inst, format!("invalid --exclude pattern `{p}`: {e}")))?;
            b.add(g);
        }
        b.build()
            .map_err(|e| self.err(inst, format!("invalid --exclude patterns: {e}")))
    }

    /// A stage (by name or index) or an image, for `COPY --from`.
    fn copy_source(
        &mut self,
        st: &Stage,
        inst: &Instruction,
        from: &str,
    ) -> Result<Container, Error> {
        let lower = from.to_ascii_lowercase();
        if let Some(j) = self
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(lower.as_str()))
        {
            if j >= st.index {
                return Err(self.err(
                    inst,
                    format!("--from={from} refers to a stage that is not defined before this one"),
                ));
            }
            return Ok(self.stage(j)?.container);
        }
        if let Ok(j) = from.parse::<usize>() {
            if j >= st.index {
                return Err(self.err(
                    inst,
                    format!("--from={j} refers to a stage that is not defined before this one"),
                ));
            }
            return Ok(self.stage(j)?.container);
        }
        Ok(Container::from(from))
    }

    /// Context paths for a source (wildcards expanded), minus ignored ones.
    fn context_paths(
        &self,
        inst: &Instruction,
        src: &str,
    ) -> Result<Vec<(PathBuf, String)>, Error> {
        let rel = ignore::clean(src);
        if !has_glob(&rel) {
            let path = if rel.is_empty() {
                self.context.to_owned()
            } else {
                self.context.join(&rel)
            };
            if !rel.is_empty() && self.ignore.is_ignored(&rel) {
                return Err(self.err(inst, format!("`{src}` is excluded by .dockerignore")));
            }
            if std::fs::symlink_metadata(&path).is_err() {
                return Err(self.err(inst, format!("`{src}` not found in the build context")));
            }
            self.inside_context(inst, src, &path)?;
            return Ok(vec![(path, rel)]);
        }
        let mut found: Vec<(PathBuf, String)> = vec![(self.context.to_owned(), String::new())];
        for comp in rel.split('/') {
            let mut next = Vec::new();
            if has_glob(comp) {
                let m = GlobBuilder::new(comp)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
                    .map_err(|e| self.err(inst, format!("invalid wildcard `{src}`: {e}")))?
                    .compile_matcher();
                for (dir, r) in &found {
                    if !dir.is_dir() {
                        continue;
                    }
                    for name in read_dir_sorted(dir)? {
                        if m.is_match(&name) {
                            next.push((dir.join(&name), join_rel(r, &name)));
                        }
                    }
                }
            } else {
                for (dir, r) in &found {
                    let p = dir.join(comp);
                    if std::fs::symlink_metadata(&p).is_ok() {
                        next.push((p, join_rel(r, comp)));
                    }
                }
            }
            found = next;
        }
        found.retain(|(_, r)| !self.ignore.is_ignored(r));
        if found.is_empty() {
            return Err(self.err(inst, format!("no build context files match `{src}`")));
        }
        for (path, _) in &found {
            self.inside_context(inst, src, path)?;
        }
        Ok(found)
    }

    /// Refuse a source that a symlink (anywhere on its path) leads out of the build context:
    /// its host file would be copied into the image.
    fn inside_context(&self, inst: &Instruction, src: &str, path: &Path) -> Result<(), Error> {
        let (Ok(context), Ok(real)) = (self.context.canonicalize(), path.canonicalize()) else {
            // A dangling symlink: nothing outside can be read through it.
            return Ok(());
        };
        if real.starts_with(&context) {
            return Ok(());
        }
        Err(self.err(
            inst,
            format!(
                "`{src}` leads outside the build context (to `{}`) through a symlink",
                real.display()
            ),
        ))
    }

    /// Exclude patterns (relative to `dir`) for what `.dockerignore` leaves out under the
    /// context directory `dir` (`rel` from the context root).
    fn ignored_within(&self, dir: &Path, rel: &str, prefix: &str) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        if self.ignore.is_empty() {
            return Ok(out);
        }
        for name in read_dir_sorted(dir)? {
            let path = dir.join(&name);
            let ctx_rel = join_rel(rel, &name);
            let src_rel = join_rel(prefix, &name);
            let is_dir = std::fs::symlink_metadata(&path)
                .map(|m| m.is_dir())
                .unwrap_or(false);
            if self.ignore.is_ignored(&ctx_rel) {
                if is_dir && self.ignore.has_exceptions() {
                    out.extend(self.ignored_within(&path, &ctx_rel, &src_rel)?);
                } else {
                    out.push(ignore::escape_glob(&src_rel));
                }
            } else if is_dir {
                out.extend(self.ignored_within(&path, &ctx_rel, &src_rel)?);
            }
        }
        Ok(out)
    }

    fn port(&self, inst: &Instruction, spec: &str) -> Result<Vec<(u16, String)>, Error> {
        let bad = || {
            self.err(
                inst,
                format!("invalid port `{spec}`: expected PORT[/PROTOCOL] or START-END[/PROTOCOL]"),
            )
        };
        let (ports, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
        let proto = proto.to_ascii_lowercase();
        if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
            return Err(bad());
        }
        let (lo, hi) = ports.split_once('-').unwrap_or((ports, ports));
        let lo: u16 = lo.parse().map_err(|_| bad())?;
        let hi: u16 = hi.parse().map_err(|_| bad())?;
        if lo > hi {
            return Err(bad());
        }
        Ok((lo..=hi).map(|p| (p, proto.clone())).collect())
    }

    fn healthcheck(&self, inst: &Instruction) -> Result<Healthcheck, Error> {
        let rest = inst.rest.trim();
        let (word, after) = rest
            .split_once(char::is_whitespace)
            .map_or((rest, ""), |(w, a)| (w, a.trim()));
        if word.eq_ignore_ascii_case("none") {
            if !inst.flags.is_empty() || !after.is_empty() {
                return Err(self.err(inst, "HEALTHCHECK NONE takes no flags or arguments"));
            }
            return Ok(Healthcheck::none());
        }
        if !word.eq_ignore_ascii_case("cmd") || after.is_empty() {
            return Err(self.err(inst, "HEALTHCHECK expects NONE or CMD <command>"));
        }
        let mut h = match parser::json_array(after) {
            Some(args) => Healthcheck::cmd(args),
            None => Healthcheck::shell(after),
        };
        let dur = |name: &str| -> Result<Option<Duration>, Error> {
            let Some(v) = inst.flag(name) else {
                return Ok(None);
            };
            let d = go_duration(v).ok_or_else(|| {
                self.err(
                    inst,
                    format!("invalid --{name} `{v}`: expected a duration like 30s or 1m30s"),
                )
            })?;
            if !d.is_zero() && d < Duration::from_millis(1) {
                return Err(self.err(inst, format!("--{name} cannot be less than 1ms")));
            }
            Ok(Some(d))
        };
        h.interval = dur("interval")?;
        h.timeout = dur("timeout")?;
        h.start_period = dur("start-period")?;
        h.start_interval = dur("start-interval")?;
        h.retries = match inst.flag("retries") {
            Some(r) => Some(r.parse().map_err(|_| {
                self.err(
                    inst,
                    format!("invalid --retries `{r}`: expected a whole number"),
                )
            })?),
            None => None,
        };
        Ok(h)
    }
}

enum Source<'a> {
    Heredoc(&'a Heredoc),
    Url(String),
    /// A git repository and the reference after `#`.
    Git(String, Option<String>),
    Path(String),
}

enum Planned<'a> {
    Heredoc(&'a Heredoc),
    Url(String),
    /// Host path, its path in the context, and with `--parents` the path kept under the
    /// destination.
    Host(PathBuf, String, Option<String>),
}

fn split_arg(raw: &str) -> (&str, Option<&str>) {
    match raw.split_once('=') {
        Some((n, d)) => (n, Some(d)),
        None => (raw, None),
    }
}

fn check_name(t: &Translator<'_>, inst: &Instruction, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.contains(['"', '\'', '$']) {
        return Err(t.err(inst, format!("invalid ARG name `{name}`")));
    }
    Ok(())
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// `/`-rooted, cleaned.
fn absolute(p: &str) -> String {
    format!("/{}", ignore::clean(p))
}

/// `path` (cleaned, `/` or context rooted) without its first `drop` components.
fn kept_path(path: &str, drop: usize) -> String {
    ignore::clean(path)
        .split('/')
        .filter(|c| !c.is_empty())
        .skip(drop)
        .collect::<Vec<_>>()
        .join("/")
}

/// `dest` with `kept` below it (`dest` itself when `kept` is empty).
fn join_kept(dest: &str, kept: &str) -> String {
    if kept.is_empty() {
        dest.to_owned()
    } else {
        join(dest, kept)
    }
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// `dir` with one trailing `/`.
fn dir_path(dir: &str) -> String {
    format!("{}/", dir.trim_end_matches('/'))
}

fn join_rel(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<String>, Error> {
    let read_err = |source| Error::Read {
        path: dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        // Names that are not UTF-8 cannot be matched; the layer writer refuses them too.
        if let Ok(n) = entry.file_name().into_string() {
            names.push(n);
        }
    }
    names.sort();
    Ok(names)
}

/// Whether a host file is a tar archive (plain, gzip, bzip2, xz or zstd), by content.
fn is_archive(path: &Path) -> Result<bool, Error> {
    let mut head = Vec::with_capacity(512);
    std::fs::File::open(path)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
    Ok(head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(b"BZh")
        || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00])
        || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || head.get(257..262) == Some(b"ustar"))
}

/// Go's `time.ParseDuration` (`300ms`, `1.5h`, `2h45m`), non-negative.
fn go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = s;
    let mut nanos = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        nanos += num * scale;
    }
    Some(Duration::from_nanos(nanos.round() as u64))
}

#[cfg(test)]
mod tests;

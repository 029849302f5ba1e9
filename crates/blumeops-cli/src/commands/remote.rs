//! `build` and `publish` through the docker executor: what depends on this checkout and
//! this environment (version, commit, timestamp, build context, the registry password) is
//! resolved here; the build runs in the engine container; results come back here as a
//! local build leaves them (the output files, the `REF@DIGEST` line or `--json`, the
//! workflow output files, the exit code).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use blumeops_core::executor::docker::{
    self, ENGINE_OUT_DIR, ENGINE_SRC_DIR, context, endpoint, helper, session,
};
use blumeops_core::{ExportTarget, SecretSource, resolve_epoch_for};
use clap::ValueEnum as _;

use super::{Purpose, git_short_sha, load_container, resolve_version};
use crate::cli::{BuildArgs, BuildFlags, PublishArgs};
use crate::{outputs, progress};

/// `publish` through the engine.
pub async fn publish(args: PublishArgs) -> Result<ExitCode> {
    let mut extra = Vec::new();
    if args.allow_overwrite {
        extra.push("--allow-overwrite".to_owned());
    }
    extra.push("--json".to_owned()); // parsed here, printed as the user asked
    let run = Remote::new(&args.build, "publish", extra, None)?;
    super::require_commit_sha(&args.build, run.commit_sha.as_ref())?;
    let (code, stdout) = run.run(&args.build, false).await?;
    if code != 0 {
        return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
    }
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .context("the engine printed no result")?;
    let result: serde_json::Value =
        serde_json::from_str(last).context("the engine's result is not JSON")?;
    let field = |name: &str| {
        result[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("the engine's result has no `{name}`"))
    };
    let (reference, digest, tag) = (field("ref")?, field("digest")?, field("tag")?);
    let digest: blumeops_core::Digest = digest
        .parse()
        .map_err(|_| anyhow::anyhow!("the engine's digest `{digest}` is not valid"))?;
    outputs::write_workflow_outputs(&reference, &digest, &tag)?;
    if args.json {
        println!("{}", outputs::json_line(&reference, &digest, &tag));
    } else {
        println!("{reference}@{digest}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `build` through the engine.
pub async fn build(args: BuildArgs) -> Result<ExitCode> {
    let output: ExportTarget = args.output.parse().map_err(blumeops_core::Error::from)?;
    let (inside, local) = match &output {
        ExportTarget::OciLayout { dir, .. } => (format!("{ENGINE_OUT_DIR}/image"), dir.clone()),
        ExportTarget::DockerArchive { path, .. } => {
            (format!("{ENGINE_OUT_DIR}/image.tar"), path.clone())
        }
    };
    let kind = if inside.ends_with(".tar") {
        "docker-archive"
    } else {
        "oci"
    };
    let extra = vec!["--output".to_owned(), format!("{kind}:{inside}")];
    let run = Remote::new(&args.build, "build", extra, Some((inside, local.clone())))?;
    let (code, _) = run.run(&args.build, true).await?;
    if code == 0 {
        eprintln!("copied the image to {}", args.output);
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// One command for the engine, resolved on this side.
struct Remote {
    args: Vec<String>,
    env: Vec<String>,
    handshake: session::Handshake,
    context: context::ContextArchive,
    fetch: Option<(String, PathBuf)>,
    commit_sha: Option<String>,
}

impl Remote {
    fn new(
        flags: &BuildFlags,
        command: &str,
        extra: Vec<String>,
        fetch: Option<(String, PathBuf)>,
    ) -> Result<Self> {
        let name = &flags.container_name;
        let secrets = super::resolve_secrets(&flags.secrets)?;
        // The first platform's container: its host files are every platform's.
        let platforms = super::parse_platforms(&flags.platforms)?;
        let load = super::Load {
            src: &flags.src,
            name,
            build_args: &flags.build_args,
            secrets: &secrets,
            platform: &platforms[0],
            notes: true,
        };
        let (container, declared) = load_container(&load, flags.version.is_none())?;
        // Resolved here, so the engine gets an explicit --version (or publish stops here).
        let purpose = if command == "publish" {
            Purpose::Publish
        } else {
            Purpose::Build
        };
        let version = resolve_version(flags, declared, purpose)?;
        let commit_sha = match &flags.commit_sha {
            Some(sha) => Some(sha.clone()),
            None => git_short_sha(&flags.src),
        };
        let own_dir = format!("containers/{name}");
        let paths: Vec<&str> = if flags.src.join(&own_dir).is_dir() {
            vec![own_dir.as_str()]
        } else {
            Vec::new()
        };
        let (epoch, _) =
            resolve_epoch_for(&flags.src, &paths).map_err(blumeops_core::Error::from)?;
        // The engine's container has none of this machine's registries.conf files.
        let mirrors = super::mirrors(flags)?;

        let ca_bundle = helper::client_ca_bundle();
        if ca_bundle.is_none() {
            eprintln!(
                "executor: no CA certificates found here (SSL_CERT_FILE, SSL_CERT_DIR, \
                 /etc/ssl/certs/ca-certificates.crt): the engine trusts its built-in roots only"
            );
        }
        let mut handshake = session::Handshake {
            client_version: env!("CARGO_PKG_VERSION").to_owned(),
            ca_bundle,
            ..Default::default()
        };
        if let Some(source) = &flags.registry_password {
            let parsed: SecretSource = source
                .parse()
                .map_err(blumeops_core::Error::from)
                .context("invalid --registry-password")?;
            let value = parsed.resolve().map_err(blumeops_core::Error::from)?;
            handshake
                .secrets
                .insert(parsed.to_string(), value.expose().to_owned());
        }
        // Build secrets too: the engine's command line names their sources only.
        for (spec, value) in &secrets {
            handshake
                .secrets
                .insert(spec.source.to_string(), value.expose().to_owned());
        }
        // The Dockerfile and its .dockerignore go first, in the handshake: the engine reads
        // them to start; the rest of the context follows while it does.
        let early: Vec<PathBuf> = ["Dockerfile", ".dockerignore"]
            .iter()
            .map(|f| PathBuf::from(&own_dir).join(f))
            .filter(|rel| flags.src.join(rel).is_file())
            .collect();
        for rel in &early {
            use base64::Engine as _;
            let path = flags.src.join(rel);
            let bytes = std::fs::read(&path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            handshake.early_files.insert(
                rel.to_string_lossy().into_owned(),
                base64::engine::general_purpose::STANDARD.encode(bytes),
            );
        }
        let context = context::archive(&container, &flags.src, &early)
            .map_err(blumeops_core::executor::Error::from)
            .map_err(blumeops_core::Error::from)?;

        let mut args: Vec<String> = vec!["--executor".into(), "root".into(), command.into()];
        let mut flag = |name: &str, value: &str| {
            args.push(format!("--{name}"));
            args.push(value.to_owned());
        };
        flag("src", ENGINE_SRC_DIR);
        flag("container-name", name);
        flag("version", &version);
        if let Some(sha) = &commit_sha {
            flag("commit-sha", sha);
        }
        for a in &flags.build_args {
            flag("build-arg", a);
        }
        for (spec, _) in &secrets {
            flag("secret", &spec.to_string());
        }
        // Only as given: without it the engine builds for its own machine's platform.
        if !flags.platforms.is_empty() {
            flag("platform", &flags.platforms.join(","));
        }
        flag("registry", &flags.registry);
        flag("registry-username", &flags.registry_username);
        if let Some(source) = &flags.registry_password {
            // Only the source's name: its value travels in the handshake.
            flag("registry-password", source);
        }
        for mirror in mirrors.flags() {
            flag("registry-mirror", &mirror.to_string());
        }
        // Always, even empty: the engine then reads no files of its own image.
        flag("registries-conf-toml", &mirrors.conf().to_toml());
        flag("retries", &flags.retry.retries.to_string());
        flag("retry-max-time", &flags.retry.retry_max_time.to_string());
        // The engine reports events as JSON lines; the client shows them in its own mode.
        flag("progress", progress::Mode::Json.arg());
        for step in &flags.no_cache_steps {
            flag("no-cache-step", step);
        }
        if let Some(jobs) = flags.jobs {
            flag("jobs", &jobs.to_string());
        }
        flag("cache-max-bytes", &flags.cache_max_bytes);
        if let Some(repository) = super::cache_repository(flags)? {
            // Resolved here (`auto`), so the engine needs no registry of its own to do it.
            let text = format!("{}/{}", repository.registry(), repository.repository());
            flag("cache-repo", &text);
            flag("cache-volume-max-bytes", &flags.cache_volume_max_bytes);
        }
        flag("step-pids-max", &flags.step_pids_max.to_string());
        let compression = flags.compression.to_possible_value().expect("named");
        flag("compression", compression.get_name());
        if flags.plain_http {
            args.push("--plain-http".into());
        }
        if flags.no_cache {
            args.push("--no-cache".into());
        }
        args.extend(extra);
        let env = vec![
            format!("{}={epoch}", blumeops_core::SOURCE_DATE_EPOCH),
            "CI=1".to_owned(),
        ];
        Ok(Self {
            args,
            env,
            handshake,
            context,
            fetch,
            commit_sha,
        })
    }

    /// Run it; stdout passes through when `show_stdout`, and is returned either way.
    async fn run(self, flags: &BuildFlags, show_stdout: bool) -> Result<(i32, String)> {
        let core =
            |e: docker::Error| blumeops_core::Error::from(blumeops_core::executor::Error::from(e));
        let (endpoint, client, info) = endpoint::find().await.map_err(core)?;
        let mut note = |n: &str| eprintln!("executor: {n}");
        let image = match &flags.engine_image {
            Some(image) => {
                // The daemon pulls it; from the target registry, with this build's password.
                let same_registry = image.split('/').next() == Some(flags.registry.as_str());
                let password = flags
                    .registry_password
                    .as_deref()
                    .and_then(|source| source.parse::<SecretSource>().ok())
                    .and_then(|source| self.handshake.secrets.get(&source.to_string()));
                let credentials = password
                    .filter(|_| same_registry)
                    .map(|p| (flags.registry_username.clone(), p.clone()));
                helper::ensure_named(&client, &endpoint, image, credentials)
                    .await
                    .map_err(core)?;
                image.clone()
            }
            None => helper::ensure(&client, &endpoint, &info, &mut note)
                .await
                .map_err(core)?,
        };
        eprintln!(
            "executor: docker ({endpoint}, {} {}/{}; engine {image}, cache volume {})",
            info.version, info.os, info.arch, flags.engine_volume
        );
        let name = session::new_name();
        let request = session::RemoteRun {
            docker: &client,
            endpoint: &endpoint,
            image,
            name: name.clone(),
            volume: flags.engine_volume.clone(),
            args: self.args,
            env: self.env,
            handshake: self.handshake,
            context: self.context,
            fetch: self.fetch,
        };
        // The engine's events come as JSON lines on its stderr: shown here in this
        // display's mode; any other line passes through.
        let display = progress::Progress::new(progress::Mode::resolve(flags.progress));
        let mut result = None;
        let mut pending = Vec::new();
        let mut stdout = Vec::new();
        let mut output = |stderr: bool, bytes: &[u8]| {
            if stderr {
                pending.extend_from_slice(bytes);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if let Some(r) = display.engine_line(&String::from_utf8_lossy(&line)) {
                        result = Some(r);
                    }
                }
            } else {
                stdout.extend_from_slice(bytes);
                if show_stdout {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(bytes);
                    let _ = o.flush();
                }
            }
        };
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("failed to watch for SIGTERM")?;
        let outcome = tokio::select! {
            r = session::run(request, &mut output) => r,
            _ = tokio::signal::ctrl_c() => {
                flush_partial(&display, &pending);
                display.interrupted();
                eprintln!("interrupted: stopping the engine container {name}");
                session::remove(&client, &name).await;
                return Ok((130, String::new()));
            }
            _ = terminate.recv() => {
                flush_partial(&display, &pending);
                display.interrupted();
                eprintln!("terminated: stopping the engine container {name}");
                session::remove(&client, &name).await;
                return Ok((143, String::new()));
            }
        };
        flush_partial(&display, &pending);
        let code = match outcome {
            Ok(code) => code,
            Err(e) => {
                display.fail(&e.to_string());
                return Err(core(e).into());
            }
        };
        match result {
            Some(progress::EngineResult {
                ok: true, digest, ..
            }) if code == 0 => {
                let digest = digest.and_then(|d| d.parse::<blumeops_core::Digest>().ok());
                display.finish(digest.as_ref());
            }
            Some(progress::EngineResult { error, .. }) => display
                .fail(&error.unwrap_or_else(|| format!("the engine exited with code {code}"))),
            None => display.fail(&format!("the engine exited with code {code}")),
        }
        Ok((code, String::from_utf8_lossy(&stdout).into_owned()))
    }
}

/// Show what the engine wrote after its last newline, if anything.
fn flush_partial(display: &progress::Progress, pending: &[u8]) {
    if !pending.is_empty() {
        display.engine_line(&String::from_utf8_lossy(pending));
    }
}

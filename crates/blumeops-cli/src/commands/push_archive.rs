//! `blumeops push-archive FILE`: push an image built elsewhere (a docker archive, as
//! `nix-build` of a dockerTools image or `skopeo copy ... docker-archive:` writes it) to the
//! registry as an OCI image, under the Nix workflow's tag `VERSION-SHA-nix`.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use blumeops_core::{
    ImageRef, ImportOptions, RegistryClient, Store, TagPolicy, file_container_version,
    import_docker_archive_with,
};

use super::{git_short_sha, registry_options};
use crate::cli::{NAMESPACE, PushArchiveArgs};
use crate::{containers, outputs};

/// Suffix of the tags of images built by Nix.
pub const NIX_TAG_SUFFIX: &str = "nix";

pub async fn run(args: PushArchiveArgs) -> Result<ExitCode> {
    // Everything that can be checked is checked before the (possibly long) import.
    let version = version(&args)?;
    let commit_sha = match &args.commit_sha {
        Some(sha) => sha.clone(),
        None => git_short_sha(&args.src).ok_or_else(|| {
            invalid(
                &args.container_name,
                format!(
                    "cannot determine the commit sha: `{}` is not a git checkout; pass --commit-sha",
                    args.src.display()
                ),
            )
        })?,
    };
    let tag = format!("{version}-{commit_sha}-{NIX_TAG_SUFFIX}");
    let text = format!(
        "{}/{NAMESPACE}/{}:{tag}",
        args.registry.trim_end_matches('/'),
        args.container_name
    );
    let target: ImageRef = text
        .parse()
        .map_err(blumeops_core::Error::from)
        .with_context(|| format!("invalid target image reference `{text}`"))?;
    let mut registry = registry_options(
        &args.registry,
        &args.registry_username,
        args.registry_password.as_deref(),
        args.plain_http,
    )?;
    registry.retry = args.retry.policy();
    let client = RegistryClient::new(registry).map_err(blumeops_core::Error::from)?;
    let store = Store::open_default().map_err(blumeops_core::Error::from)?;

    // Import: blocking file and compression work, off the async workers.
    let mut options = ImportOptions::new();
    if let Some(index) = args.image_index {
        options = options.with_image_index(index);
    }
    let file = args.file.clone();
    eprintln!("importing {}", file.display());
    let started = Instant::now();
    let image = {
        let store = store.clone();
        let path = file.clone();
        tokio::task::spawn_blocking(move || import_docker_archive_with(&path, &store, &options))
            .await
            .map_err(|_| blumeops_core::Error::TaskPanicked)?
            .map_err(blumeops_core::Error::from)
            .with_context(|| format!("failed to import {}", file.display()))?
    };
    eprintln!(
        "imported {} in {:.2}s: config {}, {} layers, manifest {}",
        file.display(),
        started.elapsed().as_secs_f64(),
        image.config.digest,
        image.layers.len(),
        image.manifest.digest
    );

    // Push, with publish's tag policy.
    let policy = if args.allow_overwrite {
        TagPolicy::AllowOverwrite
    } else {
        TagPolicy::CreateOnly
    };
    eprintln!("pushing {target}");
    let started = Instant::now();
    let report = client
        .push_image(&target, &image, &store, policy)
        .await
        .map_err(blumeops_core::Error::from)
        .with_context(|| format!("failed to publish {target}"))?;
    if report.unchanged {
        eprintln!(
            "tag already points at {}: nothing pushed ({:.2}s)",
            report.digest,
            started.elapsed().as_secs_f64()
        );
    } else {
        eprintln!(
            "pushed {} in {:.2}s: {} blobs uploaded ({} bytes), {} already present",
            report.digest,
            started.elapsed().as_secs_f64(),
            report.blobs_uploaded,
            report.bytes_uploaded,
            report.blobs_skipped
        );
    }
    let reference = target.to_string();
    outputs::write_workflow_outputs(&reference, &report.digest, &tag)?;
    if args.json {
        println!("{}", outputs::json_line(&reference, &report.digest, &tag));
    } else {
        println!("{}", target.with_digest(report.digest.clone()));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--version`, else the version in containers/NAME/default.nix (or Dockerfile), else the
/// native definition's.
fn version(args: &PushArchiveArgs) -> Result<String> {
    let version = match &args.version {
        Some(v) => v.clone(),
        None => match file_container_version(&args.src, &args.container_name)
            .map_err(blumeops_core::Error::from)?
        {
            Some(v) => v,
            None => match containers::find(&args.container_name) {
                Some(definition) => definition.version().to_owned(),
                None => {
                    let nix = args
                        .src
                        .join("containers")
                        .join(&args.container_name)
                        .join("default.nix");
                    return Err(invalid(
                        &args.container_name,
                        format!(
                            "no version: `{}` does not exist; pass --version",
                            nix.display()
                        ),
                    )
                    .into());
                }
            },
        },
    };
    if version.is_empty() {
        bail!(invalid(
            &args.container_name,
            "--version must not be empty".to_owned()
        ));
    }
    Ok(version)
}

fn invalid(name: &str, message: String) -> blumeops_core::Error {
    blumeops_core::DefinitionError::Invalid {
        name: name.to_owned(),
        message,
    }
    .into()
}

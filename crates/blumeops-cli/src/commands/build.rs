//! `blumeops build`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use blumeops_core::ExportTarget;

use super::{Purpose, Targets, prepare};
use crate::cli::BuildArgs;

pub async fn run(args: BuildArgs) -> Result<ExitCode> {
    let output: ExportTarget = args.output.parse().map_err(blumeops_core::Error::from)?;
    let prepared = prepare(&args.build, Purpose::Build)?;
    let tag = prepared.tag();
    let repo_tag = format!("{}:{tag}", prepared.repository);
    let target = output.named(&tag, &repo_tag);
    let built = match &prepared.targets {
        Targets::One(container) => container
            .export(&prepared.engine, &target)
            .await
            .map(|built| built.image.manifest.digest),
        Targets::Several(platforms) => platforms
            .export(&prepared.engine, &target)
            .await
            .map(|built| built.index.digest),
    };
    let digest = match built {
        Ok(digest) => digest,
        Err(err) => {
            prepared.progress.fail(&format!("{err:#}"));
            return Err(err).with_context(|| format!("failed to build {}", args.output));
        }
    };
    prepared.finish(&digest);
    eprintln!("wrote {} to {}", repo_tag, args.output);
    println!("{repo_tag}@{digest}");
    Ok(ExitCode::SUCCESS)
}

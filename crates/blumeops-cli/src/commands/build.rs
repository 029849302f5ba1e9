//! `blumeops build`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use blumeops_core::ExportTarget;

use super::{Purpose, prepare};
use crate::cli::BuildArgs;

pub async fn run(args: BuildArgs) -> Result<ExitCode> {
    let output: ExportTarget = args.output.parse().map_err(blumeops_core::Error::from)?;
    let prepared = prepare(&args.build, Purpose::Build)?;
    let tag = prepared.tag();
    let repo_tag = format!("{}:{tag}", prepared.repository);
    let target = output.named(&tag, &repo_tag);
    let built = match prepared.container.export(&prepared.engine, &target).await {
        Ok(built) => built,
        Err(err) => {
            prepared.progress.fail(&format!("{err:#}"));
            return Err(err).with_context(|| format!("failed to build {}", args.output));
        }
    };
    prepared.finish(&built.image.manifest.digest);
    eprintln!("wrote {} to {}", repo_tag, args.output);
    println!("{repo_tag}@{}", built.image.manifest.digest);
    Ok(ExitCode::SUCCESS)
}

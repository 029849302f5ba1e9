//! `blumeops publish`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use blumeops_core::TagPolicy;

use super::{Purpose, Targets, prepare};
use crate::cli::PublishArgs;
use crate::outputs;

pub async fn run(args: PublishArgs) -> Result<ExitCode> {
    let prepared = prepare(&args.build, Purpose::Publish)?;
    super::require_commit_sha(&args.build, prepared.commit_sha.as_ref())?;
    let target = prepared.target()?;
    let policy = if args.allow_overwrite {
        TagPolicy::AllowOverwrite
    } else {
        TagPolicy::CreateOnly
    };
    let published = match &prepared.targets {
        Targets::One(container) => container.publish(&prepared.engine, &target, policy).await,
        Targets::Several(platforms) => platforms.publish(&prepared.engine, &target, policy).await,
    };
    let published = match published {
        Ok(published) => published,
        Err(err) => {
            prepared.progress.fail(&format!("{err:#}"));
            return Err(err).with_context(|| format!("failed to publish {target}"));
        }
    };
    let digest = &published.report.digest;
    prepared.finish(digest);
    let (reference, tag) = (target.to_string(), prepared.tag());
    outputs::write_workflow_outputs(&reference, digest, &tag)?;
    if args.json {
        println!("{}", outputs::json_line(&reference, digest, &tag));
    } else {
        println!("{published}");
    }
    Ok(ExitCode::SUCCESS)
}

//! `blumeops publish`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use blumeops_core::TagPolicy;

use super::prepare;
use crate::cli::PublishArgs;
use crate::outputs;

pub async fn run(args: PublishArgs) -> Result<ExitCode> {
    let prepared = prepare(&args.build)?;
    if prepared.commit_sha.is_none() {
        anyhow::bail!(blumeops_core::Error::from(
            blumeops_core::DefinitionError::Invalid {
                name: args.build.container_name.clone(),
                message: format!(
                    "cannot determine the commit sha: `{}` is not a git checkout; pass --commit-sha",
                    args.build.src.display()
                ),
            }
        ));
    }
    let target = prepared.target()?;
    let policy = if args.allow_overwrite {
        TagPolicy::AllowOverwrite
    } else {
        TagPolicy::CreateOnly
    };
    let published = match prepared
        .container
        .publish(&prepared.engine, &target, policy)
        .await
    {
        Ok(published) => published,
        Err(err) => {
            prepared.progress.fail();
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

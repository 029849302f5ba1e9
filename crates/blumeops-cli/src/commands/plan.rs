//! `blumeops plan`: the step graph, without running anything.

use std::process::ExitCode;

use anyhow::{Context, Result};
use blumeops_core::{BuildSecret, Secret};

use super::load_container;
use crate::cli::{PlanArgs, PlanFormat};

pub fn run(args: PlanArgs) -> Result<ExitCode> {
    // A RUN whose secret is not given plans without it (or fails if it is required).
    let secrets = planned_secrets(&args.secrets)?;
    let (container, _) = load_container(
        &args.src,
        &args.container_name,
        &args.build_args,
        &secrets,
        false,
    )?;
    let plan = container.plan();
    let format = if args.json {
        PlanFormat::Json
    } else {
        args.format
    };
    if format == PlanFormat::Json {
        let json = serde_json::to_string_pretty(&plan).context("failed to serialize the plan")?;
        println!("{json}");
    } else if format == PlanFormat::Mermaid {
        print!("{}", plan.to_mermaid(&args.container_name));
    } else if format == PlanFormat::Dot {
        print!("{}", plan.to_dot(&args.container_name));
    } else {
        let stages = plan.stages.len();
        println!(
            "{}: {} step{} in {stages} stage{}",
            args.container_name,
            plan.total_steps,
            if plan.total_steps == 1 { "" } else { "s" },
            if stages == 1 { "" } else { "s" },
        );
        println!();
        print!("{plan}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The `--secret` flags, parsed as `build` parses them, each with a stand-in value: a plan
/// shows a secret by its id, and reading the source could run a command (`cmd:`).
fn planned_secrets(flags: &[String]) -> Result<Vec<(BuildSecret, Secret)>> {
    let mut out: Vec<(BuildSecret, Secret)> = Vec::new();
    for text in flags {
        let spec: BuildSecret = text.parse().map_err(blumeops_core::Error::from)?;
        out.retain(|(s, _)| s.id != spec.id);
        out.push((spec, Secret::new("not read by plan")));
    }
    Ok(out)
}

//! `blumeops plan`: the step graph, without running anything.

use std::process::ExitCode;

use anyhow::{Context, Result};

use super::load_container;
use crate::cli::{PlanArgs, PlanFormat};

pub fn run(args: PlanArgs) -> Result<ExitCode> {
    // No secrets: a RUN whose secret is not required plans without it.
    let (container, _) = load_container(
        &args.src,
        &args.container_name,
        &args.build_args,
        &[],
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

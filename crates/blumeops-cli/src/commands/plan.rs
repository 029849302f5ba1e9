//! `blumeops plan`: the step graph, without running anything.

use std::process::ExitCode;

use anyhow::{Context, Result};
use blumeops_core::{BuildSecret, Plan, Platform, Secret};

use super::{InvalidInput, Load, load_container, parse_platforms};
use crate::cli::{PlanArgs, PlanFormat};

pub fn run(args: PlanArgs) -> Result<ExitCode> {
    let platforms = parse_platforms(&args.platforms)?;
    // A RUN whose secret is not given plans without it (or fails if it is required).
    let secrets = planned_secrets(&args.secrets)?;
    let mut plans: Vec<(Platform, Plan)> = Vec::with_capacity(platforms.len());
    for (i, platform) in platforms.iter().enumerate() {
        let load = Load {
            src: &args.src,
            name: &args.container_name,
            build_args: &args.build_args,
            secrets: &secrets,
            platform,
            notes: i == 0,
        };
        let (container, _) = load_container(&load, false)?;
        plans.push((platform.clone(), container.plan()));
    }
    let format = if args.json {
        PlanFormat::Json
    } else {
        args.format
    };
    // Without --platform, the plan alone (for the host's platform), as before platforms.
    let named = !args.platforms.is_empty();
    let name = &args.container_name;
    match format {
        PlanFormat::Json if named => {
            let list: Vec<_> = plans
                .iter()
                .map(|(platform, plan)| {
                    serde_json::json!({ "platform": platform.to_string(), "plan": plan })
                })
                .collect();
            let json = serde_json::to_string_pretty(&serde_json::json!({ "platforms": list }))
                .context("failed to serialize the plan")?;
            println!("{json}");
        }
        PlanFormat::Json => {
            let json = serde_json::to_string_pretty(&plans[0].1)
                .context("failed to serialize the plan")?;
            println!("{json}");
        }
        PlanFormat::Mermaid | PlanFormat::Dot if plans.len() > 1 => {
            return Err(InvalidInput::new(format!(
                "--format {}: a picture shows one platform's plan, and {} were given",
                if format == PlanFormat::Mermaid {
                    "mermaid"
                } else {
                    "dot"
                },
                plans.len()
            ))
            .with_hint("give one --platform, or use --format text or json")
            .into());
        }
        PlanFormat::Mermaid => print!("{}", plans[0].1.to_mermaid(name)),
        PlanFormat::Dot => print!("{}", plans[0].1.to_dot(name)),
        PlanFormat::Text => {
            for (i, (platform, plan)) in plans.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                let stages = plan.stages.len();
                let title = if named {
                    format!("{name} for {platform}")
                } else {
                    name.clone()
                };
                println!(
                    "{title}: {} step{} in {stages} stage{}",
                    plan.total_steps,
                    if plan.total_steps == 1 { "" } else { "s" },
                    if stages == 1 { "" } else { "s" },
                );
                println!();
                print!("{plan}");
            }
        }
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

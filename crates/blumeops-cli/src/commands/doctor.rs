//! `blumeops doctor`: which executor `auto` picks here, and what each one needs.

use std::process::ExitCode;

use anyhow::Result;
use blumeops_core::executor::{self, DoctorReport};

use crate::cli::DoctorArgs;

pub fn run(args: &DoctorArgs) -> Result<ExitCode> {
    let report = executor::doctor();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(if report.auto.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn text(r: &DoctorReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    match r.auto {
        Some(kind) => {
            let _ = writeln!(s, "executor: auto picks {kind}");
        }
        None => {
            let _ = writeln!(s, "executor: auto finds none (build steps cannot run here)");
        }
    }
    let _ = writeln!(s, "kernel: {}", r.kernel);
    let _ = writeln!(s, "user: {} (uid {})", r.user, r.uid);
    if r.in_user_namespace {
        let _ = writeln!(s, "this process runs in a user namespace");
    }
    for c in &r.candidates {
        let state = if c.usable() { "usable" } else { "unusable" };
        let _ = writeln!(s, "\n{}: {state}", c.name);
        for (what, value) in &c.details {
            let _ = writeln!(s, "  {what}: {value}");
        }
        for p in &c.problems {
            let _ = writeln!(s, "  problem: {}\n    fix: {}", p.what, p.fix);
        }
        for p in &c.warnings {
            let _ = writeln!(s, "  warning: {}\n    fix: {}", p.what, p.fix);
        }
    }
    s
}

//! `blumeops doctor`: which executor `auto` picks here, and what each one needs.

use std::process::ExitCode;

use anyhow::Result;
use blumeops_core::executor::emulation::{self, Runs};
use blumeops_core::executor::{self, DoctorReport};
use blumeops_core::{MirrorFlag, Platform, RegistriesConf};

use crate::cli::DoctorArgs;

pub fn run(args: &DoctorArgs) -> Result<ExitCode> {
    let report = executor::doctor();
    let registries = Registries::probe();
    let platforms = platforms();
    if args.json {
        let mut json = serde_json::to_value(&report)?;
        json["registries"] = serde_json::to_value(&registries)?;
        json["platforms"] = serde_json::to_value(&platforms)?;
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        print!(
            "{}{}{}",
            text(&report),
            registries.text(),
            platforms_text(&platforms)
        );
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

/// Whether steps of a common platform can run here, and how (for `--platform`).
#[derive(Debug, serde::Serialize)]
struct PlatformSupport {
    platform: String,
    /// `native`, `emulated` or `no`.
    runs: &'static str,
    /// The binfmt_misc handler, or why the platform cannot run.
    detail: Option<String>,
}

/// The platforms images are commonly built for.
const COMMON_PLATFORMS: [&str; 7] = [
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v7",
    "linux/386",
    "linux/ppc64le",
    "linux/s390x",
    "linux/riscv64",
];

fn platforms() -> Vec<PlatformSupport> {
    COMMON_PLATFORMS
        .iter()
        .map(|text| {
            let platform: Platform = text.parse().expect("a valid platform");
            let (runs, detail) = match emulation::runs(&platform) {
                Ok(Runs::Native) => ("native", None),
                Ok(Runs::Emulated(handler)) => ("emulated", Some(handler)),
                Err(e) => ("no", Some(e.why)),
            };
            PlatformSupport {
                platform: (*text).to_owned(),
                runs,
                detail,
            }
        })
        .collect()
}

fn platforms_text(platforms: &[PlatformSupport]) -> String {
    use std::fmt::Write as _;
    let mut s = String::from(
        "
platforms whose steps can run here (--platform):
",
    );
    for p in platforms {
        let _ = match (&p.detail, p.runs) {
            (None, _) => writeln!(s, "  {}: {}", p.platform, p.runs),
            (Some(handler), "emulated") => {
                writeln!(s, "  {}: emulated ({handler})", p.platform)
            }
            (Some(why), _) => writeln!(s, "  {}: no ({why})", p.platform),
        };
    }
    s
}

/// Where base images may come from instead of their registries: registries.conf and
/// `BLUMEOPS_REGISTRY_MIRRORS` (a build's `--registry-mirror` flags add to these).
#[derive(Debug, serde::Serialize)]
struct Registries {
    /// The registries.conf files read.
    files: Vec<String>,
    /// Their `[[registry]]` entries with mirrors, and those that block their prefix.
    mirror_rules: usize,
    blocked_rules: usize,
    /// Mirrors in `BLUMEOPS_REGISTRY_MIRRORS`.
    env_mirrors: usize,
    /// Why a file or the variable cannot be used.
    problems: Vec<String>,
}

impl Registries {
    fn probe() -> Self {
        let mut problems = Vec::new();
        let conf = RegistriesConf::load().unwrap_or_else(|e| {
            problems.push(e.to_string());
            RegistriesConf::default()
        });
        let env = std::env::var("BLUMEOPS_REGISTRY_MIRRORS").unwrap_or_default();
        let mut env_mirrors = 0;
        for value in env.split(',').filter(|v| !v.trim().is_empty()) {
            match value.parse::<MirrorFlag>() {
                Ok(_) => env_mirrors += 1,
                Err(e) => problems.push(format!("BLUMEOPS_REGISTRY_MIRRORS: {e}")),
            }
        }
        Self {
            files: conf
                .files()
                .iter()
                .map(|f| f.display().to_string())
                .collect(),
            mirror_rules: conf.mirror_rules(),
            blocked_rules: conf.blocked_rules(),
            env_mirrors,
            problems,
        }
    }

    fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::from("\nregistries:\n");
        if self.files.is_empty() {
            let _ = writeln!(s, "  registries.conf: none found");
        } else {
            let _ = writeln!(s, "  registries.conf: {}", self.files.join(", "));
        }
        let _ = writeln!(
            s,
            "  mirror rules: {} (blocked prefixes: {})",
            self.mirror_rules, self.blocked_rules
        );
        if self.env_mirrors > 0 {
            let _ = writeln!(
                s,
                "  BLUMEOPS_REGISTRY_MIRRORS: {} mirrors",
                self.env_mirrors
            );
        }
        for p in &self.problems {
            let _ = writeln!(s, "  problem: {p}");
        }
        s
    }
}

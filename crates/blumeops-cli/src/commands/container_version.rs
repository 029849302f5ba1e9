//! `blumeops container-version NAME`.

use std::process::ExitCode;

use anyhow::Result;
use blumeops_core::file_container_version;

use crate::cli::VersionArgs;
use crate::containers;

pub fn run(args: VersionArgs) -> Result<ExitCode> {
    if let Some(def) = containers::find(&args.name) {
        println!("{}", def.version());
        return Ok(ExitCode::SUCCESS);
    }
    match file_container_version(&args.src, &args.name).map_err(blumeops_core::Error::from)? {
        Some(version) => {
            println!("{version}");
            Ok(ExitCode::SUCCESS)
        }
        None => Err(super::unknown_container(&args.name, &args.src).into()),
    }
}

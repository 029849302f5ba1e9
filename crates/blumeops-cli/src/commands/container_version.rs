//! `blumeops container-version NAME`.

use std::process::ExitCode;

use anyhow::Result;
use blumeops_core::{DefinitionError, file_container_names, file_container_version};

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
        None => {
            let mut known: Vec<String> = containers::native()
                .iter()
                .map(|d| d.name().to_owned())
                .collect();
            known.extend(file_container_names(&args.src));
            known.sort();
            known.dedup();
            Err(
                blumeops_core::Error::from(DefinitionError::UnknownContainer {
                    name: args.name,
                    known,
                })
                .into(),
            )
        }
    }
}

//! Define a container with the library and publish it: a base image plus one host file.
//!
//! ```sh
//! REGISTRY_PASSWORD=... cargo run --release -p blumeops-examples --example publish_file -- \
//!     BASE_REF HOST_FILE TARGET_REF [USERNAME]
//! ```
//!
//! The password is read from `REGISTRY_PASSWORD` (through the `env:` secret source, as the
//! CLI does) and used for the target's registry, which is also where the base is pulled from
//! when they share a host.

use std::process::ExitCode;

use blumeops_core::{
    ClientOptions, Container, Credential, Credentials, Engine, EngineOptions, HostCopy, ImageRef,
    SecretSource, Store, TagPolicy,
};

async fn run(args: &[String]) -> Result<String, Box<dyn std::error::Error>> {
    let [base, file, target, rest @ ..] = args else {
        return Err("usage: publish_file BASE_REF HOST_FILE TARGET_REF [USERNAME]".into());
    };
    let target: ImageRef = target.parse()?;
    let mut credentials = Credentials::from_config_files();
    if std::env::var_os("REGISTRY_PASSWORD").is_some() {
        let password = "env:REGISTRY_PASSWORD".parse::<SecretSource>()?.resolve()?;
        let username = rest.first().cloned().unwrap_or_else(|| "zot-ci".to_owned());
        credentials =
            credentials.with_registry(target.registry(), Credential { username, password });
    }
    let engine = Engine::new(EngineOptions {
        registry: ClientOptions {
            credentials,
            ..ClientOptions::default()
        },
        ..EngineOptions::new(Store::open_default()?)
    })?;

    let container = Container::from(base.as_str())
        .with_file(
            "/data/payload",
            file.as_str(),
            HostCopy::default().with_mode(0o644),
        )
        .with_label("org.opencontainers.image.title", "payload")
        .with_default_args(["ls", "-l", "/data"]);
    let published = container
        .publish(&engine, &target, TagPolicy::CreateOnly)
        .await?;
    eprintln!(
        "uploaded {} blobs ({} bytes), skipped {}",
        published.report.blobs_uploaded,
        published.report.bytes_uploaded,
        published.report.blobs_skipped
    );
    Ok(published.to_string())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(reference) => {
            println!("{reference}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

//! `blumeops`: build blumeops container images without a Docker daemon and publish them to
//! zot. See the README for the exit codes.

mod cli;
mod commands;
mod containers;
mod outputs;
mod progress;

use std::process::ExitCode;

use blumeops_core::ErrorKind;
use clap::Parser;

use crate::cli::{Cli, Command};

/// Exit codes (documented in the README).
mod exit {
    pub const FAILURE: u8 = 1;
    pub const INVALID_INPUT: u8 = 2;
    pub const AUTH: u8 = 3;
    pub const TAG_CONFLICT: u8 = 4;
    pub const UNREACHABLE: u8 = 5;
    pub const INTEGRITY: u8 = 6;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Engine(args) = &cli.command {
        engine(&args.args);
    }
    run(cli)
}

/// The docker executor's engine: take the handshake from stdin, run the command line the
/// client sent, report its exit code, and exit once the client has what it needs.
fn engine(args: &[String]) -> ! {
    let serving = match blumeops_core::executor::docker::serve::start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: blumeops engine: {e}");
            std::process::exit(i32::from(exit::INVALID_INPUT));
        }
    };
    let inner = match Cli::try_parse_from(
        std::iter::once("blumeops".to_owned()).chain(args.iter().cloned()),
    ) {
        Ok(cli) if matches!(cli.command, Command::Build(_) | Command::Publish(_)) => cli,
        Ok(_) => {
            eprintln!("error: blumeops engine: only build and publish run in the engine");
            serving.finish(i32::from(exit::INVALID_INPUT));
        }
        Err(e) => {
            let _ = e.print();
            serving.finish(i32::from(exit::INVALID_INPUT));
        }
    };
    let code = run(inner);
    serving.finish(if code == ExitCode::SUCCESS {
        0
    } else {
        last_code()
    });
}

/// The code of the last [`report`]ed failure (1 when none was recorded).
fn last_code() -> i32 {
    i32::from(LAST_CODE.load(std::sync::atomic::Ordering::SeqCst).max(1))
}

static LAST_CODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

fn run(cli: Cli) -> ExitCode {
    // Before any thread starts: entering the rootless executor re-runs this program in a
    // user namespace, which only a single-threaded process may create.
    let docker = match enter_executor(&cli) {
        Ok(docker) => docker,
        Err(code) => return code,
    };
    // Two threads for the async work: it waits on the network and the sandbox, while the
    // work that uses the cores (steps, compression, hashing) runs on threads of its own. One
    // per core would add a stack and a malloc arena per core and buy nothing.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.min(2))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Publish(args) if docker => commands::remote::publish(args).await,
            Command::Build(args) if docker => commands::remote::build(args).await,
            Command::Publish(args) => commands::publish::run(args).await,
            Command::Build(args) => commands::build::run(args).await,
            Command::ContainerVersion(args) => commands::container_version::run(args),
            Command::Plan(args) => commands::plan::run(args),
            Command::List(args) => commands::list::run(args).await,
            Command::Changed(args) => commands::changed::run(args),
            Command::PushArchive(args) => commands::push_archive::run(args).await,
            Command::Cache(cmd) => commands::cache::run(cmd).await,
            Command::Doctor(args) => commands::doctor::run(&args),
            Command::Engine(_) => unreachable!("handled in main"),
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => report(&err),
    }
}

/// Make this process able to run build steps with the executor asked for: nothing to do
/// for root, or re-run in a user namespace (rootless), exiting as that child did. Commands
/// that run no steps skip it; `cache` enters the namespace so it can remove files owned by
/// mapped ids, and goes on without it when there is none. `Ok(true)`: build through the
/// docker executor.
fn enter_executor(cli: &Cli) -> Result<bool, ExitCode> {
    use blumeops_core::executor::{self, ExecutorKind, Prepared};
    let builds = matches!(cli.command, Command::Build(_) | Command::Publish(_));
    if !builds && !matches!(cli.command, Command::Cache(_)) {
        return Ok(false);
    }
    // `cache` acts on this machine's cache; the docker executor's lives in its volume.
    let kind = match cli.executor {
        ExecutorKind::Docker if !builds => ExecutorKind::Auto,
        kind => kind,
    }
    .on_this_system();
    // Off Linux `auto` is docker, and `cache` has no namespace to enter.
    if kind == ExecutorKind::Docker && !builds {
        return Ok(false);
    }
    match executor::prepare(kind) {
        Ok(Prepared::Ready(ExecutorKind::Rootless)) if builds => {
            eprintln!("executor: rootless ({})", executor::describe_current());
            Ok(false)
        }
        Ok(Prepared::Ready(_)) => Ok(false),
        Ok(Prepared::Docker) => Ok(builds),
        Ok(Prepared::Reexec(plan)) => match executor::reexec(&plan) {
            Ok(status) => executor::exit_like(status),
            Err(e) => Err(report(&anyhow::Error::from(blumeops_core::Error::from(e)))),
        },
        // Without an executor a build can still make every layer that runs no command; a
        // step that runs one says what is missing. An executor asked for by name must work,
        // and so must docker where `auto` means it.
        Err(_) if kind == ExecutorKind::Auto || !builds => Ok(false),
        Err(e) => Err(report(&anyhow::Error::from(blumeops_core::Error::from(e)))),
    }
}

/// Print the error chain once, a hint if there is one, and pick the exit code.
fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    if let Some(invalid) = err
        .chain()
        .find_map(|e| e.downcast_ref::<commands::InvalidInput>())
    {
        if let Some(hint) = invalid.hint {
            eprintln!("hint: {hint}");
        }
        return ExitCode::from(exit::INVALID_INPUT);
    }
    let core = err
        .chain()
        .find_map(|e| e.downcast_ref::<blumeops_core::Error>());
    if let Some(hint) = core.and_then(blumeops_core::Error::hint) {
        eprintln!("hint: {hint}");
    }
    let code = match core.map(blumeops_core::Error::kind) {
        Some(ErrorKind::InvalidInput) => exit::INVALID_INPUT,
        Some(ErrorKind::Auth) => exit::AUTH,
        Some(ErrorKind::TagConflict) => exit::TAG_CONFLICT,
        Some(ErrorKind::Unreachable) => exit::UNREACHABLE,
        Some(ErrorKind::Integrity) => exit::INTEGRITY,
        _ => exit::FAILURE,
    };
    LAST_CODE.store(code, std::sync::atomic::Ordering::SeqCst);
    ExitCode::from(code)
}

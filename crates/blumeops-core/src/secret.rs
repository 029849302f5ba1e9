//! Secrets given on the command line as `env:NAME`, `file:PATH` or `cmd:COMMAND`.
//!
//! A [`Secret`] never shows its value through `Debug` or `Display`, and no error here
//! carries it: errors name the source (`env:ZOT_CI_API_KEY`), never what it held.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The forms a secret source can take, shown in errors.
pub const ACCEPTED_FORMS: &str = "env:NAME, file:PATH or cmd:COMMAND";

/// Errors from parsing or reading a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text is not one of the accepted forms. The text itself is not repeated: it may be
    /// the secret pasted by mistake.
    #[error("invalid secret source: expected {ACCEPTED_FORMS}")]
    InvalidSource,
    /// A `--secret` is not one of the accepted forms (the text is not repeated).
    #[error("invalid --secret: expected {BUILD_SECRET_FORMS}")]
    InvalidBuildSecret,
    /// `env:` named an empty variable name.
    #[error("invalid secret source `{kind}:`: {kind}: needs a value after the colon")]
    EmptySource {
        /// `env`, `file` or `cmd`.
        kind: &'static str,
    },
    /// The environment variable is not set.
    #[error("environment variable `{name}` is not set (secret source `env:{name}`)")]
    EnvNotSet {
        /// Variable name.
        name: String,
    },
    /// The environment variable is not UTF-8.
    #[error("environment variable `{name}` is not valid UTF-8 (secret source `env:{name}`)")]
    EnvNotUnicode {
        /// Variable name.
        name: String,
    },
    /// The file could not be read.
    #[error("failed to read secret file `{}`", path.display())]
    ReadFile {
        /// File path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not UTF-8.
    #[error("secret file `{}` is not valid UTF-8", path.display())]
    FileNotUnicode {
        /// File path.
        path: PathBuf,
    },
    /// The command could not be started.
    #[error("failed to run secret command `{command}`")]
    SpawnCommand {
        /// The command line (what the user wrote, not its output).
        command: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The command exited unsuccessfully. Its output is not shown: it may hold the secret.
    #[error("secret command `{command}` failed with {status}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Exit status.
        status: std::process::ExitStatus,
    },
    /// The command printed something that is not UTF-8.
    #[error("secret command `{command}` printed output that is not valid UTF-8")]
    CommandNotUnicode {
        /// The command line.
        command: String,
    },
    /// The secret resolved to an empty string.
    #[error("secret from `{source_desc}` is empty")]
    Empty {
        /// Where it came from, e.g. `env:ZOT_CI_API_KEY`.
        source_desc: String,
    },
}

/// The forms of a build secret (`--secret`), shown in errors.
pub const BUILD_SECRET_FORMS: &str = "id=NAME,src=PATH, id=NAME,env=VAR (docker buildx, also with type=file|env) or \
     NAME=env:VAR, NAME=file:PATH, NAME=cmd:COMMAND";

/// A build secret: a name (a Dockerfile's `RUN --mount=type=secret,id=NAME`) and where its
/// value comes from. Written as docker buildx does (`id=tok,src=PATH`, `id=tok,env=VAR`,
/// with an optional `type=file|env`; `id=tok` alone reads the variable `tok`) or as
/// blumeops does (`tok=env:VAR`, `tok=file:PATH`, `tok=cmd:COMMAND`). A `src` file is read
/// as it is (as buildx does), a `file:` one less a trailing newline; both must be UTF-8.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BuildSecret {
    /// The secret's name.
    pub id: String,
    /// Where its value comes from.
    pub source: SecretSource,
}

impl FromStr for BuildSecret {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid_id = |id: &str| {
            !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        };
        // blumeops' form: the whole rest is the source (a command may hold commas).
        if let Some((id, rest)) = s.split_once('=')
            && ["env:", "file:", "cmd:"]
                .iter()
                .any(|p| rest.starts_with(p))
        {
            if !valid_id(id) {
                return Err(Error::InvalidBuildSecret);
            }
            return Ok(Self {
                id: id.to_owned(),
                source: rest.parse()?,
            });
        }
        let (mut id, mut kind, mut src, mut env) = (None, None, None, None);
        for part in s.split(',') {
            let (k, v) = part.split_once('=').ok_or(Error::InvalidBuildSecret)?;
            let slot = match k.trim() {
                "id" => &mut id,
                "type" => &mut kind,
                "src" | "source" => &mut src,
                "env" => &mut env,
                _ => return Err(Error::InvalidBuildSecret),
            };
            *slot = Some(v.to_owned());
        }
        let id = id
            .filter(|i| valid_id(i))
            .ok_or(Error::InvalidBuildSecret)?;
        let source = match (kind.as_deref(), src, env) {
            (None | Some("file"), Some(src), None) if !src.is_empty() => {
                SecretSource::FileExact(PathBuf::from(src))
            }
            (None | Some("env"), None, Some(env)) if !env.is_empty() => SecretSource::Env(env),
            // As buildx: an env secret without `env` reads the variable named like it.
            (None | Some("env"), None, None) => SecretSource::Env(id.clone()),
            _ => return Err(Error::InvalidBuildSecret),
        };
        Ok(Self { id, source })
    }
}

impl fmt::Display for BuildSecret {
    /// What the docker executor passes on: blumeops' form (`id=env:VAR`), or buildx's
    /// for a file read as it is (`id=NAME,src=PATH`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            SecretSource::FileExact(path) => write!(f, "id={},src={}", self.id, path.display()),
            source => write!(f, "{}={source}", self.id),
        }
    }
}

/// Where a secret comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable of this process.
    Env(String),
    /// A file; one trailing newline is dropped.
    File(PathBuf),
    /// A file as it is (a `--secret id=NAME,src=PATH`, as docker buildx reads it).
    FileExact(PathBuf),
    /// A command run with `sh -c`; its stdout, less one trailing newline.
    Cmd(String),
}

/// Values handed to this process for secret sources it cannot read itself: the docker
/// executor's engine gets the client's over its stdin, never in its environment.
static PROVIDED: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Make [`SecretSource::resolve`] of the source written `source` (`env:NAME`) give `value`.
pub fn provide(source: &str, value: String) {
    let mut provided = PROVIDED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    provided.retain(|(s, _)| s != source);
    provided.push((source.to_owned(), value));
}

impl SecretSource {
    /// Read the secret.
    pub fn resolve(&self) -> Result<Secret, Error> {
        let text = self.to_string();
        let provided = PROVIDED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|(s, _)| *s == text)
            .map(|(_, v)| v.clone());
        if let Some(value) = provided {
            return Ok(Secret::new(value));
        }
        let value = match self {
            Self::Env(name) => match std::env::var(name) {
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => {
                    return Err(Error::EnvNotSet { name: name.clone() });
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(Error::EnvNotUnicode { name: name.clone() });
                }
            },
            Self::File(path) | Self::FileExact(path) => {
                let bytes = std::fs::read(path).map_err(|source| Error::ReadFile {
                    path: path.clone(),
                    source,
                })?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| Error::FileNotUnicode { path: path.clone() })?;
                if matches!(self, Self::File(_)) {
                    strip_one_newline(text)
                } else {
                    text
                }
            }
            Self::Cmd(command) => {
                let output = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(command)
                    .stdin(std::process::Stdio::null())
                    .stderr(std::process::Stdio::inherit())
                    .output()
                    .map_err(|source| Error::SpawnCommand {
                        command: command.clone(),
                        source,
                    })?;
                if !output.status.success() {
                    return Err(Error::CommandFailed {
                        command: command.clone(),
                        status: output.status,
                    });
                }
                let text =
                    String::from_utf8(output.stdout).map_err(|_| Error::CommandNotUnicode {
                        command: command.clone(),
                    })?;
                strip_one_newline(text)
            }
        };
        if value.is_empty() {
            return Err(Error::Empty {
                source_desc: self.to_string(),
            });
        }
        Ok(Secret::new(value))
    }
}

fn strip_one_newline(mut text: String) -> String {
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    text
}

impl FromStr for SecretSource {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = s.split_once(':').ok_or(Error::InvalidSource)?;
        let kind: &'static str = match kind {
            "env" => "env",
            "file" => "file",
            "cmd" => "cmd",
            _ => return Err(Error::InvalidSource),
        };
        if rest.is_empty() {
            return Err(Error::EmptySource { kind });
        }
        Ok(match kind {
            "env" => Self::Env(rest.to_owned()),
            "file" => Self::File(PathBuf::from(rest)),
            _ => Self::Cmd(rest.to_owned()),
        })
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env:{name}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::FileExact(path) => write!(f, "src={}", path.display()),
            Self::Cmd(cmd) => write!(f, "cmd:{cmd}"),
        }
    }
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretSource({self})")
    }
}

/// A secret value. Its `Debug` and `Display` print `<redacted>`; read it with
/// [`Secret::expose`] only where it is sent (an `Authorization` header, a step's environment).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("env:ZOT_CI_API_KEY", SecretSource::Env("ZOT_CI_API_KEY".into()))]
    #[case("file:/run/secrets/key", SecretSource::File("/run/secrets/key".into()))]
    #[case("cmd:op read x", SecretSource::Cmd("op read x".into()))]
    fn parses_accepted_forms(#[case] input: &str, #[case] expected: SecretSource) {
        assert_eq!(input.parse::<SecretSource>().unwrap(), expected);
    }

    #[rstest]
    #[case("zak_0123456789abcdef")]
    #[case("ZOT_CI_API_KEY")]
    #[case("vault:secret")]
    fn rejects_other_forms_without_echoing_them(#[case] input: &str) {
        let err = input.parse::<SecretSource>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("env:NAME, file:PATH or cmd:COMMAND"), "{msg}");
        assert!(!msg.contains(input), "{msg} repeats the input");
    }

    #[test]
    fn empty_name_is_rejected() {
        let err = "env:".parse::<SecretSource>().unwrap_err();
        assert!(err.to_string().contains("env:"), "{err}");
    }

    #[test]
    fn unset_env_names_the_variable() {
        let src = SecretSource::Env("BLUMEOPS_TEST_SURELY_UNSET_VARIABLE".into());
        let err = src.resolve().unwrap_err();
        assert!(
            err.to_string()
                .contains("BLUMEOPS_TEST_SURELY_UNSET_VARIABLE"),
            "{err}"
        );
    }

    #[test]
    fn file_and_cmd_sources_strip_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "zak_file\n").unwrap();
        assert_eq!(
            SecretSource::File(path.clone()).resolve().unwrap().expose(),
            "zak_file"
        );
        // buildx's `src=` reads the file as it is.
        assert_eq!(
            SecretSource::FileExact(path).resolve().unwrap().expose(),
            "zak_file\n"
        );
        let cmd = SecretSource::Cmd("printf 'zak_cmd\\n'".into());
        assert_eq!(cmd.resolve().unwrap().expose(), "zak_cmd");
    }

    #[test]
    fn failing_command_does_not_show_its_output() {
        let err = SecretSource::Cmd("printf 'zak_%s' leaked; exit 3".into())
            .resolve()
            .unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains("zak_leaked"), "{msg}");
        assert!(msg.contains("exit status: 3"), "{msg}");
    }

    #[rstest]
    #[case("id=tok,src=/run/tok", "tok", SecretSource::FileExact("/run/tok".into()))]
    #[case(
        "type=file,id=tok,source=/run/tok",
        "tok",
        SecretSource::FileExact("/run/tok".into())
    )]
    #[case("id=tok,env=MYTOK", "tok", SecretSource::Env("MYTOK".into()))]
    #[case("type=env,id=tok,env=MYTOK", "tok", SecretSource::Env("MYTOK".into()))]
    #[case("id=MYTOK", "MYTOK", SecretSource::Env("MYTOK".into()))]
    #[case("tok=env:MYTOK", "tok", SecretSource::Env("MYTOK".into()))]
    #[case("tok=file:/run/tok", "tok", SecretSource::File("/run/tok".into()))]
    #[case("tok=cmd:echo a,b", "tok", SecretSource::Cmd("echo a,b".into()))]
    fn parses_build_secrets(#[case] input: &str, #[case] id: &str, #[case] source: SecretSource) {
        let parsed: BuildSecret = input.parse().unwrap();
        assert_eq!((parsed.id.as_str(), &parsed.source), (id, &source));
        // The docker executor passes blumeops' form on; it must read back the same.
        assert_eq!(parsed.to_string().parse::<BuildSecret>().unwrap(), parsed);
    }

    #[rstest]
    #[case("zak_0123456789abcdef")]
    #[case("id=tok,src=/a,env=B")]
    #[case("type=ssh,id=tok,src=/a")]
    #[case("id=,env=B")]
    #[case("id=tok,bogus=zak_0123456789abcdef")]
    #[case("bad id=env:X")]
    fn rejects_bad_build_secrets_without_echoing_them(#[case] input: &str) {
        let msg = input.parse::<BuildSecret>().unwrap_err().to_string();
        assert!(msg.contains("id=NAME,src=PATH"), "{msg}");
        assert!(!msg.contains("zak_0123456789abcdef"), "{msg}");
    }

    #[test]
    fn debug_and_display_are_redacted() {
        let s = Secret::new("zak_supersecret");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{:?}", Some(&s)), "Some(Secret(<redacted>))");
    }
}

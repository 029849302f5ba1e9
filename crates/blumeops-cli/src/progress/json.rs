//! `--progress json`: one JSON object per line on stderr, for tools. The schema is
//! versioned by the `v` field and documented in the README; a change that could break a
//! reader bumps [`VERSION`]. The docker executor's engine reports in this form too, and
//! the client shows what it reads in its own mode.

use std::time::Duration;

use blumeops_core::{CacheStatus, Digest, Event, PushReport};
use serde::{Deserialize, Serialize};

/// The schema version every line carries.
pub const VERSION: u32 = 1;

/// One line: the version, seconds since the command started, and the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    pub v: u32,
    pub t: f64,
    #[serde(flatten)]
    pub event: JsonEvent,
}

/// The events, tagged by `event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum JsonEvent {
    StepStarted {
        step: usize,
        total: usize,
        stage: usize,
        stage_name: String,
        description: String,
        /// The step's platform, when one build makes several.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        platform: Option<String>,
    },
    StepOutput {
        step: usize,
        stream: Stream,
        line: String,
    },
    StepFinished {
        step: usize,
        seconds: f64,
        cache: Cache,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    Pulled {
        step: usize,
        reference: String,
        digest: String,
        blobs: u64,
        bytes: u64,
        /// The mirror that served it; absent when its own registry did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mirror: Option<String>,
    },
    /// A mirror did not serve a base image; the next source is tried.
    MirrorFailed {
        step: usize,
        reference: String,
        mirror: String,
        error: String,
    },
    PushStarted {
        target: String,
    },
    PushProgress {
        done: usize,
        total: usize,
        uploaded: bool,
        bytes_sent: u64,
    },
    PushFinished {
        digest: String,
        unchanged: bool,
        blobs_uploaded: usize,
        blobs_skipped: usize,
        bytes_uploaded: u64,
        seconds: f64,
    },
    Warning {
        message: String,
    },
    Note {
        message: String,
    },
    RegistryCacheExported {
        repository: String,
        steps_exported: usize,
        steps_present: usize,
        volumes_exported: usize,
        bytes_uploaded: u64,
        seconds: f64,
    },
    /// The command's outcome: the last line.
    Result {
        ok: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        steps: usize,
        ran: usize,
        cached: usize,
        seconds: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cache {
    /// Taken from the step cache.
    Hit,
    /// Taken from the registry cache (another machine's build).
    Registry,
    /// Ran; `reason` says why.
    Ran,
    /// Changed only the image config.
    Config,
}

/// An engine event as schema data (`None` for events the schema does not carry).
pub fn from_event(event: &Event) -> Option<JsonEvent> {
    Some(match event {
        Event::StepStarted {
            index,
            total,
            stage,
            stage_name,
            description,
            platform,
        } => JsonEvent::StepStarted {
            step: *index,
            total: *total,
            stage: *stage,
            stage_name: stage_name.clone(),
            description: description.clone(),
            platform: platform.clone(),
        },
        Event::StepOutput {
            index,
            stderr,
            line,
        } => JsonEvent::StepOutput {
            step: *index,
            stream: if *stderr {
                Stream::Stderr
            } else {
                Stream::Stdout
            },
            line: line.clone(),
        },
        Event::StepFinished {
            index,
            elapsed,
            detail,
            cache,
        } => {
            let (cache, reason) = match cache {
                CacheStatus::Hit => (Cache::Hit, None),
                CacheStatus::Imported => (Cache::Registry, None),
                CacheStatus::Ran { reason } => (Cache::Ran, Some(reason.clone())),
                _ => (Cache::Config, None),
            };
            JsonEvent::StepFinished {
                step: *index,
                seconds: seconds(*elapsed),
                cache,
                reason,
                detail: detail.clone(),
            }
        }
        Event::Pulled {
            index,
            reference,
            digest,
            blobs_fetched,
            bytes_fetched,
            mirror,
        } => JsonEvent::Pulled {
            step: *index,
            reference: reference.clone(),
            digest: digest.to_string(),
            blobs: *blobs_fetched,
            bytes: *bytes_fetched,
            mirror: mirror.clone(),
        },
        Event::MirrorFailed {
            index,
            reference,
            mirror,
            error,
        } => JsonEvent::MirrorFailed {
            step: *index,
            reference: reference.clone(),
            mirror: mirror.clone(),
            error: error.clone(),
        },
        Event::PushStarted { target } => JsonEvent::PushStarted {
            target: target.clone(),
        },
        Event::PushProgress {
            done,
            total,
            uploaded,
            bytes_sent,
        } => JsonEvent::PushProgress {
            done: *done,
            total: *total,
            uploaded: *uploaded,
            bytes_sent: *bytes_sent,
        },
        Event::PushFinished { report, elapsed } => JsonEvent::PushFinished {
            digest: report.digest.to_string(),
            unchanged: report.unchanged,
            blobs_uploaded: report.blobs_uploaded,
            blobs_skipped: report.blobs_skipped,
            bytes_uploaded: report.bytes_uploaded,
            seconds: seconds(*elapsed),
        },
        Event::Warning { message } => JsonEvent::Warning {
            message: message.clone(),
        },
        Event::Note { message } => JsonEvent::Note {
            message: message.clone(),
        },
        Event::RegistryCacheExported {
            repository,
            steps_exported,
            steps_present,
            volumes_exported,
            bytes_uploaded,
            elapsed,
        } => JsonEvent::RegistryCacheExported {
            repository: repository.clone(),
            steps_exported: *steps_exported,
            steps_present: *steps_present,
            volumes_exported: *volumes_exported,
            bytes_uploaded: *bytes_uploaded,
            seconds: seconds(*elapsed),
        },
        _ => return None,
    })
}

/// Schema data back as an engine event (`None` for `result`, and for a digest that does
/// not parse).
pub fn to_event(event: &JsonEvent) -> Option<Event> {
    Some(match event.clone() {
        JsonEvent::StepStarted {
            step,
            total,
            stage,
            stage_name,
            description,
            platform,
        } => Event::StepStarted {
            index: step,
            total,
            stage,
            stage_name,
            description,
            platform,
        },
        JsonEvent::StepOutput { step, stream, line } => Event::StepOutput {
            index: step,
            stderr: stream == Stream::Stderr,
            line,
        },
        JsonEvent::StepFinished {
            step,
            seconds,
            cache,
            reason,
            detail,
        } => Event::StepFinished {
            index: step,
            elapsed: duration(seconds),
            detail,
            cache: match cache {
                Cache::Hit => CacheStatus::Hit,
                Cache::Registry => CacheStatus::Imported,
                Cache::Ran => CacheStatus::Ran {
                    reason: reason.unwrap_or_default(),
                },
                Cache::Config => CacheStatus::Config,
            },
        },
        JsonEvent::Pulled {
            step,
            reference,
            digest,
            blobs,
            bytes,
            mirror,
        } => Event::Pulled {
            index: step,
            reference,
            digest: digest.parse().ok()?,
            blobs_fetched: blobs,
            bytes_fetched: bytes,
            mirror,
        },
        JsonEvent::MirrorFailed {
            step,
            reference,
            mirror,
            error,
        } => Event::MirrorFailed {
            index: step,
            reference,
            mirror,
            error,
        },
        JsonEvent::PushStarted { target } => Event::PushStarted { target },
        JsonEvent::PushProgress {
            done,
            total,
            uploaded,
            bytes_sent,
        } => Event::PushProgress {
            done,
            total,
            uploaded,
            bytes_sent,
        },
        JsonEvent::PushFinished {
            digest,
            unchanged,
            blobs_uploaded,
            blobs_skipped,
            bytes_uploaded,
            seconds,
        } => Event::PushFinished {
            report: PushReport {
                digest: digest.parse::<Digest>().ok()?,
                unchanged,
                blobs_uploaded,
                blobs_skipped,
                bytes_uploaded,
            },
            elapsed: duration(seconds),
        },
        JsonEvent::Warning { message } => Event::Warning { message },
        JsonEvent::Note { message } => Event::Note { message },
        JsonEvent::RegistryCacheExported {
            repository,
            steps_exported,
            steps_present,
            volumes_exported,
            bytes_uploaded,
            seconds,
        } => Event::RegistryCacheExported {
            repository,
            steps_exported,
            steps_present,
            volumes_exported,
            bytes_uploaded,
            elapsed: duration(seconds),
        },
        JsonEvent::Result { .. } => return None,
    })
}

/// A line of this schema, if `text` is one (of this version).
pub fn parse(text: &str) -> Option<Line> {
    let line: Line = serde_json::from_str(text.trim_end()).ok()?;
    (line.v == VERSION).then_some(line)
}

/// The line for `event` at `t` seconds.
pub fn render(t: Duration, event: JsonEvent) -> String {
    let line = Line {
        v: VERSION,
        t: seconds(t),
        event,
    };
    serde_json::to_string(&line).expect("the schema serializes")
}

/// Seconds with millisecond precision.
fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn duration(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event survives the trip through a line, and the lines have the documented
    /// shape.
    #[test]
    fn events_round_trip_through_lines() {
        let digest: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let events = [
            Event::StepStarted {
                index: 2,
                total: 5,
                stage: 1,
                stage_name: "stage 1 (from busybox)".into(),
                description: "with_exec make".into(),
                platform: None,
            },
            Event::StepStarted {
                index: 9,
                total: 10,
                stage: 4,
                stage_name: "linux/arm64 stage 1 (from busybox)".into(),
                description: "with_exec uname -m".into(),
                platform: Some("linux/arm64".into()),
            },
            Event::StepOutput {
                index: 2,
                stderr: true,
                line: "warning: \"quoted\"".into(),
            },
            Event::StepFinished {
                index: 2,
                elapsed: Duration::from_millis(1250),
                detail: Some("layer sha256:bb (10 bytes)".into()),
                cache: CacheStatus::Ran {
                    reason: "new step".into(),
                },
            },
            Event::Pulled {
                index: 1,
                reference: "busybox".into(),
                digest: digest.clone(),
                blobs_fetched: 2,
                bytes_fetched: 1000,
                mirror: None,
            },
            Event::MirrorFailed {
                index: 1,
                reference: "docker.io/library/busybox:1".into(),
                mirror: "127.0.0.1:1/docker.io".into(),
                error: "registry 127.0.0.1:1 is unreachable".into(),
            },
            Event::Pulled {
                index: 1,
                reference: "docker.io/library/busybox:1".into(),
                digest: digest.clone(),
                blobs_fetched: 0,
                bytes_fetched: 0,
                mirror: Some("registry.ops.eblu.me/docker.io".into()),
            },
            Event::PushStarted {
                target: "r/x:1".into(),
            },
            Event::PushProgress {
                done: 1,
                total: 3,
                uploaded: true,
                bytes_sent: 512,
            },
            Event::PushFinished {
                report: PushReport {
                    digest,
                    unchanged: false,
                    blobs_uploaded: 2,
                    blobs_skipped: 1,
                    bytes_uploaded: 99,
                },
                elapsed: Duration::from_millis(5),
            },
        ];
        for event in &events {
            let text = render(Duration::from_millis(1500), from_event(event).unwrap());
            assert!(!text.contains('\n'), "{text}");
            let line = parse(&text).unwrap();
            assert_eq!(line.t, 1.5);
            assert_eq!(
                format!("{:?}", to_event(&line.event).unwrap()),
                format!("{event:?}")
            );
        }
        let started = render(Duration::ZERO, from_event(&events[0]).unwrap());
        assert_eq!(
            started,
            r#"{"v":1,"t":0.0,"event":"step-started","step":2,"total":5,"stage":1,"stage_name":"stage 1 (from busybox)","description":"with_exec make"}"#
        );
        let arm = render(Duration::ZERO, from_event(&events[1]).unwrap());
        assert!(
            arm.ends_with(r#""description":"with_exec uname -m","platform":"linux/arm64"}"#),
            "{arm}"
        );
        let finished = render(Duration::ZERO, from_event(&events[3]).unwrap());
        assert!(
            finished.contains(r#""event":"step-finished","step":2,"seconds":1.25,"cache":"ran","reason":"new step""#),
            "{finished}"
        );
        // `mirror` is left out when the image's own registry served it.
        let direct = render(Duration::ZERO, from_event(&events[4]).unwrap());
        assert!(!direct.contains("mirror"), "{direct}");
        let via = render(Duration::ZERO, from_event(&events[6]).unwrap());
        assert!(
            via.ends_with(r#""blobs":0,"bytes":0,"mirror":"registry.ops.eblu.me/docker.io"}"#),
            "{via}"
        );
        // Other text, and lines of another version, are not events.
        assert!(parse("executor: docker").is_none());
        assert!(parse(&started.replace(r#""v":1"#, r#""v":2"#)).is_none());
    }
}

//! Progress lines on stderr: one per step, then the push summary.

use std::sync::Arc;

use blumeops_core::{Event, ProgressFn};

/// A progress printer writing plain lines to stderr.
pub fn stderr() -> ProgressFn {
    Arc::new(|event: &Event| match event {
        Event::StepStarted {
            index,
            total,
            description,
        } => eprintln!("[{index}/{total}] {description}"),
        Event::StepFinished {
            index,
            elapsed,
            detail: Some(d),
        } => eprintln!("[{index}] done in {:.2}s: {d}", elapsed.as_secs_f64()),
        Event::StepOutput {
            index,
            stderr,
            line,
        } => {
            let stream = if *stderr { "!" } else { " " };
            eprintln!("[{index}]{stream} {line}");
        }
        Event::PushStarted { target } => eprintln!("pushing {target}"),
        Event::PushFinished { report, elapsed } => {
            if report.unchanged {
                eprintln!(
                    "tag already points at {}: nothing pushed ({:.2}s)",
                    report.digest,
                    elapsed.as_secs_f64()
                );
            } else {
                eprintln!(
                    "pushed {} in {:.2}s: {} blobs uploaded ({} bytes), {} already present",
                    report.digest,
                    elapsed.as_secs_f64(),
                    report.blobs_uploaded,
                    report.bytes_uploaded,
                    report.blobs_skipped
                );
            }
        }
        _ => {}
    })
}

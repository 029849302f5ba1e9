//! Retrying registry requests: which failures are worth another attempt, capped exponential
//! backoff with full jitter, `Retry-After`, and a per-operation budget (attempts and time).
//!
//! A *transient* failure is a transport error (refused or reset connection, a body cut
//! mid-stream, a timeout), 408, 429 or a 5xx other than 501/505. Everything else — 401, 403,
//! 404, other 4xx, a refused TLS certificate, digest and size mismatches, local I/O — is final
//! on the first attempt.
//! Giving up on a transient failure yields [`Error::Retried`], naming the last error and the
//! attempts made.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use reqwest::StatusCode;

use super::Error;

/// Longest `Retry-After` honoured; a server asking for more is waited on this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// How hard the client tries before giving up on one operation (a manifest request, a tag
/// check, one blob's upload or download).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff before the first retry (before jitter); it doubles for each further retry.
    pub base_delay: Duration,
    /// Longest backoff between two attempts (before jitter).
    pub max_delay: Duration,
    /// Longest one operation may take, retries and waits included. A blob transfer gets one
    /// more second for every 64 KiB of its size, so a slow but moving upload is not cut.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
            max_elapsed: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// One attempt only: every failure is reported as it happens.
    pub fn no_retries() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The backoff ceiling before retry number `retry` (1-based): `base * 2^(retry-1)`,
    /// capped at `max_delay`.
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32 << retry.saturating_sub(1).min(20);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The backoff before retry number `retry` with full jitter: uniform in
    /// `[0, ceiling)`, `unit` being a uniform draw in `[0, 1)`.
    pub fn backoff(&self, retry: u32, unit: f64) -> Duration {
        self.backoff_ceiling(retry).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// Whether a failure is worth another attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Final: report it.
    Final,
    /// Transient: retry, not before `after` when the server said so.
    Transient {
        /// The server's `Retry-After`, capped at [`MAX_RETRY_AFTER`].
        after: Option<Duration>,
    },
}

/// Whether an HTTP status is transient: 408, 429 and 5xx except 501 and 505.
pub(crate) fn transient_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || (status.is_server_error()
            && status != StatusCode::NOT_IMPLEMENTED
            && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED)
}

/// Classify a failure.
pub(crate) fn classify(error: &Error) -> Verdict {
    match error {
        Error::Unreachable { .. } | Error::Timeout { .. } => Verdict::Transient { after: None },
        // The same certificate is refused again.
        Error::Certificate { .. } => Verdict::Final,
        // A request that could not be built (bad header, bad URL) fails the same way again.
        Error::Request { source, .. } if source.is_builder() || source.is_redirect() => {
            Verdict::Final
        }
        Error::Request { .. } => Verdict::Transient { after: None },
        Error::Status {
            status,
            retry_after,
            ..
        } if transient_status(*status) => Verdict::Transient {
            after: retry_after.map(|d| d.min(MAX_RETRY_AFTER)),
        },
        _ => Verdict::Final,
    }
}

/// Parse a `Retry-After` value: delay seconds, or an HTTP-date (IMF-fixdate, e.g.
/// `Sun, 06 Nov 1994 08:49:37 GMT`) turned into the time left from `now` (zero when past).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// IMF-fixdate: `Day, DD Mon YYYY HH:MM:SS GMT`.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    let (_, rest) = value.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let day: i64 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let year: i64 = year.parse().ok().filter(|y| *y >= 1970)?;
    let mut hms = time.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The offset to continue an upload from, given the `Range` header of an upload status
/// (`0-N`: bytes 0 to N are stored, so continue at N + 1). `0-0` is read as empty: the
/// distribution registry sends it for both 0 and 1 stored bytes, and resending one byte is
/// harmless where skipping one is not. zot's `0--1` (nothing stored) is 0 as well.
pub(crate) fn upload_offset(range: &str) -> Option<u64> {
    let range = range.trim();
    let range = range.strip_prefix("bytes=").unwrap_or(range);
    let (start, end) = range.split_once('-')?;
    if start.trim() != "0" {
        return None;
    }
    match end.trim() {
        "-1" | "0" => Some(0),
        end => end.parse::<u64>().ok().map(|n| n + 1),
    }
}

/// A uniform draw in `[0, 1)` from a process-wide xorshift64* generator seeded from the clock
/// and the process id. Jitter only needs to differ between clients, not to be unpredictable.
pub(crate) fn jitter_unit() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        x = (nanos ^ (u64::from(std::process::id()) << 32)) | 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    STATE.store(x, Ordering::Relaxed);
    let out = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
    (out >> 11) as f64 / (1u64 << 53) as f64
}

/// What one operation has spent: attempts and time, against a [`RetryPolicy`].
#[derive(Debug)]
pub(crate) struct Budget {
    policy: RetryPolicy,
    started: Instant,
    deadline: Instant,
    attempts: u32,
}

impl Budget {
    /// A budget starting now; `extra` is added to the policy's time limit (blob transfers).
    pub fn new(policy: &RetryPolicy, extra: Duration) -> Self {
        let started = Instant::now();
        Self {
            policy: *policy,
            started,
            deadline: started + policy.max_elapsed.saturating_add(extra),
            attempts: 0,
        }
    }

    /// Count an attempt about to start.
    pub fn begin(&mut self) {
        self.attempts += 1;
    }

    /// Time left before the operation's deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Time since the operation started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// After a failed attempt: wait and return `None` when another attempt is worth it and
    /// fits the budget, else return the error to report ([`Error::Retried`] for a transient
    /// failure, the error itself for a final one). `giving_up` wraps a transient failure.
    pub async fn failed(
        &mut self,
        error: Error,
        giving_up: impl FnOnce(Error, u32, Duration) -> Error,
    ) -> Option<Error> {
        let verdict = classify(&error);
        self.failed_as(error, verdict, giving_up).await
    }

    /// [`Budget::failed`] with the caller's verdict instead of [`classify`]'s.
    pub async fn failed_as(
        &mut self,
        error: Error,
        verdict: Verdict,
        giving_up: impl FnOnce(Error, u32, Duration) -> Error,
    ) -> Option<Error> {
        let Verdict::Transient { after } = verdict else {
            return Some(error);
        };
        if self.attempts >= self.policy.max_attempts.max(1) {
            return Some(giving_up(error, self.attempts, self.elapsed()));
        }
        let backoff = self.policy.backoff(self.attempts, jitter_unit());
        // The server's word wins over our own guess.
        let wait = after.unwrap_or(backoff);
        if wait >= self.remaining() {
            return Some(giving_up(error, self.attempts, self.elapsed()));
        }
        tokio::time::sleep(wait).await;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn policy() -> RetryPolicy {
        RetryPolicy::default()
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        let ceilings: Vec<u64> = (1..=7)
            .map(|r| p.backoff_ceiling(r).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(p.backoff_ceiling(u32::MAX), p.max_delay);
        assert_eq!(p.backoff_ceiling(0), p.base_delay);
    }

    #[test]
    fn full_jitter_stays_below_the_ceiling() {
        let p = policy();
        assert_eq!(p.backoff(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff(3, 0.5), Duration::from_secs(1));
        assert_eq!(p.backoff(3, 7.0), Duration::from_secs(2));
        for _ in 0..1000 {
            let u = jitter_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
            assert!(p.backoff(2, u) < Duration::from_secs(1));
        }
        let draws: std::collections::HashSet<u64> =
            (0..100).map(|_| jitter_unit().to_bits()).collect();
        assert!(draws.len() > 90, "jitter repeats itself");
    }

    #[rstest]
    #[case("0", Some(0))]
    #[case(" 7 ", Some(7))]
    #[case("120", Some(120))]
    #[case("-3", None)]
    #[case("1.5", None)]
    #[case("soon", None)]
    #[case("", None)]
    #[case("Sun, 06 Nov 1994 08:49:37 GMT", Some(0))]
    #[case("Wed, 21 Oct 2015 07:28:30 GMT", Some(30))]
    #[case("Wed, 21 Oct 2015 08:28:00 GMT", Some(3600))]
    #[case("Wed, 21 Oct 2015 07:28:00 UTC", None)]
    #[case("Wed, 32 Oct 2015 07:28:00 GMT", None)]
    #[case("Wednesday, 21-Oct-15 07:28:00 GMT", None)]
    fn retry_after(#[case] value: &str, #[case] secs: Option<u64>) {
        // 2015-10-21T07:28:00Z
        let now = UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(parse_retry_after(value, now), secs.map(Duration::from_secs));
    }

    #[test]
    fn http_dates_match_the_calendar() {
        let t = parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT").unwrap();
        assert_eq!(t, UNIX_EPOCH);
        let t = parse_http_date("Tue, 29 Feb 2000 12:00:00 GMT").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 951_825_600);
    }

    #[rstest]
    #[case("0-99", Some(100))]
    #[case("bytes=0-1048575", Some(1_048_576))]
    #[case("0-0", Some(0))]
    #[case("0--1", Some(0))]
    #[case("5-99", None)]
    #[case("0-x", None)]
    #[case("", None)]
    fn upload_offsets(#[case] range: &str, #[case] offset: Option<u64>) {
        assert_eq!(upload_offset(range), offset);
    }

    fn status(code: u16, retry_after: Option<u64>) -> Error {
        Error::Status {
            operation: super::super::Operation::PushBlob,
            target: "t".into(),
            url: "u".into(),
            status: StatusCode::from_u16(code).unwrap(),
            retry_after: retry_after.map(Duration::from_secs),
            server: None,
        }
    }

    #[rstest]
    #[case(408, true)]
    #[case(429, true)]
    #[case(500, true)]
    #[case(502, true)]
    #[case(503, true)]
    #[case(504, true)]
    #[case(501, false)]
    #[case(505, false)]
    #[case(400, false)]
    #[case(401, false)]
    #[case(403, false)]
    #[case(404, false)]
    #[case(405, false)]
    #[case(413, false)]
    #[case(416, false)]
    fn status_classification(#[case] code: u16, #[case] transient: bool) {
        let verdict = classify(&status(code, None));
        assert_eq!(verdict != Verdict::Final, transient, "{code}");
    }

    #[test]
    fn auth_and_integrity_failures_are_final() {
        let finals = [
            Error::AuthRequired {
                operation: super::super::Operation::PushBlob,
                target: "t".into(),
                registry: "r".into(),
            },
            Error::Unauthorized {
                operation: super::super::Operation::PushBlob,
                target: "t".into(),
                registry: "r".into(),
                username: "u".into(),
                server: None,
            },
            Error::Denied {
                operation: super::super::Operation::PushManifest,
                target: "t".into(),
                registry: "r".into(),
                repository: "x".into(),
                username: None,
                server: None,
            },
            Error::DigestMismatch {
                object: "blob",
                url: "u".into(),
                expected: crate::reference::Digest::of(b"a"),
                actual: crate::reference::Digest::of(b"b"),
            },
            Error::Certificate {
                operation: super::super::Operation::CheckTag,
                target: "t".into(),
                registry: "r".into(),
                host: "r:443".into(),
                problem: Box::new(super::super::CertificateProblem::UnknownIssuer),
                source: reqwest::Proxy::all("http://[").expect_err("an invalid URL"),
            },
        ];
        for e in &finals {
            assert_eq!(classify(e), Verdict::Final, "{e}");
        }
        let timeout = Error::Timeout {
            operation: super::super::Operation::CheckTag,
            target: "t".into(),
            url: "u".into(),
            seconds: 1,
        };
        assert_eq!(classify(&timeout), Verdict::Transient { after: None });
    }

    #[test]
    fn retry_after_is_kept_and_capped() {
        assert_eq!(
            classify(&status(429, Some(3))),
            Verdict::Transient {
                after: Some(Duration::from_secs(3))
            }
        );
        assert_eq!(
            classify(&status(503, Some(86_400))),
            Verdict::Transient {
                after: Some(MAX_RETRY_AFTER)
            }
        );
    }

    fn give_up(e: Error, attempts: u32, _: Duration) -> Error {
        Error::Retried {
            operation: super::super::Operation::PushBlob,
            target: "t".into(),
            registry: "r".into(),
            attempts,
            seconds: 0.0,
            last: Box::new(e),
        }
    }

    #[tokio::test]
    async fn budget_gives_up_after_max_attempts() {
        let p = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            ..policy()
        };
        let mut budget = Budget::new(&p, Duration::ZERO);
        for _ in 0..2 {
            budget.begin();
            assert!(budget.failed(status(503, None), give_up).await.is_none());
        }
        budget.begin();
        let err = budget.failed(status(503, None), give_up).await.unwrap();
        assert!(matches!(err, Error::Retried { attempts: 3, .. }), "{err}");
        // A final error is returned as is, not wrapped.
        let mut budget = Budget::new(&p, Duration::ZERO);
        budget.begin();
        let err = budget.failed(status(403, None), give_up).await.unwrap();
        assert!(matches!(err, Error::Status { .. }), "{err}");
    }

    #[tokio::test]
    async fn budget_waits_for_retry_after_and_respects_the_deadline() {
        let p = RetryPolicy {
            max_attempts: 10,
            max_elapsed: Duration::from_millis(1500),
            ..policy()
        };
        let mut budget = Budget::new(&p, Duration::ZERO);
        budget.begin();
        let before = Instant::now();
        assert!(budget.failed(status(429, Some(1)), give_up).await.is_none());
        assert!(before.elapsed() >= Duration::from_secs(1));
        budget.begin();
        // Waiting 1 s more would pass the 1.5 s deadline: give up now.
        let err = budget.failed(status(429, Some(1)), give_up).await.unwrap();
        assert!(matches!(err, Error::Retried { attempts: 2, .. }), "{err}");
    }
}

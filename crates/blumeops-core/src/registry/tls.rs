//! Telling a refused TLS certificate apart from other connection failures, and saying what
//! is wrong with it. reqwest reports both as connect errors; a refused certificate is
//! refused again on every attempt, so it must not be retried, and the user needs to know
//! whether to trust a CA, fix a name or renew the certificate.

use std::error::Error as StdError;
use std::fmt;

use rustls::CertificateError;

/// Why a registry's TLS certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateProblem {
    /// Not signed by any CA this machine trusts (a private CA, or a self-signed certificate).
    UnknownIssuer,
    /// Made for other names than the one connected to.
    WrongName {
        /// The name connected to.
        expected: String,
        /// The names the certificate is valid for (its subject alternative names).
        presented: Vec<String>,
    },
    /// Past its end of validity.
    Expired {
        /// Its `notAfter`, seconds since 1970, when known.
        not_after: Option<u64>,
    },
    /// Before its start of validity.
    NotYetValid {
        /// Its `notBefore`, seconds since 1970, when known.
        not_before: Option<u64>,
    },
    /// Revoked by its CA.
    Revoked,
    /// Refused for another reason, in rustls' words.
    Invalid(String),
}

impl CertificateProblem {
    /// The certificate problem behind `error`, looking through its whole source chain
    /// (reqwest, hyper and I/O errors wrap the TLS library's); `None` if it is none.
    pub(crate) fn find(error: &(dyn StdError + 'static)) -> Option<Self> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(rustls::Error::InvalidCertificate(cert)) = e.downcast_ref::<rustls::Error>()
            {
                return Some(Self::from_rustls(cert));
            }
            // An I/O error's `source` skips the error it wraps: look at that one first.
            next = match e
                .downcast_ref::<std::io::Error>()
                .and_then(std::io::Error::get_ref)
            {
                Some(inner) => Some(inner as &(dyn StdError + 'static)),
                None => e.source(),
            };
        }
        None
    }

    fn from_rustls(error: &CertificateError) -> Self {
        match error {
            CertificateError::UnknownIssuer => Self::UnknownIssuer,
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => Self::WrongName {
                expected: expected.to_str().into_owned(),
                presented: presented.iter().map(|n| plain_name(n)).collect(),
            },
            CertificateError::NotValidForName => Self::WrongName {
                expected: String::new(),
                presented: Vec::new(),
            },
            CertificateError::ExpiredContext { not_after, .. } => Self::Expired {
                not_after: Some(not_after.as_secs()),
            },
            CertificateError::Expired => Self::Expired { not_after: None },
            CertificateError::NotValidYetContext { not_before, .. } => Self::NotYetValid {
                not_before: Some(not_before.as_secs()),
            },
            CertificateError::NotValidYet => Self::NotYetValid { not_before: None },
            CertificateError::Revoked => Self::Revoked,
            other => Self::Invalid(other.to_string()),
        }
    }

    /// What the user can do about it; `host_port` is where the certificate came from.
    pub(crate) fn hint(&self, host_port: &str) -> String {
        let host = host_port
            .rsplit_once(':')
            .map_or(host_port, |(host, _)| host);
        match self {
            Self::UnknownIssuer => format!(
                "if {host} uses a private CA, trust that CA: copy its certificate (PEM) to \
                 /usr/local/share/ca-certificates/NAME.crt and run update-ca-certificates, or \
                 set SSL_CERT_FILE to a PEM bundle that includes it (it replaces the system's CAs)"
            ),
            Self::WrongName { .. } => format!(
                "address the registry by a name its certificate is for, or reissue the \
                 certificate with `{host}` among its subject alternative names"
            ),
            Self::Expired { .. } => "renew the registry's certificate; if it is not expired, \
                 check this machine's clock"
                .to_owned(),
            Self::NotYetValid { .. } => "check this machine's clock; if it is right, the \
                 registry's certificate was issued for a later date"
                .to_owned(),
            Self::Revoked => "the registry needs a new certificate".to_owned(),
            Self::Invalid(_) => format!(
                "see what {host_port} serves with `openssl s_client -connect {host_port} \
                 -showcerts`"
            ),
        }
    }
}

impl fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownIssuer => f.write_str("certificate is not trusted (unknown issuer)"),
            Self::WrongName {
                expected,
                presented,
            } => {
                if expected.is_empty() {
                    f.write_str("certificate is not valid for this name")?;
                } else {
                    write!(f, "certificate is not valid for {expected}")?;
                }
                match presented.as_slice() {
                    [] => Ok(()),
                    names => write!(f, " (it is for {})", names.join(", ")),
                }
            }
            Self::Expired { not_after: Some(t) } => {
                write!(f, "certificate expired on {}", crate::epoch::rfc3339(*t))
            }
            Self::Expired { not_after: None } => f.write_str("certificate expired"),
            Self::NotYetValid {
                not_before: Some(t),
            } => write!(
                f,
                "certificate is not valid before {}",
                crate::epoch::rfc3339(*t)
            ),
            Self::NotYetValid { not_before: None } => f.write_str("certificate is not valid yet"),
            Self::Revoked => f.write_str("certificate was revoked"),
            Self::Invalid(why) => write!(f, "certificate is invalid: {why}"),
        }
    }
}

/// `other.example` from rustls' `DnsName("other.example")`, `10.0.0.1` from
/// `IpAddress(10.0.0.1)`; anything else as given.
fn plain_name(presented: &str) -> String {
    if let Some(name) = presented
        .strip_prefix("DnsName(\"")
        .and_then(|r| r.strip_suffix("\")"))
    {
        return name.to_owned();
    }
    if let Some(ip) = presented
        .strip_prefix("IpAddress(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return ip.to_owned();
    }
    presented.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{ServerName, UnixTime};
    use std::time::Duration;

    /// A cause wrapping another, as hyper's and reqwest's errors do.
    #[derive(Debug)]
    struct Wrapper(Box<dyn StdError + Send + Sync>);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&*self.0)
        }
    }

    /// The chain a failed handshake arrives in: tokio-rustls puts the rustls error in an
    /// I/O error, which the connector and the HTTP client wrap again.
    fn chain(cert: CertificateError) -> Wrapper {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(cert),
        );
        Wrapper(Box::new(Wrapper(Box::new(io))))
    }

    fn found(cert: CertificateError) -> CertificateProblem {
        CertificateProblem::find(&chain(cert)).expect("a certificate problem")
    }

    #[test]
    fn unknown_issuer_through_an_io_error() {
        let problem = found(CertificateError::UnknownIssuer);
        assert_eq!(problem, CertificateProblem::UnknownIssuer);
        assert_eq!(
            problem.to_string(),
            "certificate is not trusted (unknown issuer)"
        );
        let hint = problem.hint("zot.example:443");
        for want in [
            "zot.example uses",
            "update-ca-certificates",
            "SSL_CERT_FILE",
        ] {
            assert!(hint.contains(want), "{hint} lacks {want}");
        }
    }

    #[test]
    fn wrong_name_names_both_sides() {
        let problem = found(CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("zot.example").unwrap().to_owned(),
            presented: vec![
                "DnsName(\"other.example\")".to_owned(),
                "IpAddress(10.0.0.1)".to_owned(),
            ],
        });
        assert_eq!(
            problem.to_string(),
            "certificate is not valid for zot.example (it is for other.example, 10.0.0.1)"
        );
        assert!(problem.hint("zot.example:443").contains("`zot.example`"));
    }

    #[test]
    fn expiry_and_start_give_dates() {
        let secs = |s| UnixTime::since_unix_epoch(Duration::from_secs(s));
        let expired = found(CertificateError::ExpiredContext {
            time: secs(1_800_000_000),
            not_after: secs(978_307_200),
        });
        assert_eq!(
            expired.to_string(),
            "certificate expired on 2001-01-01T00:00:00Z"
        );
        assert!(expired.hint("zot.example:443").contains("clock"));
        let early = found(CertificateError::NotValidYetContext {
            time: secs(0),
            not_before: secs(978_307_200),
        });
        assert_eq!(
            early.to_string(),
            "certificate is not valid before 2001-01-01T00:00:00Z"
        );
        assert_eq!(
            found(CertificateError::Expired).to_string(),
            "certificate expired"
        );
    }

    #[test]
    fn other_refusals_keep_rustls_words() {
        let problem = found(CertificateError::BadSignature);
        assert_eq!(problem.to_string(), "certificate is invalid: BadSignature");
        assert!(
            problem
                .hint("zot.example:5000")
                .contains("-connect zot.example:5000")
        );
        assert_eq!(
            found(CertificateError::Revoked).to_string(),
            "certificate was revoked"
        );
    }

    #[test]
    fn other_failures_are_not_certificate_problems() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(CertificateProblem::find(&Wrapper(Box::new(refused))), None);
        let handshake = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::General("received corrupt message".into()),
        );
        assert_eq!(
            CertificateProblem::find(&Wrapper(Box::new(handshake))),
            None
        );
    }
}

//! `WWW-Authenticate` parsing and what the client learned about each registry's auth.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::secret::Secret;

/// One challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// `Basic realm="..."`: send `username:password`.
    Basic,
    /// `Bearer realm=..,service=..,scope=..`: get a token from `realm` first.
    Bearer(BearerChallenge),
}

/// Where and how to ask for a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BearerChallenge {
    /// Token endpoint URL.
    pub realm: String,
    /// `service` parameter, if given.
    pub service: Option<String>,
    /// `scope` parameter the server asked for, if given.
    pub scope: Option<String>,
}

/// Parse every challenge in one `WWW-Authenticate` header value. Unknown schemes and
/// Bearer challenges without a realm are dropped.
pub(crate) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    for (scheme, params) in split_challenges(header) {
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        if scheme.eq_ignore_ascii_case("basic") {
            out.push(Challenge::Basic);
        } else if scheme.eq_ignore_ascii_case("bearer")
            && let Some(realm) = get("realm").filter(|r| !r.is_empty())
        {
            out.push(Challenge::Bearer(BearerChallenge {
                realm,
                service: get("service"),
                scope: get("scope"),
            }));
        }
    }
    out
}

/// Tokenize `Scheme k=v, k="v, w", Scheme2 k=v` into schemes with their parameters.
fn split_challenges(header: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let bytes = header.as_bytes();
    let mut i = 0;
    let skip_ws_commas = |i: &mut usize| {
        while *i < bytes.len() && (bytes[*i] == b',' || bytes[*i].is_ascii_whitespace()) {
            *i += 1;
        }
    };
    let is_token = |b: u8| !(b.is_ascii_whitespace() || matches!(b, b',' | b'=' | b'"'));
    loop {
        skip_ws_commas(&mut i);
        if i >= bytes.len() {
            break;
        }
        let start = i;
        while i < bytes.len() && is_token(bytes[i]) {
            i += 1;
        }
        let token = &header[start..i];
        if token.is_empty() {
            // Stray `=` or `"`: skip it.
            i += 1;
            continue;
        }
        // A token followed by `=` (and not `==` as in token68) is a parameter name.
        let mut j = i;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        if j < bytes.len() && bytes[j] == b'=' && !out.is_empty() {
            i = j + 1;
            while i < bytes.len() && bytes[i] == b' ' {
                i += 1;
            }
            let value = if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let mut v = String::new();
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' && i + 1 < bytes.len() {
                        i += 1;
                    }
                    // Copy one UTF-8 character.
                    let ch_len = header[i..].chars().next().map_or(1, char::len_utf8);
                    v.push_str(&header[i..i + ch_len]);
                    i += ch_len;
                }
                i += 1; // closing quote
                v
            } else {
                let vs = i;
                while i < bytes.len() && bytes[i] != b',' && !bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                header[vs..i].to_owned()
            };
            if let Some((_, params)) = out.last_mut() {
                params.push((token.to_owned(), value));
            }
        } else {
            out.push((token.to_owned(), Vec::new()));
        }
    }
    out
}

/// What the client knows about each registry host's auth, shared by clones of the client.
#[derive(Default)]
pub(crate) struct AuthCache {
    /// Hosts that asked for Basic: send credentials up front from now on.
    basic_hosts: HashSet<String>,
    /// Token endpoints learned from Bearer challenges, per host.
    bearer: HashMap<String, BearerChallenge>,
    /// Tokens per (host, scope).
    tokens: HashMap<(String, String), Secret>,
}

impl AuthCache {
    pub fn wants_basic(&self, host: &str) -> bool {
        self.basic_hosts.contains(host)
    }

    pub fn set_basic(&mut self, host: &str) {
        self.basic_hosts.insert(host.to_owned());
    }

    pub fn unset_basic(&mut self, host: &str) {
        self.basic_hosts.remove(host);
    }

    pub fn bearer_challenge(&self, host: &str) -> Option<BearerChallenge> {
        self.bearer.get(host).cloned()
    }

    pub fn set_bearer_challenge(&mut self, host: &str, challenge: BearerChallenge) {
        self.bearer.insert(host.to_owned(), challenge);
    }

    pub fn token(&self, host: &str, scope: &str) -> Option<Secret> {
        self.tokens
            .get(&(host.to_owned(), scope.to_owned()))
            .cloned()
    }

    pub fn set_token(&mut self, host: &str, scope: &str, token: Secret) {
        self.tokens
            .insert((host.to_owned(), scope.to_owned()), token);
    }

    pub fn forget_token(&mut self, host: &str, scope: &str) {
        self.tokens.remove(&(host.to_owned(), scope.to_owned()));
    }
}

impl fmt::Debug for AuthCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthCache")
            .field("basic_hosts", &self.basic_hosts)
            .field("bearer_hosts", &self.bearer.keys().collect::<Vec<_>>())
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

/// A bearer token service's answer.
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    pub token: Option<String>,
    pub access_token: Option<String>,
}

impl TokenResponse {
    pub fn into_token(self) -> Option<Secret> {
        self.token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))
            .map(Secret::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer(BearerChallenge {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
        })
    }

    #[rstest]
    #[case(r#"Basic realm="zot""#, vec![Challenge::Basic])]
    #[case(r#"basic realm="Registry Realm""#, vec![Challenge::Basic])]
    #[case("Basic", vec![Challenge::Basic])]
    #[case(
        r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        vec![bearer("https://auth.docker.io/token", Some("registry.docker.io"), Some("repository:library/busybox:pull"))]
    )]
    #[case(
        r#"Bearer realm="https://ghcr.io/token", service="ghcr.io", scope="repository:org/app:pull,push""#,
        vec![bearer("https://ghcr.io/token", Some("ghcr.io"), Some("repository:org/app:pull,push"))]
    )]
    #[case(
        r#"Bearer scope="a:b:pull,push",realm=https://t.example/token"#,
        vec![bearer("https://t.example/token", None, Some("a:b:pull,push"))]
    )]
    #[case(
        r#"Bearer realm="https://x/t\"q", service=x"#,
        vec![bearer("https://x/t\"q", Some("x"), None)]
    )]
    #[case(
        r#"Basic realm="a", Bearer realm="https://t/", service="s""#,
        vec![Challenge::Basic, bearer("https://t/", Some("s"), None)]
    )]
    #[case(r#"Bearer service="no realm""#, vec![])]
    #[case(r#"Negotiate abc=="#, vec![])]
    #[case("", vec![])]
    fn parses_www_authenticate(#[case] header: &str, #[case] expected: Vec<Challenge>) {
        assert_eq!(parse_challenges(header), expected);
    }

    #[test]
    fn token_response_accepts_both_fields() {
        let t: TokenResponse = serde_json::from_str(r#"{"token":"abc"}"#).unwrap();
        assert_eq!(t.into_token().unwrap().expose(), "abc");
        let t: TokenResponse =
            serde_json::from_str(r#"{"access_token":"def","expires_in":300}"#).unwrap();
        assert_eq!(t.into_token().unwrap().expose(), "def");
        let t: TokenResponse =
            serde_json::from_str(r#"{"token":"","access_token":"ghi"}"#).unwrap();
        assert_eq!(t.into_token().unwrap().expose(), "ghi");
        let t: TokenResponse = serde_json::from_str(r#"{}"#).unwrap();
        assert!(t.into_token().is_none());
    }

    #[test]
    fn debug_hides_tokens() {
        let mut cache = AuthCache::default();
        cache.set_token("h", "s", Secret::new("tok_secret"));
        assert!(!format!("{cache:?}").contains("tok_secret"));
    }
}

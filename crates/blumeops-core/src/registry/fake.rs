//! A tiny fake registry for unit tests: one request per connection, zot's rules for writes
//! (401 Basic challenge on the first write, relative `Location`, `Content-Length` required,
//! exact manifest `Content-Type`, 403 on a manifest PUT for a create-only user), or Docker
//! Hub's Bearer flow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;

use crate::image::media_types;
use crate::reference::Digest;

/// How the fake authenticates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// zot: anonymous read, Basic on writes; manifest PUTs to an existing tag are denied.
    Zot,
    /// Bearer tokens for everything, from `/token`.
    Bearer,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub method: String,
    pub target: String,
    pub headers: HashMap<String, String>,
    pub body_len: usize,
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    blobs: HashMap<String, Vec<u8>>,
    manifests: HashMap<String, (Vec<u8>, String)>,
}

/// A running fake registry.
pub(crate) struct Fake {
    pub addr: String,
    state: Arc<Mutex<State>>,
}

pub(crate) const USER: &str = "zot-ci";
pub(crate) const PASSWORD: &str = "zak_0123456789abcdef0123456789abcdef";

impl Fake {
    pub async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let (st, a) = (state.clone(), addr.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (st, a) = (st.clone(), a.clone());
                tokio::spawn(async move {
                    let _ = handle(stream, mode, &st, &a).await;
                });
            }
        });
        Self { addr, state }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn put_manifest(&self, tag: &str, bytes: &[u8], media_type: &str) {
        self.state
            .lock()
            .unwrap()
            .manifests
            .insert(tag.to_owned(), (bytes.to_vec(), media_type.to_owned()));
    }

    /// Serve `bytes` under `digest`, whatever they hash to.
    pub fn alias_blob(&self, digest: &Digest, bytes: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(digest.to_string(), bytes.to_vec());
    }

    pub fn put_blob(&self, bytes: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .blobs
            .insert(Digest::of(bytes).to_string(), bytes.to_vec());
    }
}

struct Reply {
    status: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn reply(status: &'static str) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: Vec::new(),
    }
}

impl Reply {
    fn header(mut self, k: &str, v: impl Into<String>) -> Self {
        self.headers.push((k.to_owned(), v.into()));
        self
    }
    fn body(mut self, b: impl Into<Vec<u8>>) -> Self {
        self.body = b.into();
        self
    }
}

async fn handle(
    stream: tokio::net::TcpStream,
    mode: Mode,
    state: &Mutex<State>,
    addr: &str,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).await?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await?;
    state.lock().unwrap().seen.push(Seen {
        method: method.clone(),
        target: target.clone(),
        headers: headers.clone(),
        body_len: len,
    });
    let r = route(mode, state, addr, &method, &target, &headers, body);
    let mut out = format!("HTTP/1.1 {}\r\nConnection: close\r\n", r.status);
    out.push_str(&format!("Content-Length: {}\r\n", r.body.len()));
    for (k, v) in &r.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut stream = reader.into_inner();
    stream.write_all(out.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(&r.body).await?;
    }
    stream.shutdown().await
}

fn route(
    mode: Mode,
    state: &Mutex<State>,
    addr: &str,
    method: &str,
    target: &str,
    headers: &HashMap<String, String>,
    body: Vec<u8>,
) -> Reply {
    let auth = headers.get("authorization").map(String::as_str);
    let good_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    );
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let write = method == "POST" || method == "PUT";

    if mode == Mode::Bearer && path.starts_with("/token") {
        let scope_ok =
            query.contains("scope=repository%3Ar%3Apull") && query.contains("service=fake");
        return match auth {
            Some(a) if a != good_basic => reply("401 Unauthorized"),
            _ if !scope_ok => reply("400 Bad Request"),
            // Push scope needs credentials.
            None if query.contains("push") => reply("401 Unauthorized"),
            _ => reply("200 OK").body(format!(r#"{{"access_token":"tok-{}"}}"#, query.len())),
        };
    }
    match mode {
        Mode::Zot => {
            if write && auth != Some(good_basic.as_str()) {
                let message = if auth.is_some() {
                    "invalid api key"
                } else {
                    "authentication required"
                };
                return reply("401 Unauthorized")
                    .header("WWW-Authenticate", r#"Basic realm="zot""#)
                    .body(format!(
                        r#"{{"code":"UNAUTHORIZED","message":"{message}","detail":{{}}}}"#
                    ));
            }
        }
        Mode::Bearer => {
            if !auth.is_some_and(|a| a.starts_with("Bearer tok-")) {
                let scope = if write { "pull,push" } else { "pull" };
                return reply("401 Unauthorized").header(
                    "WWW-Authenticate",
                    format!(r#"Bearer realm="http://{addr}/token",service="fake",scope="repository:r:{scope}""#),
                );
            }
        }
    }

    let mut st = state.lock().unwrap();
    let segments: Vec<&str> = path.trim_start_matches("/v2/r/").split('/').collect();
    match (method, segments.as_slice()) {
        ("GET" | "HEAD", ["manifests", reference]) => {
            let found = st.manifests.get(*reference).cloned().or_else(|| {
                st.manifests
                    .values()
                    .find(|(b, _)| Digest::of(b).to_string() == *reference)
                    .cloned()
            });
            match found {
                Some((bytes, media_type)) => reply("200 OK")
                    .header("Content-Type", media_type)
                    .header("Docker-Content-Digest", Digest::of(&bytes).to_string())
                    .body(bytes),
                None => reply("404 Not Found").body(
                    r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
                ),
            }
        }
        ("GET" | "HEAD", ["blobs", digest]) => match st.blobs.get(*digest) {
            Some(b) => reply("200 OK").body(b.clone()),
            None => reply("404 Not Found"),
        },
        ("POST", ["blobs", "uploads", ""]) => reply("202 Accepted")
            .header("Location", "/v2/r/blobs/uploads/uuid-1?_state=abc%3D")
            .header("Blob-Upload-UUID", "uuid-1"),
        ("PUT", ["blobs", "uploads", "uuid-1"]) => {
            if headers.contains_key("transfer-encoding") || !headers.contains_key("content-length")
            {
                return reply("400 Bad Request");
            }
            let digest = Digest::of(&body).to_string();
            if !query.starts_with("_state=abc%3D&")
                || !query.contains(&format!("digest={}", digest.replace(':', "%3A")))
            {
                return reply("400 Bad Request");
            }
            st.blobs.insert(digest.clone(), body);
            reply("201 Created").header("Docker-Content-Digest", digest)
        }
        ("PUT", ["manifests", tag]) => {
            let content_type = headers.get("content-type").cloned().unwrap_or_default();
            if content_type != media_types::OCI_MANIFEST {
                return reply("415 Unsupported Media Type");
            }
            if mode == Mode::Zot && st.manifests.contains_key(*tag) {
                return reply("403 Forbidden")
                    .header("WWW-Authenticate", r#"Basic realm="zot""#)
                    .body(r#"{"errors":[{"code":"DENIED","message":"not allowed to update"}]}"#);
            }
            let digest = Digest::of(&body).to_string();
            st.manifests.insert((*tag).to_owned(), (body, content_type));
            reply("201 Created").header("Docker-Content-Digest", digest)
        }
        _ => reply("404 Not Found"),
    }
}

//! A distribution registry served over HTTPS, with a certificate from a CA made for the test.
//!
//! The registry answers as [`TLS_HOST`], a name rather than a loopback literal, so clients
//! speak HTTPS to it as they would to a real registry. The name resolves to 127.0.0.1 only
//! for programs started with [`TlsRegistry::wrapper`]: they run in a mount namespace of their
//! own where `/etc/hosts` (and, for [`Trust::SystemStore`], `/etc/ssl/certs`) is a private
//! copy, so nothing on the machine, and no test running at the same time, sees the change.
//! That needs root (to make the namespace); [`TlsRegistry::start`] skips visibly without it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::base_image::{BASE_TAG, BaseImage, PushedImage};
use crate::registry::{CI_USER, spawn_registry};
use crate::util::{random_hex, sha256_digest, tempdir};

/// The name the registry's certificate is made for and clients address it by.
pub const TLS_HOST: &str = "registry.blumeops.test";
/// The name a [`ServerCert::WrongName`] certificate is made for instead.
pub const OTHER_HOST: &str = "other.blumeops.test";

/// Variables that would change how a program finds CA certificates or reaches the registry;
/// removed from every [`TlsRegistry::wrapper`] so only what the test sets counts.
const TLS_ENV: [&str; 8] = [
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The certificate the registry serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCert {
    /// For [`TLS_HOST`], valid now.
    Valid,
    /// For [`OTHER_HOST`] only, valid now.
    WrongName,
    /// For [`TLS_HOST`], expired in 2001.
    Expired,
}

/// How a program run with [`TlsRegistry::wrapper`] is told to trust the test CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Not at all: the machine's own store, which lacks the test CA.
    Untrusted,
    /// `SSL_CERT_FILE` names a PEM file holding only the test CA.
    CertFile,
    /// `SSL_CERT_DIR` names a store made by `update-ca-certificates` (the machine's CAs,
    /// the test CA, hashed symlinks and the bundle).
    CertDir,
    /// That store is mounted on `/etc/ssl/certs` in the program's mount namespace, and no
    /// `SSL_CERT_*` variable is set: the default system store, as after
    /// `update-ca-certificates` with the CA in `/usr/local/share/ca-certificates`.
    SystemStore,
}

/// A CA made for one registry.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("blumeops test CA {}", random_hex(4)),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("failed to generate a CA key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("failed to make the CA"),
        }
    }

    /// A server certificate for `name`: `(certificate PEM, key PEM)`.
    fn issue(&self, name: &str, expired: bool) -> (String, String) {
        let mut params =
            CertificateParams::new(vec![name.to_owned()]).expect("valid subject alt name");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("failed to generate a server key");
        let cert = params
            .signed_by(&key, &*self.issuer)
            .expect("failed to sign the server certificate");
        (cert.pem(), key.serialize_pem())
    }
}

/// `docker-registry` on a free loopback port, serving HTTPS with its own TLS config and
/// htpasswd auth for one account, [`CI_USER`]. Stops when dropped.
pub struct TlsRegistry {
    child: Child,
    port: u16,
    password: String,
    dir: TempDir,
    store: OnceLock<PathBuf>,
}

impl std::fmt::Debug for TlsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsRegistry")
            .field("addr", &self.addr())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl TlsRegistry {
    /// Start a registry serving `cert`, signed by a CA made for it. `None` (after a visible
    /// skip) when this process cannot give a program a private `/etc/hosts`.
    pub fn start(cert: ServerCert) -> Option<Self> {
        if let Err(reason) = namespaces_work() {
            blumeops_core::testing::skip(reason);
            return None;
        }
        let dir = tempdir("blumeops-tls-registry-");
        let ca = TestCa::new();
        let (cert_pem, key_pem) = match cert {
            ServerCert::Valid => ca.issue(TLS_HOST, false),
            ServerCert::WrongName => ca.issue(OTHER_HOST, false),
            ServerCert::Expired => ca.issue(TLS_HOST, true),
        };
        write(&dir.path().join("server.crt"), &cert_pem);
        write(&dir.path().join("server.key"), &key_pem);
        write(&dir.path().join("ca.pem"), &ca.issuer.pem());
        // skopeo's --cert-dir takes CAs from files named *.crt.
        std::fs::create_dir(dir.path().join("skopeo-certs")).expect("failed to create a dir");
        write(&dir.path().join("skopeo-certs/ca.crt"), &ca.issuer.pem());

        let password = random_hex(16);
        let hash = bcrypt::hash(&password, 4).expect("failed to hash a password");
        write(&dir.path().join("htpasswd"), &format!("{CI_USER}:{hash}\n"));
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).expect("failed to create the storage directory");

        let (child, addr) = spawn_registry(dir.path(), |addr| {
            format!(
                "version: 0.1\n\
                 log:\n  level: info\n\
                 storage:\n  filesystem:\n    rootdirectory: {storage}\n\
                 http:\n  addr: {addr}\n  secret: {secret}\n\
                 \x20 tls:\n    certificate: {cert}\n    key: {key}\n\
                 auth:\n  htpasswd:\n    realm: tls\n    path: {htpasswd}\n",
                storage = storage.display(),
                secret = random_hex(16),
                cert = dir.path().join("server.crt").display(),
                key = dir.path().join("server.key").display(),
                htpasswd = dir.path().join("htpasswd").display(),
            )
        });

        let mut hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        if !hosts.is_empty() && !hosts.ends_with('\n') {
            hosts.push('\n');
        }
        writeln!(hosts, "127.0.0.1 {TLS_HOST} {OTHER_HOST}").expect("writing to a String");
        write(&dir.path().join("hosts"), &hosts);

        Some(Self {
            child,
            port: addr.port(),
            password,
            dir,
            store: OnceLock::new(),
        })
    }

    /// `registry.blumeops.test:PORT`, the registry as clients name it.
    pub fn addr(&self) -> String {
        format!("{TLS_HOST}:{}", self.port)
    }

    /// The [`CI_USER`] password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// PEM file holding the CA certificate (only it).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A private copy of the system store with the CA added, made by
    /// `update-ca-certificates` itself (on first use).
    pub fn ca_store(&self) -> &Path {
        self.store.get_or_init(|| {
            let local = self.dir.path().join("local-ca-certificates");
            let store = self.dir.path().join("etc-ssl-certs");
            for d in [&local, &store] {
                std::fs::create_dir(d).expect("failed to create a store directory");
            }
            std::fs::copy(self.ca_file(), local.join("blumeops-test-ca.crt"))
                .expect("failed to copy the CA");
            let output = Command::new("update-ca-certificates")
                .arg("--localcertsdir")
                .arg(&local)
                .arg("--etccertsdir")
                .arg(&store)
                // No hooks: they would update stores outside this directory.
                .arg("--hooksdir")
                .arg(self.dir.path().join("no-hooks"))
                .output()
                .unwrap_or_else(|e| panic!("failed to run update-ca-certificates: {e}"));
            assert!(
                output.status.success(),
                "update-ca-certificates failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            store
        })
    }

    /// A wrapper that runs the program named by its next argument (the program's own
    /// arguments follow) so that [`TLS_HOST`] resolves to 127.0.0.1 and the CA is trusted as
    /// `trust` says. Proxy and `SSL_CERT_*` variables of this process are not passed on.
    pub fn wrapper(&self, trust: Trust) -> Command {
        let mut mounts = vec![(self.dir.path().join("hosts"), PathBuf::from("/etc/hosts"))];
        if trust == Trust::SystemStore {
            mounts.push((self.ca_store().to_owned(), PathBuf::from("/etc/ssl/certs")));
        }
        let mut command = namespaced(&mounts);
        for name in TLS_ENV {
            command.env_remove(name);
        }
        match trust {
            Trust::Untrusted | Trust::SystemStore => {}
            Trust::CertFile => {
                command.env("SSL_CERT_FILE", self.ca_file());
            }
            Trust::CertDir => {
                command.env("SSL_CERT_DIR", self.ca_store());
            }
        }
        command
    }

    /// `skopeo ARGS`, resolving [`TLS_HOST`]; the caller gives the CA with `--cert-dir`
    /// ([`TlsRegistry::skopeo_cert_dir`]).
    pub fn skopeo(&self, args: &[&str]) -> Output {
        self.wrapper(Trust::Untrusted)
            .arg("skopeo")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("failed to run skopeo: {e}"))
    }

    /// A directory for skopeo's `--cert-dir` / `--dest-cert-dir`: the CA as `ca.crt`.
    pub fn skopeo_cert_dir(&self) -> String {
        self.dir.path().join("skopeo-certs").display().to_string()
    }

    /// `user:password` for skopeo's `--creds`.
    pub fn skopeo_creds(&self) -> String {
        format!("{CI_USER}:{}", self.password)
    }

    /// The raw manifest of `reference`, fetched over verified HTTPS by skopeo.
    pub fn inspect_raw(&self, reference: &str) -> Vec<u8> {
        let reference = format!("docker://{reference}");
        let output = self.skopeo(&[
            "inspect",
            "--raw",
            "--cert-dir",
            &self.skopeo_cert_dir(),
            "--creds",
            &self.skopeo_creds(),
            &reference,
        ]);
        assert!(
            output.status.success(),
            "skopeo inspect {reference} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// Push the busybox base to `library/busybox:1.37` with skopeo (verifying the CA).
    pub fn push_base(&self) -> PushedImage {
        let reference = format!("{}/library/busybox:{BASE_TAG}", self.addr());
        let output = self.skopeo(&[
            "copy",
            "--retry-times=0",
            "--dest-cert-dir",
            &self.skopeo_cert_dir(),
            "--dest-creds",
            &self.skopeo_creds(),
            &BaseImage::oci_reference(),
            &format!("docker://{reference}"),
        ]);
        assert!(
            output.status.success(),
            "skopeo push of the base to {reference} failed:\n{}\nregistry log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.registry_log()
        );
        let digest = sha256_digest(&self.inspect_raw(&reference));
        PushedImage { reference, digest }
    }

    /// The registry's log so far.
    pub fn registry_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents)
        .unwrap_or_else(|e| panic!("failed to write {}: {e}", path.display()));
}

/// A command running its next arguments as a program in a new mount namespace, with each
/// `(source, target)` bind-mounted first. The namespace's mounts are private: they never
/// reach the machine's.
fn namespaced(mounts: &[(PathBuf, PathBuf)]) -> Command {
    let mut script = String::from("set -e\n");
    for i in 0..mounts.len() {
        writeln!(script, "mount --bind \"${}\" \"${}\"", 2 * i + 1, 2 * i + 2)
            .expect("writing to a String");
    }
    writeln!(script, "shift {}\nexec \"$@\"", 2 * mounts.len()).expect("writing to a String");
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(script)
        .arg("sh");
    for (source, target) in mounts {
        command.arg(source).arg(target);
    }
    command
}

/// Whether a program can get a private `/etc/hosts` here; why not otherwise. Checked once.
fn namespaces_work() -> Result<(), &'static str> {
    static WORKS: OnceLock<Result<(), &'static str>> = OnceLock::new();
    *WORKS.get_or_init(|| {
        if crate::users::effective_uid() != 0 {
            return Err("needs root to give the client a private /etc/hosts naming the registry");
        }
        let dir = tempdir("blumeops-tls-probe-");
        let hosts = dir.path().join("hosts");
        write(&hosts, &format!("127.0.0.1 {TLS_HOST}\n"));
        let probe = namespaced(&[(hosts, PathBuf::from("/etc/hosts"))])
            .args(["getent", "hosts", TLS_HOST])
            .output();
        match probe {
            Ok(out)
                if out.status.success()
                    && String::from_utf8_lossy(&out.stdout).contains("127.0.0.1") =>
            {
                Ok(())
            }
            _ => Err("cannot bind-mount a private /etc/hosts in a new mount namespace here"),
        }
    })
}

//! The helper image: this executable, the shared libraries it loads, and slirp4netns (for
//! isolated step networks) with its libraries, as a one-layer image loaded through the API
//! (`POST /images/load`). Its tag carries a digest of those files, so an unchanged blumeops
//! reuses the image already loaded. (The CA certificates the client trusts travel in the
//! handshake, so they need no image of their own.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bollard::Docker;
use sha2::{Digest as _, Sha256};

use super::{ENGINE_CACHE_DIR, ENGINE_LABEL, Endpoint, Error, VERSION_LABEL};

/// Where this executable lives in the helper image.
pub const ENGINE_EXE: &str = "/usr/local/bin/blumeops";
/// The repository of locally made helper images.
pub const HELPER_REPOSITORY: &str = "blumeops-engine";

/// The files of the helper image: image path → host path.
#[derive(Debug, Clone)]
pub struct HelperFiles {
    files: BTreeMap<String, PathBuf>,
    /// Notes for the user about what is missing (slirp4netns).
    pub notes: Vec<String>,
}

impl HelperFiles {
    /// Collect the files: `/proc/self/exe`, its libraries, slirp4netns.
    pub fn collect() -> Result<Self, Error> {
        let exe = PathBuf::from("/proc/self/exe");
        let mut files = BTreeMap::new();
        files.insert(ENGINE_EXE.to_owned(), exe.clone());
        let mut notes = Vec::new();
        // ldd must be given the real path: /proc/self/exe would name ldd's own process.
        let real = std::env::current_exe().map_err(io("find", &exe))?;
        for lib in libraries(&real, true)? {
            files.insert(lib.to_string_lossy().into_owned(), lib);
        }
        match crate::executor::find_program("slirp4netns") {
            Some(slirp) => match libraries(&slirp, false) {
                Ok(libs) => {
                    files.insert("/usr/bin/slirp4netns".to_owned(), slirp);
                    for lib in libs {
                        files.insert(lib.to_string_lossy().into_owned(), lib);
                    }
                }
                Err(e) => notes.push(format!(
                    "slirp4netns left out of the engine ({e}): steps there use the host's network"
                )),
            },
            None => notes.push(
                "slirp4netns is not installed here, so the engine has none: its steps use the \
                 host's network (Debian: apt-get install slirp4netns)"
                    .to_owned(),
            ),
        }
        Ok(Self { files, notes })
    }

    /// `blumeops-engine:VERSION-DIGEST12`, from the files' contents.
    pub fn tag(&self) -> Result<String, Error> {
        let mut hash = Sha256::new();
        for (inside, host) in &self.files {
            hash.update(inside.as_bytes());
            hash.update([0]);
            // The linker's digest of the file, where it left one: reading a large
            // executable whole would add to every build.
            if let Some(id) = elf_build_id(host) {
                hash.update(b"build-id:");
                hash.update(&id);
                hash.update([0]);
                continue;
            }
            let mut file = std::fs::File::open(host).map_err(io("read", host))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = std::io::Read::read(&mut file, &mut buf).map_err(io("read", host))?;
                if n == 0 {
                    break;
                }
                hash.update(&buf[..n]);
            }
            hash.update([0]);
        }
        let digest = hex::encode(hash.finalize());
        Ok(format!(
            "{HELPER_REPOSITORY}:{}-{}",
            env!("CARGO_PKG_VERSION"),
            &digest[..12]
        ))
    }

    /// The image as a docker archive (`docker load` input) tagged `tag`.
    pub fn archive(&self, tag: &str) -> Result<Vec<u8>, Error> {
        let layer = self.layer()?;
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
        let env = self.env();
        let config = serde_json::json!({
            "architecture": super::client_arch(),
            "os": "linux",
            "config": {
                "Entrypoint": [ENGINE_EXE],
                "Env": env,
                "Labels": {
                    ENGINE_LABEL: "helper",
                    VERSION_LABEL: env!("CARGO_PKG_VERSION"),
                },
            },
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created_by": "blumeops: engine helper from the client's executable"}],
        });
        let config = serde_json::to_vec(&config).expect("JSON");
        let config_name = format!("{}.json", hex::encode(Sha256::digest(&config)));
        let manifest = serde_json::to_vec(&serde_json::json!([{
            "Config": config_name,
            "RepoTags": [tag],
            "Layers": ["layer.tar"],
        }]))
        .expect("JSON");
        let mut out = tar::Builder::new(Vec::new());
        for (name, data) in [
            ("layer.tar", &layer),
            (config_name.as_str(), &config),
            ("manifest.json", &manifest),
        ] {
            append_bytes(&mut out, name, data, 0o644)?;
        }
        out.into_inner()
            .map_err(io("write", Path::new("the helper archive")))
    }

    /// The image's environment.
    fn env(&self) -> Vec<String> {
        vec![
            "PATH=/usr/local/bin:/usr/bin:/bin".to_owned(),
            format!("BLUMEOPS_CACHE_DIR={ENGINE_CACHE_DIR}"),
            // There is no ld.so.cache: the libraries' directories, as the client had them
            // (steps get an environment of their own).
            format!("LD_LIBRARY_PATH={}", self.library_dirs().join(":")),
        ]
    }

    /// The engine image as a container definition (for `containers/blumeops-engine`, an
    /// engine image published to a registry for clients that cannot make one): the helper
    /// layer, extracted from a tar kept in `scratch` (older ones there are removed), and
    /// the helper's config.
    pub fn container(&self, scratch: &Path) -> Result<crate::Container, Error> {
        let tag = self.tag()?;
        let digest = tag.rsplit('-').next().unwrap_or_default();
        let name = format!("blumeops-engine-{digest}.tar");
        let tar = scratch.join(&name);
        if !tar.is_file() {
            let staging = scratch.join(format!(".{name}.{}", std::process::id()));
            std::fs::write(&staging, self.layer()?).map_err(io("write", &staging))?;
            std::fs::rename(&staging, &tar).map_err(io("write", &tar))?;
        }
        for entry in std::fs::read_dir(scratch).into_iter().flatten().flatten() {
            let other = entry.file_name().to_string_lossy().into_owned();
            if other.starts_with("blumeops-engine-") && other.ends_with(".tar") && other != name {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let mut container = crate::Container::scratch().with_host_archive(
            "/",
            tar,
            crate::layer::HostCopy::default(),
        );
        for var in self.env() {
            let (k, v) = var.split_once('=').expect("NAME=VALUE");
            container = container.with_env_variable(k, v);
        }
        Ok(container
            .with_entrypoint([ENGINE_EXE])
            .with_label(ENGINE_LABEL, "helper")
            .with_label(VERSION_LABEL, env!("CARGO_PKG_VERSION")))
    }

    /// The directories of the shared libraries, in order.
    fn library_dirs(&self) -> Vec<String> {
        let mut dirs: Vec<String> = self
            .files
            .keys()
            .filter(|k| k.contains(".so"))
            .filter_map(|k| Path::new(k).parent())
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    fn layer(&self) -> Result<Vec<u8>, Error> {
        let mut tar = tar::Builder::new(Vec::new());
        let mut dirs = std::collections::BTreeSet::new();
        for inside in self.files.keys().map(String::as_str).chain([
            ENGINE_CACHE_DIR,
            "/blumeops/src",
            "/blumeops/out",
            "/tmp/x",
        ]) {
            let mut parent = Path::new(inside).parent();
            while let Some(p) = parent.filter(|p| *p != Path::new("/")) {
                dirs.insert(p.to_owned());
                parent = p.parent();
            }
        }
        dirs.insert(PathBuf::from(ENGINE_CACHE_DIR));
        dirs.insert(PathBuf::from("/blumeops/src"));
        dirs.insert(PathBuf::from("/blumeops/out"));
        for dir in &dirs {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(if dir == Path::new("/tmp") {
                0o1777
            } else {
                0o755
            });
            header.set_size(0);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            let name = format!("{}/", dir.to_string_lossy().trim_start_matches('/'));
            tar.append_data(&mut header, name, std::io::empty())
                .map_err(io("write", dir))?;
        }
        append_bytes(
            &mut tar,
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\n",
            0o644,
        )?;
        append_bytes(&mut tar, "etc/group", b"root:x:0:\n", 0o644)?;
        for (inside, host) in &self.files {
            let data = std::fs::read(host).map_err(io("read", host))?;
            let mode = if inside.ends_with(".crt") {
                0o644
            } else {
                0o755
            };
            append_bytes(&mut tar, inside.trim_start_matches('/'), &data, mode)?;
        }
        tar.into_inner()
            .map_err(io("write", Path::new("the helper layer")))
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn append_bytes(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &str,
    data: &[u8],
    mode: u32,
) -> Result<(), Error> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    tar.append_data(&mut header, name, data)
        .map_err(io("write", Path::new(name)))
}

/// The GNU build ID of a 64-bit little-endian ELF file (its `NT_GNU_BUILD_ID` note), a
/// digest the linker computed over the file's contents.
fn elf_build_id(path: &Path) -> Option<Vec<u8>> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let mut header = [0u8; 64];
    file.read_exact(&mut header).ok()?;
    // ELF magic, 64-bit, little-endian.
    if &header[..4] != b"\x7fELF" || header[4] != 2 || header[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (
        u64_at(&header, 0x20),
        usize::from(u16_at(&header, 0x36)),
        usize::from(u16_at(&header, 0x38)),
    );
    if phentsize < 56 || phnum > 256 {
        return None;
    }
    let mut phdrs = vec![0u8; phentsize * phnum];
    file.seek(SeekFrom::Start(phoff)).ok()?;
    file.read_exact(&mut phdrs).ok()?;
    for ph in phdrs.chunks(phentsize) {
        const PT_NOTE: u32 = 4;
        if u32_at(ph, 0) != PT_NOTE {
            continue;
        }
        let (offset, size) = (u64_at(ph, 8), u64_at(ph, 32));
        if size > 1 << 16 {
            continue;
        }
        let mut notes = vec![0u8; usize::try_from(size).ok()?];
        file.seek(SeekFrom::Start(offset)).ok()?;
        file.read_exact(&mut notes).ok()?;
        let mut at = 0;
        while at + 12 <= notes.len() {
            let namesz = u32_at(&notes, at) as usize;
            let descsz = u32_at(&notes, at + 4) as usize;
            let kind = u32_at(&notes, at + 8);
            let name_at = at + 12;
            let desc_at = name_at + namesz.next_multiple_of(4);
            let end = desc_at + descsz.next_multiple_of(4);
            if end > notes.len() + 3 || desc_at + descsz > notes.len() {
                break;
            }
            const NT_GNU_BUILD_ID: u32 = 3;
            if kind == NT_GNU_BUILD_ID && &notes[name_at..name_at + namesz] == b"GNU\0" {
                return Some(notes[desc_at..desc_at + descsz].to_vec());
            }
            at = end;
        }
    }
    None
}

/// The CA certificates this client trusts, as one PEM bundle: those of `SSL_CERT_FILE`
/// and `SSL_CERT_DIR` when either is set (as the registry client reads them), else the
/// system bundle (Debian's, Fedora's or Alpine's).
pub fn client_ca_bundle() -> Option<String> {
    let file = std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty());
    let dir = std::env::var_os("SSL_CERT_DIR").filter(|v| !v.is_empty());
    let mut pems: Vec<PathBuf> = Vec::new();
    if file.is_some() || dir.is_some() {
        pems.extend(file.map(PathBuf::from));
        if let Some(dir) = dir
            && let Ok(entries) = std::fs::read_dir(&dir)
        {
            let mut found: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            found.sort();
            pems.extend(found);
        }
    } else {
        pems.extend(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/cert.pem",
            ]
            .map(PathBuf::from)
            .into_iter()
            .find(|p| p.is_file()),
        );
    }
    // Each certificate once (a store holds the bundle and its hashed links to the same).
    let mut seen = std::collections::BTreeSet::new();
    let mut bundle = Vec::new();
    for path in pems.iter().filter(|p| p.is_file()) {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for block in text.split_inclusive("-----END CERTIFICATE-----") {
            let Some(start) = block.find("-----BEGIN CERTIFICATE-----") else {
                continue;
            };
            let cert = block[start..].trim().to_owned();
            if cert.ends_with("-----END CERTIFICATE-----") && seen.insert(cert.clone()) {
                bundle.extend_from_slice(cert.as_bytes());
                bundle.push(b'\n');
            }
        }
    }
    (!bundle.is_empty()).then(|| String::from_utf8_lossy(&bundle).into_owned())
}

/// The shared libraries `program` needs (its interpreter included), by `ldd`; for this
/// executable (`self_exe`) without `ldd`, those mapped into this process.
fn libraries(program: &Path, self_exe: bool) -> Result<Vec<PathBuf>, Error> {
    let ldd = std::process::Command::new("ldd")
        .arg(program)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    match ldd {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() || text.contains("not a dynamic executable") {
                return Ok(Vec::new()); // static
            }
            if let Some(line) = text.lines().find(|l| l.contains("=> not found")) {
                return Err(Error::Context {
                    path: program.to_owned(),
                    reason: format!("a library is missing: {}", line.trim()),
                });
            }
            Ok(text
                .split_whitespace()
                .filter(|w| w.starts_with('/'))
                .map(PathBuf::from)
                .filter(|p| p.is_file())
                .collect())
        }
        Err(_) if self_exe => mapped_libraries(),
        Err(e) => Err(io("run ldd on", program)(e)),
    }
}

/// The shared objects mapped into this process (`/proc/self/maps`).
fn mapped_libraries() -> Result<Vec<PathBuf>, Error> {
    let maps = Path::new("/proc/self/maps");
    let text = std::fs::read_to_string(maps).map_err(io("read", maps))?;
    let mut libs: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/') && p.contains(".so"))
        .map(PathBuf::from)
        .collect();
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// Make sure the daemon has the helper image; load it when it is missing. Returns its tag.
pub async fn ensure(
    docker: &Docker,
    endpoint: &Endpoint,
    info: &super::ServerInfo,
    note: &mut dyn FnMut(&str),
) -> Result<String, Error> {
    if !cfg!(target_os = "linux") || info.os != "linux" || info.arch != super::client_arch() {
        return Err(Error::NoHelperImage {
            endpoint: endpoint.to_string(),
            daemon: format!("{}/{}", info.os, info.arch),
            client: format!("{}/{}", std::env::consts::OS, super::client_arch()),
        });
    }
    let files = HelperFiles::collect()?;
    let tag = files.tag()?;
    if docker.inspect_image(&tag).await.is_ok() {
        return Ok(tag);
    }
    for n in &files.notes {
        note(n);
    }
    note(&format!("loading the engine image {tag} into {endpoint}"));
    let archive = files.archive(&tag)?;
    use futures_util::TryStreamExt as _;
    docker
        .import_image(
            bollard::query_parameters::ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            bollard::body_full(archive.into()),
            None,
        )
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| Error::api(endpoint, format!("load the engine image {tag}"), e))?;
    Ok(tag)
}

/// Make sure the daemon has `image` (pulling it when missing, with `credentials` as
/// `(user, password)` when given) and that it is this version.
pub async fn ensure_named(
    docker: &Docker,
    endpoint: &Endpoint,
    image: &str,
    credentials: Option<(String, String)>,
) -> Result<(), Error> {
    use futures_util::TryStreamExt as _;
    if docker.inspect_image(image).await.is_err() {
        let registry = image.split('/').next().unwrap_or_default().to_owned();
        let auth = credentials.map(|(username, password)| bollard::auth::DockerCredentials {
            username: Some(username),
            password: Some(password),
            serveraddress: Some(registry),
            ..Default::default()
        });
        docker
            .create_image(
                Some(bollard::query_parameters::CreateImageOptions {
                    from_image: Some(image.to_owned()),
                    ..Default::default()
                }),
                None,
                auth,
            )
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| Error::api(endpoint, format!("pull the engine image {image}"), e))?;
    }
    let inspect = docker
        .inspect_image(image)
        .await
        .map_err(|e| Error::api(endpoint, format!("inspect the engine image {image}"), e))?;
    let version = inspect
        .config
        .and_then(|c| c.labels)
        .and_then(|l| l.get(VERSION_LABEL).cloned())
        .unwrap_or_else(|| "unknown".to_owned());
    if version != env!("CARGO_PKG_VERSION") {
        return Err(Error::VersionMismatch {
            image: image.to_owned(),
            engine: version,
            client: env!("CARGO_PKG_VERSION").to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_holds_this_executable_its_libraries_and_a_stable_tag() {
        let files = HelperFiles::collect().unwrap();
        assert!(files.files.contains_key(ENGINE_EXE));
        // A dynamically linked test binary needs at least libc and the interpreter.
        assert!(
            files.files.keys().any(|k| k.contains("libc.so")),
            "{:?}",
            files.files.keys()
        );
        let tag = files.tag().unwrap();
        assert_eq!(tag, files.tag().unwrap());
        // The linker's build ID stands for the executable's contents (`file` shows it).
        let exe = std::env::current_exe().unwrap();
        let id = elf_build_id(&exe).expect("a build ID");
        let shown = std::process::Command::new("file")
            .arg("-L")
            .arg(&exe)
            .output();
        if let Ok(out) = shown {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&hex::encode(&id)), "{text}");
        }
        assert!(tag.starts_with("blumeops-engine:"), "{tag}");
        let archive = files.archive(&tag).unwrap();
        let mut names: Vec<String> = tar::Archive::new(&archive[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(names.contains(&"manifest.json".to_owned()), "{names:?}");
        assert!(names.contains(&"layer.tar".to_owned()), "{names:?}");
    }
}

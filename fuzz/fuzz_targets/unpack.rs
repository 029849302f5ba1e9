//! Layer unpacking: a tar (built from structured fuzz input, with `..`, absolute paths,
//! symlinks and hard links from a small alphabet, or raw bytes), gzip-compressed or not, is
//! unpacked into a fresh directory. Whatever happens, nothing outside that directory is
//! created or changed, and nothing panics.
#![no_main]

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use arbitrary::Arbitrary;
use blumeops_core::{UnpackOptions, media_types, unpack_layer};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
    Fifo,
    CharDevice,
    GnuLongName,
    Pax,
    Other(u8),
}

#[derive(Debug, Arbitrary)]
struct FuzzEntry {
    kind: Kind,
    /// Indexes into `PARTS`, joined with `/`.
    path: Vec<u8>,
    /// Indexes into `PARTS` for link targets (symlink and hard link).
    link: Vec<u8>,
    data: Vec<u8>,
    mode: u16,
    /// Header size to claim instead of the data's length (truncation, lies).
    claimed_size: Option<u16>,
}

#[derive(Debug, Arbitrary)]
enum Input {
    Entries { entries: Vec<FuzzEntry>, gzip: bool },
    Raw { bytes: Vec<u8>, gzip: bool },
}

const PARTS: &[&[u8]] = &[
    b"",
    b".",
    b"..",
    b"a",
    b"b",
    b"etc",
    b"outside",
    b"secret",
    b".wh.a",
    b".wh..wh..opq",
    b".wh..wh.plnk",
    b"/",
    b"//",
    b"../outside/secret",
    b"/etc/passwd",
    b"\0",
];

fn path_of(indexes: &[u8]) -> Vec<u8> {
    let parts: Vec<&[u8]> = indexes
        .iter()
        .take(12)
        .map(|i| PARTS[usize::from(*i) % PARTS.len()])
        .collect();
    parts.join(&b'/')
}

/// `name` in a 100-byte header field (cut short when longer).
fn field(name: &[u8]) -> [u8; 100] {
    let mut f = [0u8; 100];
    let n = name.len().min(100);
    f[..n].copy_from_slice(&name[..n]);
    f
}

fn build(entries: &[FuzzEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries.iter().take(64) {
        let name = path_of(&e.path);
        let link = path_of(&e.link);
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name = field(&name);
        h.as_old_mut().linkname = field(&link);
        let mut data = e.data.clone();
        let kind = match e.kind {
            Kind::File => tar::EntryType::Regular,
            Kind::Dir => tar::EntryType::Directory,
            Kind::Symlink => tar::EntryType::Symlink,
            Kind::HardLink => tar::EntryType::Link,
            Kind::Fifo => tar::EntryType::Fifo,
            Kind::CharDevice => tar::EntryType::Char,
            Kind::GnuLongName => {
                data = name.clone();
                tar::EntryType::GNULongName
            }
            Kind::Pax => {
                data = format!("{} path=", name.len() + 6).into_bytes();
                data.extend_from_slice(&name);
                data.push(b'\n');
                tar::EntryType::XHeader
            }
            Kind::Other(b) => tar::EntryType::new(b),
        };
        h.set_entry_type(kind);
        h.set_mode(u32::from(e.mode));
        h.set_mtime(1_600_000_000);
        h.set_size(e.claimed_size.map_or(data.len() as u64, u64::from));
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Every path under `dir` with its inode change time, size and link count.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, i64, i64, u64, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.push((p, m.ctime(), m.ctime_nsec(), m.size(), m.nlink()));
        }
    }
    out.sort();
    out
}

fuzz_target!(|input: Input| {
    let (tar, gzip) = match &input {
        Input::Entries { entries, gzip } => (build(entries), *gzip),
        Input::Raw { bytes, gzip } => (bytes.clone(), *gzip),
    };
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "untouched").unwrap();
    std::fs::create_dir(tmp.path().join("etc")).unwrap();
    std::fs::write(tmp.path().join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
    let dest = tmp.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let blob = tmp.path().join("blob");
    let (bytes, media_type) = if gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&tar).unwrap();
        (enc.finish().unwrap(), media_types::OCI_LAYER_GZIP)
    } else {
        (tar, media_types::OCI_LAYER_TAR)
    };
    std::fs::write(&blob, &bytes).unwrap();
    let before_outside = snapshot(&outside);
    let before_etc = snapshot(&tmp.path().join("etc"));

    let opts = UnpackOptions::default()
        .with_max_bytes(16 << 20)
        .with_max_entries(1000);
    let result = unpack_layer(&blob, media_type, &dest, &opts);
    if let Err(e) = &result {
        assert!(!e.to_string().is_empty());
    }

    // Nothing outside `dest` changed: only the four entries made above exist beside it.
    let mut top: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["blob", "dest", "etc", "outside"]);
    assert_eq!(snapshot(&outside), before_outside, "{input:?}");
    assert_eq!(snapshot(&tmp.path().join("etc")), before_etc, "{input:?}");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "untouched"
    );
    assert_eq!(
        std::fs::metadata(outside.join("secret")).unwrap().nlink(),
        1
    );
});

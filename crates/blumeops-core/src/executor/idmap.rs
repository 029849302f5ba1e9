//! User and group id mappings for the rootless executor: the calling user's subordinate
//! ranges in `/etc/subuid` and `/etc/subgid`, the mapping built from them, and what the
//! current process's own mapping is (`/proc/self/uid_map`).

use std::fmt;
use std::path::{Path, PathBuf};

/// Ids mapped besides 0 when the user's ranges allow it: 1–65535, as podman and buildah do.
pub const MAPPED_IDS: u32 = 65535;

/// The subordinate-id files (shadow's `newuidmap`/`newgidmap` read them).
pub const SUBUID_FILE: &str = "/etc/subuid";
/// See [`SUBUID_FILE`].
pub const SUBGID_FILE: &str = "/etc/subgid";

/// A range of host ids: `count` ids from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IdRange {
    /// First host id.
    pub start: u32,
    /// How many.
    pub count: u32,
}

/// One line of a mapping: `count` ids from `inside` map to host ids from `outside`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MapLine {
    /// First id inside the namespace.
    pub inside: u32,
    /// First id on the host.
    pub outside: u32,
    /// How many.
    pub count: u32,
}

/// The ranges of `/etc/subuid`-style `text` that belong to the user `name` (or its uid).
pub fn ranges_for(text: &str, name: &str, id: u32) -> Vec<IdRange> {
    let id = id.to_string();
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let mut parts = line.split(':');
            let (owner, start, count) = (parts.next()?, parts.next()?, parts.next()?);
            if owner != name && owner != id {
                return None;
            }
            let start = start.trim().parse().ok()?;
            let count: u32 = count.trim().parse().ok()?;
            (count > 0).then_some(IdRange { start, count })
        })
        .collect()
}

/// Read the user's ranges from `path`; a missing file has none.
pub fn read_ranges(path: &Path, name: &str, id: u32) -> Vec<IdRange> {
    std::fs::read_to_string(path)
        .map(|text| ranges_for(&text, name, id))
        .unwrap_or_default()
}

/// The mapping for a user: 0 is the user's own id, 1.. come from its ranges, at most
/// [`MAPPED_IDS`] of them (a smaller range maps what it can). Without ranges only 0 is mapped.
pub fn mapping(own: u32, ranges: &[IdRange]) -> Vec<MapLine> {
    let mut lines = vec![MapLine {
        inside: 0,
        outside: own,
        count: 1,
    }];
    let mut next = 1u32;
    for r in ranges {
        if next > MAPPED_IDS {
            break;
        }
        let count = r.count.min(MAPPED_IDS + 1 - next);
        lines.push(MapLine {
            inside: next,
            outside: r.start,
            count,
        });
        next += count;
    }
    lines
}

/// Parse `/proc/PID/uid_map` text.
pub fn parse_map_file(text: &str) -> Vec<MapLine> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace().map(str::parse::<u32>);
            Some(MapLine {
                inside: it.next()?.ok()?,
                outside: it.next()?.ok()?,
                count: it.next()?.ok()?,
            })
        })
        .collect()
}

/// How this process's user namespace maps ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentMapping {
    /// `/proc/self/uid_map`.
    pub uid: Vec<MapLine>,
    /// `/proc/self/gid_map`.
    pub gid: Vec<MapLine>,
}

impl CurrentMapping {
    /// Read this process's mapping.
    pub fn read() -> Self {
        let read = |p: &str| parse_map_file(&std::fs::read_to_string(p).unwrap_or_default());
        Self {
            uid: read("/proc/self/uid_map"),
            gid: read("/proc/self/gid_map"),
        }
    }

    /// Whether this is the initial user namespace (the host's identity mapping of all ids).
    pub fn is_initial(&self) -> bool {
        let identity = |m: &[MapLine]| matches!(m, [l] if l.inside == 0 && l.outside == 0 && l.count == u32::MAX);
        identity(&self.uid) || self.uid.is_empty()
    }

    /// Whether only one uid or gid is mapped (a rootless build without subordinate ranges).
    pub fn is_single(&self) -> bool {
        let total = |m: &[MapLine]| m.iter().map(|l| u64::from(l.count)).sum::<u64>();
        !self.is_initial() && (total(&self.uid) <= 1 || total(&self.gid) <= 1)
    }

    /// Whether `gid` (inside) is mapped.
    pub fn maps_gid(&self, gid: u32) -> bool {
        self.is_initial()
            || self.gid.iter().any(|l| {
                gid >= l.inside && u64::from(gid) < u64::from(l.inside) + u64::from(l.count)
            })
    }

    /// The host uid that 0 maps to, when this is a user namespace.
    pub fn host_uid(&self) -> Option<u32> {
        if self.is_initial() {
            return None;
        }
        self.uid.iter().find(|l| l.inside == 0).map(|l| l.outside)
    }
}

/// A range of `count` ids free in both subordinate files, for the `usermod` advice: after
/// every range already given out, and from 100000 at least.
pub fn suggest_range(subuid: &str, subgid: &str, count: u32) -> IdRange {
    let end = |text: &str| {
        text.lines()
            .filter_map(|l| {
                let mut p = l.trim().split(':').skip(1);
                let start: u64 = p.next()?.trim().parse().ok()?;
                let n: u64 = p.next()?.trim().parse().ok()?;
                Some(start + n)
            })
            .max()
            .unwrap_or(0)
    };
    let start = end(subuid).max(end(subgid)).max(100_000);
    IdRange {
        start: u32::try_from(start).unwrap_or(100_000),
        count,
    }
}

/// What a user without a range should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleMappingAdvice {
    /// The host user.
    pub user: String,
    /// The suggested range.
    pub range: IdRange,
    /// Set when `newuidmap`/`newgidmap` are missing too.
    pub helpers_missing: bool,
}

impl SingleMappingAdvice {
    /// The advice for host user `user`: a free range of 65536 ids, and whether the helpers
    /// are missing too.
    pub fn for_user(user: String) -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Self {
            user,
            range: suggest_range(&read(SUBUID_FILE), &read(SUBGID_FILE), 65536),
            helpers_missing: super::find_program("newuidmap").is_none()
                || super::find_program("newgidmap").is_none(),
        }
    }

    /// What to run: `as root: `usermod …``, and the helpers' package when they are missing.
    pub fn fix(&self) -> String {
        let last = u64::from(self.range.start) + u64::from(self.range.count) - 1;
        let mut fix = format!(
            "as root: `usermod --add-subuids {start}-{last} --add-subgids {start}-{last} {user}`",
            user = self.user,
            start = self.range.start,
        );
        if self.helpers_missing {
            fix.push_str(", and install newuidmap/newgidmap (Debian: `apt-get install uidmap`)");
        }
        fix
    }
}

impl fmt::Display for SingleMappingAdvice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this build ran in a user namespace with a single id mapping (only the user `{user}` \
             as 0), because `{user}` has no range in {SUBUID_FILE} and {SUBGID_FILE}; steps that \
             use any other user or group id fail (apt dropping to `_apt`, `useradd`, \
             `chown 1000`, a layer owning files by another id). Give `{user}` a range, {fix}",
            user = self.user,
            fix = self.fix(),
        )
    }
}

/// How the namespace's ids are mapped, and how the maps get written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsernsPlan {
    /// Lines of `uid_map`.
    pub uid_map: Vec<MapLine>,
    /// Lines of `gid_map`.
    pub gid_map: Vec<MapLine>,
    /// `newuidmap`/`newgidmap`, when the maps need them (more than the user's own id).
    pub helpers: Option<(PathBuf, PathBuf)>,
}

impl UsernsPlan {
    /// Whether only the user's own id is mapped.
    pub fn is_single(&self) -> bool {
        self.uid_map.len() <= 1 || self.gid_map.len() <= 1
    }

    /// Ids mapped (uids).
    pub fn mapped_ids(&self) -> u64 {
        self.uid_map.iter().map(|l| u64::from(l.count)).sum()
    }
}

/// The plan for the calling user: its ranges when `newuidmap`/`newgidmap` can apply them
/// (root writes any map itself), else a single mapping of its own ids.
pub fn plan_for_current_user() -> UsernsPlan {
    let (uid, gid) = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let user = super::user_name(uid);
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or_else(|| gid.to_string(), |g| g.name);
    let uid_ranges = read_ranges(SUBUID_FILE.as_ref(), &user, uid);
    // /etc/subgid is keyed by user name too (shadow looks the group ranges up by user).
    let mut gid_ranges = read_ranges(SUBGID_FILE.as_ref(), &user, uid);
    if gid_ranges.is_empty() {
        gid_ranges = read_ranges(SUBGID_FILE.as_ref(), &group, gid);
    }
    let helpers = super::find_program("newuidmap").zip(super::find_program("newgidmap"));
    let root = uid == 0;
    let ranged = !uid_ranges.is_empty() && !gid_ranges.is_empty() && (root || helpers.is_some());
    if !ranged {
        return UsernsPlan {
            uid_map: mapping(uid, &[]),
            gid_map: mapping(gid, &[]),
            helpers: None,
        };
    }
    UsernsPlan {
        uid_map: mapping(uid, &uid_ranges),
        gid_map: mapping(gid, &gid_ranges),
        helpers: if root { None } else { helpers },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_match_name_or_uid_and_skip_junk() {
        let text =
            "# c\nalice:100000:65536\nbob:165536:10\n1000:200000:5\nalice:bad:1\nalice:1:0\n";
        assert_eq!(
            ranges_for(text, "alice", 1000),
            [
                IdRange {
                    start: 100000,
                    count: 65536
                },
                IdRange {
                    start: 200000,
                    count: 5
                }
            ]
        );
        assert!(ranges_for(text, "carol", 1001).is_empty());
    }

    #[test]
    fn mapping_is_user_then_ranges_up_to_65535() {
        let full = mapping(
            1000,
            &[IdRange {
                start: 100000,
                count: 65536,
            }],
        );
        assert_eq!(
            full,
            [
                MapLine {
                    inside: 0,
                    outside: 1000,
                    count: 1
                },
                MapLine {
                    inside: 1,
                    outside: 100000,
                    count: 65535
                }
            ]
        );
        // Small ranges are used one after the other.
        let small = mapping(
            7,
            &[
                IdRange {
                    start: 500,
                    count: 10,
                },
                IdRange {
                    start: 900,
                    count: 100_000,
                },
            ],
        );
        assert_eq!(small[1].count, 10);
        assert_eq!(
            small[2],
            MapLine {
                inside: 11,
                outside: 900,
                count: 65525
            }
        );
        assert_eq!(mapping(7, &[]).len(), 1);
    }

    #[test]
    fn current_mapping_kinds() {
        let host = CurrentMapping {
            uid: parse_map_file("         0          0 4294967295\n"),
            gid: parse_map_file("         0          0 4294967295\n"),
        };
        assert!(host.is_initial() && !host.is_single() && host.host_uid().is_none());
        let single = CurrentMapping {
            uid: parse_map_file("0 1000 1\n"),
            gid: parse_map_file("0 1000 1\n"),
        };
        assert!(!single.is_initial() && single.is_single());
        assert_eq!(single.host_uid(), Some(1000));
        assert!(single.maps_gid(0) && !single.maps_gid(5));
        let full = CurrentMapping {
            uid: parse_map_file("0 1000 1\n1 100000 65535\n"),
            gid: parse_map_file("0 1000 1\n1 100000 65535\n"),
        };
        assert!(!full.is_single() && full.maps_gid(5) && !full.maps_gid(65536));
    }

    #[test]
    fn advice_names_files_and_a_free_range() {
        let range = suggest_range("a:100000:65536\n", "a:100000:70000\n", 65536);
        assert_eq!(range.start, 170000);
        let text = SingleMappingAdvice {
            user: "ci".into(),
            range,
            helpers_missing: false,
        }
        .to_string();
        assert!(
            text.contains("/etc/subuid") && text.contains("/etc/subgid"),
            "{text}"
        );
        assert!(
            text.contains("`usermod --add-subuids 170000-235535 --add-subgids 170000-235535 ci`"),
            "{text}"
        );
        assert_eq!(suggest_range("", "", 10).start, 100000);
    }
}

//! The step's user: parsing `user[:group]` before the fork, and resolving it against the
//! image's /etc/passwd and /etc/group inside the sandbox without allocating (the code runs
//! in a forked child of a multi-threaded process).
//!
//! Rules (those of Docker/runc):
//! - no user means uid 0;
//! - a name must exist in /etc/passwd; a number need not (its gid is then 0 unless given);
//! - without a group, the gid is the passwd entry's and the supplementary groups are every
//!   /etc/group entry listing the user's name; with a group (name or number) the group is
//!   the only one;
//! - HOME (when the environment has none) is the passwd entry's home, else `/`.

use super::Error;

/// A user or group as written: a number or a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Id {
    /// Numeric id.
    Num(u32),
    /// Name to look up.
    Name(Vec<u8>),
}

/// A parsed `user[:group]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UserSpec {
    pub(super) user: Id,
    pub(super) group: Option<Id>,
}

impl UserSpec {
    /// Parse `name`, `uid`, `name:group`, `uid:gid` (None means root).
    pub(super) fn parse(spec: Option<&str>) -> Result<Self, Error> {
        let Some(spec) = spec else {
            return Ok(Self {
                user: Id::Num(0),
                group: None,
            });
        };
        let invalid = |reason| Error::InvalidSpec {
            field: "user",
            value: spec.to_owned(),
            reason,
        };
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let parse_id = |s: &str| -> Result<Id, Error> {
            if s.is_empty() {
                return Err(invalid("empty user or group"));
            }
            if s.bytes().any(|b| b == b':' || b == b'\n' || b == 0) {
                return Err(invalid("contains `:`, a newline or NUL"));
            }
            Ok(match s.parse::<u32>() {
                Ok(n) => Id::Num(n),
                Err(_) if s.bytes().all(|b| b.is_ascii_digit()) => {
                    return Err(invalid("id out of range"));
                }
                Err(_) => Id::Name(s.as_bytes().to_vec()),
            })
        };
        Ok(Self {
            user: parse_id(user)?,
            group: group.map(parse_id).transpose()?,
        })
    }
}

/// A matching /etc/passwd entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PasswdEntry<'a> {
    pub(super) name: &'a [u8],
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) home: &'a [u8],
}

fn parse_num(field: &[u8]) -> Option<u32> {
    if field.is_empty() || field.len() > 10 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in field {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    u32::try_from(n).ok()
}

/// The `index`-th `:`-separated field of `line`.
fn field(line: &[u8], index: usize) -> Option<&[u8]> {
    line.split(|&b| b == b':').nth(index)
}

fn lines(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && l[0] != b'#')
}

/// Find the passwd entry of `user` (first match by name or uid).
pub(super) fn find_passwd<'a>(data: &'a [u8], user: &Id) -> Option<PasswdEntry<'a>> {
    lines(data).find_map(|line| {
        let name = field(line, 0)?;
        let uid = parse_num(field(line, 2)?)?;
        let matches = match user {
            Id::Num(n) => uid == *n,
            Id::Name(want) => name == want.as_slice(),
        };
        if !matches {
            return None;
        }
        Some(PasswdEntry {
            name,
            uid,
            gid: parse_num(field(line, 3)?)?,
            home: field(line, 5).unwrap_or_default(),
        })
    })
}

/// The gid of the group `name` in /etc/group.
pub(super) fn find_group(data: &[u8], name: &[u8]) -> Option<u32> {
    lines(data).find_map(|line| {
        (field(line, 0)? == name)
            .then(|| field(line, 2).and_then(parse_num))
            .flatten()
    })
}

/// Push onto `out` the gid of every group listing `user` as a member, without growing `out`
/// beyond its capacity and without duplicates.
pub(super) fn member_groups(data: &[u8], user: &[u8], out: &mut Vec<libc::gid_t>) {
    for line in lines(data) {
        let (Some(gid), Some(members)) = (field(line, 2).and_then(parse_num), field(line, 3))
        else {
            continue;
        };
        let listed = members
            .split(|&b| b == b',')
            .any(|m| m.trim_ascii() == user);
        if listed && !out.contains(&gid) && out.len() < out.capacity() {
            out.push(gid);
        }
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1000::/home/app:/bin/sh\nbroken:x:abc:1\nnobody:x:65534:65534:nobody:/:/sbin/nologin";
    const GROUP: &[u8] =
        b"root:x:0:root\nwheel:x:10:root,app\napp:x:1000:\naudio:x:29: app , other\n";

    #[rstest]
    #[case(None, Id::Num(0), None)]
    #[case(Some("app"), Id::Name(b"app".to_vec()), None)]
    #[case(Some("1000"), Id::Num(1000), None)]
    #[case(Some("app:audio"), Id::Name(b"app".to_vec()), Some(Id::Name(b"audio".to_vec())))]
    #[case(Some("1000:29"), Id::Num(1000), Some(Id::Num(29)))]
    fn parses_user_specs(#[case] spec: Option<&str>, #[case] user: Id, #[case] group: Option<Id>) {
        assert_eq!(UserSpec::parse(spec).unwrap(), UserSpec { user, group });
    }

    #[rstest]
    #[case("")]
    #[case(":1")]
    #[case("1:")]
    #[case("a:b:c")]
    #[case("99999999999")]
    fn refuses_bad_user_specs(#[case] spec: &str) {
        let err = UserSpec::parse(Some(spec)).unwrap_err();
        assert!(err.to_string().starts_with("invalid user"), "{err}");
    }

    #[test]
    fn finds_passwd_entries() {
        let app = find_passwd(PASSWD, &Id::Name(b"app".to_vec())).unwrap();
        assert_eq!(
            (app.name, app.uid, app.gid, app.home),
            (&b"app"[..], 1000, 1000, &b"/home/app"[..])
        );
        let by_id = find_passwd(PASSWD, &Id::Num(65534)).unwrap();
        assert_eq!(by_id.name, b"nobody");
        assert!(find_passwd(PASSWD, &Id::Name(b"broken".to_vec())).is_none());
        assert!(find_passwd(PASSWD, &Id::Num(5)).is_none());
    }

    #[test]
    fn finds_groups_and_memberships() {
        assert_eq!(find_group(GROUP, b"audio"), Some(29));
        assert_eq!(find_group(GROUP, b"nope"), None);
        let mut out = Vec::with_capacity(8);
        out.push(1000);
        member_groups(GROUP, b"app", &mut out);
        assert_eq!(out, [1000, 10, 29]);
        let mut small = Vec::with_capacity(1);
        member_groups(GROUP, b"app", &mut small);
        assert_eq!(small.len(), 1);
        assert_eq!(small.capacity(), 1);
    }
}

//! Users and groups from the container's own `/etc/passwd` and
//! `/etc/group`, parsed by the agent: a static agent has no NSS, and the
//! guest's files are not the container's anyway.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// A resolved `process.user`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// The passwd entry's home directory, when there is an entry.
    pub home: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user {0:?} is not in the container's /etc/passwd")]
    NoSuchUser(String),
    #[error("group {0:?} is not in the container's /etc/group")]
    NoSuchGroup(String),
    #[error("empty user name")]
    Empty,
    #[error("reading the container's {path}: {source}")]
    Read { path: &'static str, source: io::Error },
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 7 || line.starts_with('#') {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_owned(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: fields[5].to_owned(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || line.starts_with('#') {
                return None;
            }
            Some(GroupEntry {
                name: fields[0].to_owned(),
                gid: fields[2].parse().ok()?,
                members: fields[3].split(',').filter(|m| !m.is_empty()).map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// Resolves `spec` (`user`, `user:group`, `uid`, `uid:gid`, names or
/// numbers on either side) against the two files' contents, the way runc
/// and podman do: a numeric uid need not exist; supplementary groups are
/// the groups listing the user's name.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ResolvedUser, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() {
        return Err(UserError::Empty);
    }
    let users = parse_passwd(passwd);
    let groups = parse_group(group);
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => users.iter().find(|u| u.uid == uid),
        Err(_) => Some(
            users.iter().find(|u| u.name == user_part).ok_or_else(|| UserError::NoSuchUser(user_part.to_owned()))?,
        ),
    };
    let uid = entry.map(|e| e.uid).unwrap_or_else(|| user_part.parse().unwrap_or_default());
    let gid = match group_part {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups.iter().find(|e| e.name == g).ok_or_else(|| UserError::NoSuchGroup(g.to_owned()))?.gid,
        },
        None => entry.map(|e| e.gid).unwrap_or(0),
    };
    let mut additional_gids: Vec<u32> = match (group_part, entry) {
        // An explicit group replaces the user's memberships, as with
        // `podman run -u user:group`.
        (None, Some(entry)) => groups.iter().filter(|g| g.members.contains(&entry.name)).map(|g| g.gid).collect(),
        _ => Vec::new(),
    };
    additional_gids.retain(|&g| g != gid);
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(ResolvedUser { uid, gid, additional_gids, home: entry.map(|e| e.home.clone()) })
}

/// The home directory of `uid` in the container's passwd, if listed.
pub fn home_of(uid: u32, passwd: &str) -> Option<String> {
    parse_passwd(passwd).into_iter().find(|e| e.uid == uid).map(|e| e.home)
}

/// Reads `path` (absolute, inside the container) with every symlink
/// resolved inside `rootfs`, so that an image's `/etc/passwd -> /x` link
/// cannot make the agent read its own files. A missing file reads empty.
pub fn read_in_root(rootfs: &Path, path: &'static str) -> Result<String, UserError> {
    let fail = |source| UserError::Read { path, source };
    let root = std::fs::File::open(rootfs).map_err(fail)?;
    let relative = CString::new(path.trim_start_matches('/')).expect("constant paths have no NUL");
    // SAFETY: open_how is plain data; all zeroes is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 with a valid directory fd, a NUL-terminated path and
    // an open_how of the size passed; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            relative.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::NotFound { Ok(String::new()) } else { Err(fail(err)) };
    }
    // SAFETY: fd is the file openat2 just opened, owned from here on.
    let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    let mut text = String::new();
    // A passwd file larger than this is not one; stop reading.
    (&mut file).take(4 << 20).read_to_string(&mut text).map_err(fail)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nguest:x:1000:1000:guest:/home/guest:/bin/sh\n# comment\nbroken\n";
    const GROUP: &str = "root:x:0:\naudio:x:29:guest\nguest:x:1000:\ntenants:x:2000:guest,root\n";

    #[test]
    fn names_resolve_with_their_groups_and_home() {
        let user = resolve("guest", PASSWD, GROUP).unwrap();
        assert_eq!(
            user,
            ResolvedUser { uid: 1000, gid: 1000, additional_gids: vec![29, 2000], home: Some("/home/guest".into()) }
        );
        let user = resolve("guest:audio", PASSWD, GROUP).unwrap();
        assert_eq!((user.uid, user.gid, user.additional_gids), (1000, 29, vec![]));
        let root = resolve("0", PASSWD, GROUP).unwrap();
        assert_eq!((root.uid, root.gid, root.additional_gids, root.home.as_deref()), (0, 0, vec![2000], Some("/root")));
    }

    #[test]
    fn unknown_numbers_pass_and_unknown_names_fail() {
        let user = resolve("4242:4343", PASSWD, GROUP).unwrap();
        assert_eq!(user, ResolvedUser { uid: 4242, gid: 4343, additional_gids: vec![], home: None });
        assert!(matches!(resolve("mallory", PASSWD, GROUP), Err(UserError::NoSuchUser(_))));
        assert!(matches!(resolve("guest:wheel", PASSWD, GROUP), Err(UserError::NoSuchGroup(_))));
        assert!(matches!(resolve(":0", PASSWD, GROUP), Err(UserError::Empty)));
    }

    #[test]
    fn files_are_read_inside_the_root() {
        let root = std::env::temp_dir().join(format!("husk-users-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/group"), GROUP).unwrap();
        // An absolute link is resolved inside the root, not on the host.
        std::os::unix::fs::symlink("/etc/group", root.join("etc/passwd")).unwrap();
        assert_eq!(read_in_root(&root, "/etc/passwd").unwrap(), GROUP);
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        assert_eq!(read_in_root(&root, "/etc/passwd").unwrap(), "");
        std::fs::remove_dir_all(&root).unwrap();
    }
}

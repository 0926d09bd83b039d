//! The jail's command-line values: `HOST:JAIL[:ro]` binds and
//! `NAME=SOFT[:HARD]` resource limits, checked when parsed so that a bad
//! value is a usage error naming itself.

use std::path::{Path, PathBuf};
use std::str::FromStr;

/// What the jail is made of.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JailConfig {
    /// The per-VM root: an existing directory owned by root, not a symlink.
    pub root: PathBuf,
    /// Host files and directories made visible in the jail, in order.
    pub binds: Vec<Bind>,
    /// Switch to this uid and gid (both or neither) after setting up.
    pub ids: Option<(u32, u32)>,
    pub rlimits: Vec<Rlimit>,
}

/// One host path bound into the jail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bind {
    pub host: PathBuf,
    /// Absolute and normal (no `.`, `..` or empty components), not `/` and
    /// not under `/dev` or `/proc`, which the jail itself fills.
    pub jail: PathBuf,
    pub read_only: bool,
}

/// Directories of the jail that are the jail's own: binds may not land
/// there.
pub(super) const RESERVED: &[&str] = &["dev", "proc"];

/// Checks the form of a path as seen inside the jail; returns its
/// components.
pub(super) fn jail_components(path: &str) -> Result<Vec<&str>, String> {
    let rest = path.strip_prefix('/').ok_or_else(|| format!("the jail path {path:?} is not absolute"))?;
    if rest.is_empty() {
        return Err("the jail path may not be / itself".into());
    }
    let components: Vec<&str> = rest.split('/').collect();
    if components.iter().any(|c| c.is_empty() || *c == "." || *c == "..") {
        return Err(format!("the jail path {path:?} has an empty, . or .. component"));
    }
    Ok(components)
}

impl FromStr for Bind {
    type Err = String;

    /// `HOST:JAIL`, `HOST:JAIL:ro` or `HOST:JAIL:rw`; the jail path cannot
    /// hold a `:`, the host path can.
    fn from_str(text: &str) -> Result<Self, String> {
        let (rest, read_only) = match text.rsplit_once(':') {
            Some((rest, "ro")) => (rest, true),
            Some((rest, "rw")) => (rest, false),
            _ => (text, false),
        };
        let (host, jail) = rest.rsplit_once(':').ok_or_else(|| format!("{text:?} is not HOST_PATH:JAIL_PATH[:ro]"))?;
        if host.is_empty() {
            return Err(format!("{text:?} has an empty host path"));
        }
        let components = jail_components(jail)?;
        if RESERVED.contains(&components[0]) {
            return Err(format!("the jail path {jail:?} is under /{}, which the jail fills itself", components[0]));
        }
        Ok(Bind { host: host.into(), jail: jail.into(), read_only })
    }
}

/// A resource limit the jailed VMM runs under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rlimit {
    pub name: &'static str,
    pub resource: libc::__rlimit_resource_t,
    pub soft: u64,
    pub hard: u64,
}

/// setrlimit(2)'s resources by the names prlimit(1) and the OCI spec
/// (`RLIMIT_<NAME>`) use.
const RESOURCES: &[(&str, libc::__rlimit_resource_t)] = &[
    ("as", libc::RLIMIT_AS),
    ("core", libc::RLIMIT_CORE),
    ("cpu", libc::RLIMIT_CPU),
    ("data", libc::RLIMIT_DATA),
    ("fsize", libc::RLIMIT_FSIZE),
    ("locks", libc::RLIMIT_LOCKS),
    ("memlock", libc::RLIMIT_MEMLOCK),
    ("msgqueue", libc::RLIMIT_MSGQUEUE),
    ("nice", libc::RLIMIT_NICE),
    ("nofile", libc::RLIMIT_NOFILE),
    ("nproc", libc::RLIMIT_NPROC),
    ("rss", libc::RLIMIT_RSS),
    ("rtprio", libc::RLIMIT_RTPRIO),
    ("rttime", libc::RLIMIT_RTTIME),
    ("sigpending", libc::RLIMIT_SIGPENDING),
    ("stack", libc::RLIMIT_STACK),
];

fn limit_value(text: &str) -> Result<u64, String> {
    match text {
        "unlimited" | "infinity" => Ok(libc::RLIM_INFINITY),
        // Digits only: u64::from_str would also take a leading '+'.
        digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
            digits.parse().map_err(|_| format!("the limit {text:?} does not fit in 64 bits"))
        }
        _ => Err(format!("the limit {text:?} is not a number or \"unlimited\"")),
    }
}

impl FromStr for Rlimit {
    type Err = String;

    /// `NAME=SOFT[:HARD]`, the hard limit the soft one when left out.
    fn from_str(text: &str) -> Result<Self, String> {
        let (name, values) = text.split_once('=').ok_or_else(|| format!("{text:?} is not NAME=SOFT[:HARD]"))?;
        let name = name.strip_prefix("RLIMIT_").map(str::to_ascii_lowercase).unwrap_or_else(|| name.to_owned());
        let (name, resource) = RESOURCES.iter().find(|(known, _)| *known == name).copied().ok_or_else(|| {
            let known: Vec<&str> = RESOURCES.iter().map(|(n, _)| *n).collect();
            format!("unknown resource {name:?} (one of {})", known.join(", "))
        })?;
        let (soft, hard) = match values.split_once(':') {
            Some((soft, hard)) => (limit_value(soft)?, limit_value(hard)?),
            None => (limit_value(values)?, limit_value(values)?),
        };
        if soft > hard {
            return Err(format!("{text:?}: the soft limit is above the hard limit"));
        }
        Ok(Rlimit { name, resource, soft, hard })
    }
}

impl Bind {
    /// The jail path's components (its form is checked when parsed, or
    /// fixed for the jail's own binds).
    pub(super) fn components(&self) -> Vec<&str> {
        let text = self.jail.to_str().expect("parsed from a str");
        jail_components(text).expect("checked when parsed")
    }
}

/// A bind made by the jail itself rather than asked for.
pub(super) fn own_bind(host: &Path, jail: &str) -> Bind {
    Bind { host: host.to_owned(), jail: jail.into(), read_only: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_parse_with_and_without_ro() {
        let bind: Bind = "/a/b:/kernel".parse().unwrap();
        assert_eq!(bind, Bind { host: "/a/b".into(), jail: "/kernel".into(), read_only: false });
        let bind: Bind = "/a:b/c:/x/y:ro".parse().unwrap();
        assert_eq!(bind, Bind { host: "/a:b/c".into(), jail: "/x/y".into(), read_only: true });
        let bind: Bind = "rel/dir:/share:rw".parse().unwrap();
        assert_eq!(bind, Bind { host: "rel/dir".into(), jail: "/share".into(), read_only: false });
        assert_eq!(bind.components(), ["share"]);
    }

    #[test]
    fn bad_binds_are_refused_with_the_reason() {
        for (text, reason) in [
            ("/a", "is not HOST_PATH:JAIL_PATH"),
            ("/a:ro", "is not HOST_PATH:JAIL_PATH"),
            (":/x", "empty host path"),
            ("/a:x", "not absolute"),
            ("/a:/", "/ itself"),
            ("/a:/x/../y", ". or .. component"),
            ("/a:/x//y", ". or .. component"),
            ("/a:/x/./y", ". or .. component"),
            ("/a:/x/", ". or .. component"),
            ("/a:/dev/kvm", "under /dev"),
            ("/a:/proc", "under /proc"),
        ] {
            let err = text.parse::<Bind>().unwrap_err();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn rlimits_parse_by_either_name_and_default_the_hard_limit() {
        let limit: Rlimit = "nofile=1024:4096".parse().unwrap();
        assert_eq!((limit.name, limit.resource, limit.soft, limit.hard), ("nofile", libc::RLIMIT_NOFILE, 1024, 4096));
        let limit: Rlimit = "RLIMIT_FSIZE=1048576".parse().unwrap();
        assert_eq!((limit.name, limit.soft, limit.hard), ("fsize", 1 << 20, 1 << 20));
        let limit: Rlimit = "core=0:unlimited".parse().unwrap();
        assert_eq!((limit.soft, limit.hard), (0, libc::RLIM_INFINITY));
    }

    #[test]
    fn bad_rlimits_are_refused_with_the_reason() {
        for (text, reason) in [
            ("nofile", "is not NAME=SOFT[:HARD]"),
            ("files=1", "unknown resource \"files\""),
            ("nofile=+1", "not a number"),
            ("nofile=", "not a number"),
            ("nofile=1:x", "not a number"),
            ("nofile=99999999999999999999", "64 bits"),
            ("nofile=10:5", "soft limit is above the hard limit"),
        ] {
            let err = text.parse::<Rlimit>().unwrap_err();
            assert!(err.contains(reason), "{text}: {err}");
        }
    }
}

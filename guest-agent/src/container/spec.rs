//! From the host's OCI spec to the one the guest runs.
//!
//! The host writes its spec with host paths (the bundle's rootfs, volume
//! sources, namespace paths, its own cgroup path) and host-side concerns
//! (hooks, LSM labels). Inside the VM those paths are virtio-fs shares
//! mounted by the agent, the VM stands for the host's network namespace,
//! and the agent owns the guest's cgroup tree.

use std::path::{Component, Path, PathBuf};

use husk_api::agent_protocol::VolumeShare;
use oci_spec::runtime::{LinuxNamespaceType, Mount, Process, Spec};

use super::users;

/// The guest's cgroup v2 subtree holding every container.
pub const CGROUP_PARENT: &str = "/husk";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("the spec has no {0}")]
    Missing(&'static str),
    #[error("bind mount of {host_path} on {destination}: the source is not inside any directory shared with the VM")]
    UnsharedMount { host_path: String, destination: String },
    #[error("bind mount source {0} is not an absolute, normalised path")]
    BadSource(String),
    #[error("joining the host's {0} namespace at {1} is not possible inside a VM")]
    HostNamespace(String, String),
    #[error("process.terminal is {spec} but the request asked for terminal={request}")]
    TerminalMismatch { spec: bool, request: bool },
    #[error(transparent)]
    User(#[from] users::UserError),
}

/// A share as mounted in the guest.
pub struct MountedShare {
    pub share: VolumeShare,
    pub guest_path: PathBuf,
}

/// What the guest side provides for one container.
pub struct GuestLayout<'a> {
    pub container_id: &'a str,
    pub rootfs: &'a Path,
    pub shares: &'a [MountedShare],
    /// The resolver file to bind on /etc/resolv.conf when the spec mounts
    /// none (set once the host configured DNS).
    pub resolv_conf: Option<&'a Path>,
}

/// Rewrites `spec` in place for the guest.
pub fn adapt(spec: &mut Spec, layout: &GuestLayout, user: Option<&str>, terminal: bool) -> Result<(), SpecError> {
    let root = spec.root_mut().as_mut().ok_or(SpecError::Missing("root"))?;
    root.set_path(layout.rootfs.to_path_buf());

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for mount in &mut mounts {
        if is_bind(mount) {
            let source = mount.source().clone().unwrap_or_default();
            let guest = map_source(&source, layout.shares).map_err(|err| match err {
                MapError::Unshared => SpecError::UnsharedMount {
                    host_path: source.display().to_string(),
                    destination: mount.destination().display().to_string(),
                },
                MapError::NotNormal => SpecError::BadSource(source.display().to_string()),
            })?;
            mount.set_source(Some(guest));
        }
    }
    if let Some(resolv) = layout.resolv_conf {
        if !mounts.iter().any(|m| m.destination() == Path::new("/etc/resolv.conf")) {
            let mut mount = Mount::default();
            mount.set_destination(PathBuf::from("/etc/resolv.conf"));
            mount.set_typ(Some("bind".into()));
            mount.set_source(Some(resolv.to_path_buf()));
            mount.set_options(Some(vec!["bind".into(), "ro".into(), "nosuid".into(), "nodev".into()]));
            mounts.push(mount);
        }
    }
    spec.set_mounts(Some(mounts));

    if spec.hooks().is_some() {
        // OCI hooks are host programs; the runtime on the host runs them.
        tracing_debug("ignoring the spec's hooks inside the guest");
        spec.set_hooks(None);
    }

    let linux = spec.linux_mut().as_mut().ok_or(SpecError::Missing("linux section"))?;
    linux.set_cgroups_path(Some(PathBuf::from(format!("{CGROUP_PARENT}/{}", layout.container_id))));
    if linux.mount_label().is_some() {
        tracing_debug("ignoring linux.mountLabel: the guest has no SELinux");
        linux.set_mount_label(None);
    }
    if let Some(namespaces) = linux.namespaces_mut() {
        let mut kept = Vec::with_capacity(namespaces.len());
        for ns in namespaces.drain(..) {
            match (ns.typ(), ns.path()) {
                // The VM is the container's network namespace: the host's
                // netns is mirrored onto the VM's NIC.
                (LinuxNamespaceType::Network, Some(_)) => {}
                (typ, Some(path)) => {
                    return Err(SpecError::HostNamespace(typ.to_string(), path.display().to_string()));
                }
                _ => kept.push(ns),
            }
        }
        *namespaces = kept;
    }

    let rootfs = layout.rootfs.to_path_buf();
    let process = spec.process_mut().as_mut().ok_or(SpecError::Missing("process"))?;
    if process.terminal().unwrap_or(false) != terminal {
        return Err(SpecError::TerminalMismatch { spec: process.terminal().unwrap_or(false), request: terminal });
    }
    adapt_process(process, &rootfs, user)
}

/// Resolves the process's user in the container's files and drops the LSM
/// labels the guest cannot apply. Shared by a container's init and execs.
pub fn adapt_process(process: &mut Process, rootfs: &Path, user: Option<&str>) -> Result<(), SpecError> {
    let passwd = users::read_in_root(rootfs, "/etc/passwd")?;
    let mut home = None;
    if let Some(name) = user {
        let group = users::read_in_root(rootfs, "/etc/group")?;
        let resolved = users::resolve(name, &passwd, &group)?;
        let spec_user = process.user_mut();
        spec_user.set_uid(resolved.uid);
        spec_user.set_gid(resolved.gid);
        spec_user.set_additional_gids(Some(resolved.additional_gids));
        home = resolved.home;
    }
    let mut env = process.env().clone().unwrap_or_default();
    // Setting HOME here also keeps libcontainer from asking NSS for it.
    if !env.iter().any(|e| e.starts_with("HOME=") && e.len() > 5) {
        let home = home.or_else(|| users::home_of(process.user().uid(), &passwd)).unwrap_or_else(|| "/".into());
        env.retain(|e| !e.starts_with("HOME="));
        env.push(format!("HOME={home}"));
    }
    process.set_env(Some(env));
    if process.apparmor_profile().is_some() {
        tracing_debug("ignoring process.apparmorProfile: the guest has no AppArmor");
        process.set_apparmor_profile(None);
    }
    if process.selinux_label().is_some() {
        tracing_debug("ignoring process.selinuxLabel: the guest has no SELinux");
        process.set_selinux_label(None);
    }
    Ok(())
}

fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount.options().as_ref().is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
}

enum MapError {
    Unshared,
    NotNormal,
}

/// The guest path of host path `source`: inside the share whose host path
/// is its longest prefix (by whole components).
fn map_source(source: &Path, shares: &[MountedShare]) -> Result<PathBuf, MapError> {
    if !source.is_absolute() || source.components().any(|c| matches!(c, Component::ParentDir | Component::CurDir)) {
        return Err(MapError::NotNormal);
    }
    shares
        .iter()
        .filter_map(|s| source.strip_prefix(&s.share.host_path).ok().map(|rest| (s, rest)))
        .max_by_key(|(s, _)| s.share.host_path.len())
        .map(|(s, rest)| if rest.as_os_str().is_empty() { s.guest_path.clone() } else { s.guest_path.join(rest) })
        .ok_or(MapError::Unshared)
}

/// The agent logs to the console only what the host may need to debug a
/// spec; a debug line goes there when `husk.debug` is on the command line.
fn tracing_debug(message: &str) {
    if crate::cmdline::debug_enabled() {
        eprintln!("husk-agent: debug: {message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(host: &str, guest: &str) -> MountedShare {
        MountedShare {
            share: VolumeShare { tag: "t".into(), host_path: host.into(), read_only: false },
            guest_path: guest.into(),
        }
    }

    fn bind(source: &str, destination: &str) -> Mount {
        let mut mount = Mount::default();
        mount.set_typ(Some("bind".into()));
        mount.set_source(Some(source.into()));
        mount.set_destination(destination.into());
        mount.set_options(Some(vec!["rbind".into()]));
        mount
    }

    fn layout<'a>(rootfs: &'a Path, shares: &'a [MountedShare]) -> GuestLayout<'a> {
        GuestLayout { container_id: "c1", rootfs, shares, resolv_conf: Some(Path::new("/run/husk/resolv.conf")) }
    }

    #[test]
    fn binds_map_into_their_longest_share_and_others_are_refused() {
        let shares = [share("/srv", "/run/s0"), share("/srv/data", "/run/s1")];
        assert_eq!(map_source(Path::new("/srv/data/x/y"), &shares).ok(), Some(PathBuf::from("/run/s1/x/y")));
        assert_eq!(map_source(Path::new("/srv/datax"), &shares).ok(), Some(PathBuf::from("/run/s0/datax")));
        assert_eq!(map_source(Path::new("/srv"), &shares).ok(), Some(PathBuf::from("/run/s0")));
        assert!(matches!(map_source(Path::new("/etc/shadow"), &shares), Err(MapError::Unshared)));
        assert!(matches!(map_source(Path::new("/srv/../etc"), &shares), Err(MapError::NotNormal)));
        assert!(matches!(map_source(Path::new("srv"), &shares), Err(MapError::NotNormal)));
    }

    #[test]
    fn the_spec_is_rewritten_for_the_guest() {
        let rootfs = std::env::temp_dir().join(format!("husk-spec-{}", std::process::id()));
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/passwd"), "guest:x:1000:1000::/home/guest:/bin/sh\n").unwrap();
        std::fs::write(rootfs.join("etc/group"), "audio:x:29:guest\n").unwrap();
        let shares = [share("/srv/vol", "/run/husk/c1/shares/0")];
        let mut spec = Spec::default();
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(bind("/srv/vol", "/data"));
        spec.set_mounts(Some(mounts));
        let linux = spec.linux_mut().as_mut().unwrap();
        linux.set_cgroups_path(Some("/machine.slice/libpod-c1".into()));
        let mut namespaces = linux.namespaces().clone().unwrap();
        let mut net = oci_spec::runtime::LinuxNamespace::default();
        net.set_typ(LinuxNamespaceType::Network);
        net.set_path(Some("/run/netns/cni-1".into()));
        namespaces.push(net);
        linux.set_namespaces(Some(namespaces));
        adapt(&mut spec, &layout(&rootfs, &shares), Some("guest"), false).unwrap();

        assert_eq!(spec.root().as_ref().unwrap().path(), &rootfs);
        let mounts = spec.mounts().as_ref().unwrap();
        let data = mounts.iter().find(|m| m.destination() == Path::new("/data")).unwrap();
        assert_eq!(data.source().as_deref(), Some(Path::new("/run/husk/c1/shares/0")));
        assert!(mounts.iter().any(|m| m.destination() == Path::new("/etc/resolv.conf")));
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/husk/c1")));
        assert!(linux.namespaces().as_ref().unwrap().iter().all(|ns| ns.path().is_none()));
        let process = spec.process().as_ref().unwrap();
        assert_eq!((process.user().uid(), process.user().gid()), (1000, 1000));
        assert_eq!(process.user().additional_gids().as_deref(), Some(&[29][..]));
        assert!(process.env().as_ref().unwrap().contains(&"HOME=/home/guest".to_string()));

        let mut unshared = Spec::default();
        unshared.set_mounts(Some(vec![bind("/etc", "/host-etc")]));
        let err = adapt(&mut unshared, &layout(&rootfs, &shares), None, false).unwrap_err();
        assert!(err.to_string().contains("/etc on /host-etc"), "{err}");
        let err = adapt(&mut Spec::default(), &layout(&rootfs, &shares), None, true).unwrap_err();
        assert!(matches!(err, SpecError::TerminalMismatch { .. }), "{err}");
        std::fs::remove_dir_all(&rootfs).unwrap();
    }

    #[test]
    fn host_namespaces_other_than_the_network_are_refused() {
        let rootfs = std::env::temp_dir();
        let mut spec = Spec::default();
        let linux = spec.linux_mut().as_mut().unwrap();
        let mut ipc = oci_spec::runtime::LinuxNamespace::default();
        ipc.set_typ(LinuxNamespaceType::Ipc);
        ipc.set_path(Some("/proc/1/ns/ipc".into()));
        linux.set_namespaces(Some(vec![ipc]));
        let err = adapt(&mut spec, &layout(&rootfs, &[]), None, false).unwrap_err();
        assert!(matches!(err, SpecError::HostNamespace(..)), "{err}");
    }
}

//! What of the host a container's VM sees: its root file system and its
//! bind-mount sources, each exported over virtio-fs.
//!
//! The rootfs is one share. Every bind-mount source (volumes, and the
//! files engines bind in: /etc/hosts, /etc/resolv.conf, /etc/hostname,
//! /run/.containerenv) is bind-mounted on the host under the container's
//! `volumes/` directory, and that directory is the one other share: one
//! virtio-fs device however many volumes, and the VM sees exactly the
//! sources and nothing beside them (a file's directory is not exported).
//! A read-only bind is remounted read-only on the host too, so the host
//! kernel refuses writes even from a guest that ignores its mount flags.
//!
//! Ownership: the volumes share squashes the guest's root (the VMM's
//! default): what the container's root creates in a volume is owned by
//! 65534 on the host, never by host root, and it cannot make setuid files,
//! device nodes or file capabilities there. The rootfs share lets the
//! guest's root own files (`allow_host_root`) only when the rootfs
//! directory itself is owned by host root: an engine-managed container root
//! file system, where runc would leave root-owned files too and the image's
//! root-owned files must stay so. A rootfs owned by anyone else (a rootless
//! engine's, a user's directory) is squashed like a volume.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use husk_api::agent_protocol::VolumeShare;
use husk_api::devices::{FsCachePolicy, FsConfig, FS_DEFAULT_ROOT_ID};
use oci_spec::runtime::{Mount, Spec};

use crate::container_state::StagedVolume;

/// The virtio-fs tags the agent mounts.
pub const ROOTFS_TAG: &str = "rootfs";
pub const VOLUMES_TAG: &str = "volumes";

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("the bundle has no root.path")]
    NoRoot,
    #[error("the rootfs {} is not a directory", .0.display())]
    BadRoot(PathBuf),
    #[error("bind mount of {} on {destination}: the source does not exist", .host_path.display())]
    MissingSource { host_path: PathBuf, destination: String },
    #[error("staging {} at {}: {error}", .host_path.display(), .staged.display())]
    Stage { host_path: PathBuf, staged: PathBuf, error: io::Error },
    #[error("reading the owner of the rootfs {}: {error}", .path.display())]
    RootOwner { path: PathBuf, error: io::Error },
}

/// The virtio-fs share of `dir` the VMM is asked for, with `tag` as its
/// tag and id. The guest's root is squashed to 65534 unless
/// `allow_host_root`.
pub fn fs_config(tag: &str, dir: &Path, read_only: bool, allow_host_root: bool) -> FsConfig {
    FsConfig {
        fs_id: tag.into(),
        tag: tag.into(),
        shared_dir: dir.display().to_string(),
        read_only,
        cache: FsCachePolicy::default(),
        dax_window_mib: None,
        allow_host_root,
        root_uid: FS_DEFAULT_ROOT_ID,
        root_gid: FS_DEFAULT_ROOT_ID,
    }
}

/// Whether the rootfs share may leave files owned by host root: only when
/// the rootfs directory (its target, if a symlink) is itself owned by uid 0.
pub fn rootfs_allows_host_root(rootfs: &Path) -> Result<bool, ShareError> {
    use std::os::unix::fs::MetadataExt;
    let metadata =
        std::fs::metadata(rootfs).map_err(|error| ShareError::RootOwner { path: rootfs.to_path_buf(), error })?;
    Ok(metadata.uid() == 0)
}

/// Whether a mount of the spec is a bind mount.
pub fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount.options().as_ref().is_some_and(|options| options.iter().any(|o| o == "bind" || o == "rbind"))
}

fn is_read_only(mount: &Mount) -> bool {
    mount.options().as_ref().is_some_and(|options| options.iter().any(|o| o == "ro"))
}

/// The rootfs directory: `root.path`, relative to the bundle if relative.
pub fn rootfs_path(spec: &Spec, bundle: &Path) -> Result<PathBuf, ShareError> {
    let root = spec.root().as_ref().ok_or(ShareError::NoRoot)?;
    let path = bundle.join(root.path());
    if !path.is_dir() {
        return Err(ShareError::BadRoot(path));
    }
    Ok(path)
}

/// The spec as the guest needs it, and the volumes staged for it.
pub struct PreparedShares {
    pub spec: Spec,
    pub staged: Vec<StagedVolume>,
    /// The volumes share, if there is any bind mount.
    pub volumes: Option<VolumeShare>,
}

/// Rewrites the spec's bind mounts to sources under `volumes_dir` and
/// bind-mounts each original source there. A bind of the engine's shm on
/// /dev/shm becomes a tmpfs in the guest: shared memory between the host
/// and a VM's processes is not something a bind over virtio-fs can give.
/// On error everything staged so far is undone.
pub fn prepare(spec: &Spec, bundle: &Path, volumes_dir: &Path) -> Result<PreparedShares, ShareError> {
    let mut spec = spec.clone();
    let mut staged = Vec::new();
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for mount in mounts.iter_mut() {
        if !is_bind(mount) {
            continue;
        }
        let destination = mount.destination().display().to_string();
        if destination == "/dev/shm" {
            *mount = shm_tmpfs(mount);
            continue;
        }
        let Some(source) = mount.source().clone() else { continue };
        let source = bundle.join(source);
        if !source.exists() {
            unstage(&staged);
            return Err(ShareError::MissingSource { host_path: source, destination });
        }
        let name = match source.file_name() {
            Some(name) => Path::new(name).to_owned(),
            None => PathBuf::from("root"),
        };
        let target = volumes_dir.join(staged.len().to_string()).join(name);
        if let Err(error) = stage(&source, &target, is_read_only(mount)) {
            unstage(&staged);
            return Err(ShareError::Stage { host_path: source, staged: target, error });
        }
        mount.set_source(Some(target.clone()));
        staged.push(StagedVolume { source, staged: target });
    }
    spec.set_mounts(Some(mounts));
    let volumes = (!staged.is_empty()).then(|| VolumeShare {
        tag: VOLUMES_TAG.into(),
        host_path: volumes_dir.display().to_string(),
        read_only: false,
    });
    Ok(PreparedShares { spec, staged, volumes })
}

fn shm_tmpfs(bind: &Mount) -> Mount {
    let mut mount = bind.clone();
    mount.set_typ(Some("tmpfs".into()));
    mount.set_source(Some("shm".into()));
    let mut options = vec!["nosuid".to_string(), "noexec".into(), "nodev".into(), "mode=1777".into()];
    // Keep the engine's size (podman: --shm-size, 64m by default).
    if let Some(size) = bind.options().as_ref().and_then(|o| o.iter().find(|o| o.starts_with("size=")).cloned()) {
        options.push(size);
    } else {
        options.push("size=65536k".into());
    }
    mount.set_options(Some(options));
    mount
}

fn stage(source: &Path, target: &Path, read_only: bool) -> io::Result<()> {
    std::fs::create_dir_all(target.parent().expect("staged under a numbered directory"))?;
    if source.is_dir() {
        std::fs::create_dir(target)?;
    } else {
        std::fs::File::create(target)?;
    }
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (src, dst) = (c(source)?, c(target)?);
    // SAFETY: valid NUL-terminated paths; a recursive bind so volumes with
    // mounts inside keep them.
    let rc = unsafe {
        libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if read_only {
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC;
        // SAFETY: as above; remounting the bind we just made.
        let rc = unsafe { libc::mount(std::ptr::null(), dst.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
        if rc != 0 {
            let err = io::Error::last_os_error();
            detach(target);
            return Err(err);
        }
    }
    Ok(())
}

fn detach(target: &Path) {
    if let Ok(path) = CString::new(target.as_os_str().as_bytes()) {
        // SAFETY: lazy unmount of a path; failure (not mounted) is fine.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Unmounts staged volumes (lazily: the VM may still hold files open) and
/// removes their mount points. Idempotent. The sources are untouched: only
/// the bind mounts and the empty directories or files under them go.
pub fn unstage(staged: &[StagedVolume]) {
    for volume in staged {
        detach(&volume.staged);
        let _ = if volume.staged.is_dir() {
            std::fs::remove_dir(&volume.staged)
        } else {
            std::fs::remove_file(&volume.staged)
        };
        if let Some(parent) = volume.staged.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(source: &str, destination: &str, options: &[&str]) -> Mount {
        serde_json::from_value(serde_json::json!({
            "destination": destination, "type": "bind", "source": source, "options": options,
        }))
        .unwrap()
    }

    #[test]
    fn binds_are_staged_and_read_only_ones_refuse_writes_on_the_host() {
        let base = std::env::temp_dir().join(format!("husk-shares-test-{}", std::process::id()));
        let (vol, file, volumes) = (base.join("vol"), base.join("hosts"), base.join("state/volumes"));
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::write(vol.join("a"), "a").unwrap();
        std::fs::write(&file, "127.0.0.1 localhost\n").unwrap();
        let mut spec = Spec::default();
        // The default spec's own /dev/shm tmpfs makes way for an engine's bind.
        let mut mounts: Vec<Mount> =
            spec.mounts().clone().unwrap().into_iter().filter(|m| m.destination() != Path::new("/dev/shm")).collect();
        mounts.push(bind(vol.to_str().unwrap(), "/data", &["rbind", "rw"]));
        mounts.push(bind(file.to_str().unwrap(), "/etc/hosts", &["rbind", "ro"]));
        mounts.push(bind("/dev/shm", "/dev/shm", &["bind", "size=1000k"]));
        spec.set_mounts(Some(mounts));

        let prepared = prepare(&spec, &base, &volumes).unwrap();
        assert_eq!(prepared.staged.len(), 2);
        let staged_vol = &prepared.staged[0].staged;
        let staged_file = &prepared.staged[1].staged;
        assert_eq!(std::fs::read_to_string(staged_vol.join("a")).unwrap(), "a");
        std::fs::write(staged_vol.join("b"), "b").unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("b")).unwrap(), "b", "writes reach the source");
        let err = std::fs::write(staged_file, "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "a read-only bind is read-only on the host");
        let mounts = prepared.spec.mounts().clone().unwrap();
        let shm = mounts.iter().find(|m| m.destination() == Path::new("/dev/shm")).unwrap();
        assert_eq!(shm.typ().as_deref(), Some("tmpfs"));
        assert!(shm.options().as_ref().unwrap().contains(&"size=1000k".to_string()));
        let data = mounts.iter().find(|m| m.destination() == Path::new("/data")).unwrap();
        assert_eq!(data.source().as_deref(), Some(staged_vol.as_path()));
        assert_eq!(prepared.volumes.unwrap().host_path, volumes.display().to_string());

        unstage(&prepared.staged);
        assert!(!staged_vol.exists() && !staged_file.exists());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "127.0.0.1 localhost\n", "sources are kept");
        assert!(vol.join("a").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn only_a_root_owned_rootfs_lets_the_guests_root_own_files() {
        use std::os::unix::fs::MetadataExt;
        let base = std::env::temp_dir().join(format!("husk-shares-owner-{}", std::process::id()));
        let rootfs = base.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let owned_by_root = std::fs::metadata(&rootfs).unwrap().uid() == 0;
        assert_eq!(rootfs_allows_host_root(&rootfs).unwrap(), owned_by_root);
        if owned_by_root {
            // A rootless engine's rootfs, owned by its user.
            std::os::unix::fs::chown(&rootfs, Some(1000), Some(1000)).unwrap();
            assert!(!rootfs_allows_host_root(&rootfs).unwrap());
            std::os::unix::fs::symlink(&rootfs, base.join("link")).unwrap();
            assert!(!rootfs_allows_host_root(&base.join("link")).unwrap(), "the link's target decides");
        }
        let err = rootfs_allows_host_root(&base.join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");

        let volumes = fs_config(VOLUMES_TAG, &base, false, false);
        assert_eq!((volumes.fs_id.as_str(), volumes.tag.as_str()), (VOLUMES_TAG, VOLUMES_TAG));
        assert_eq!((volumes.allow_host_root, volumes.root_uid, volumes.root_gid), (false, 65534, 65534));
        assert!(volumes.validate().is_ok());
        assert!(fs_config(ROOTFS_TAG, &rootfs, true, true).allow_host_root);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_missing_source_is_refused_and_nothing_stays_staged() {
        let base = std::env::temp_dir().join(format!("husk-shares-missing-{}", std::process::id()));
        let vol = base.join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        let mut spec = Spec::default();
        spec.set_mounts(Some(vec![
            bind(vol.to_str().unwrap(), "/a", &["rbind"]),
            bind("/nonexistent/husk", "/b", &["rbind"]),
        ]));
        let volumes = base.join("volumes");
        assert!(matches!(prepare(&spec, &base, &volumes), Err(ShareError::MissingSource { .. })));
        assert!(!volumes.join("0/vol").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}

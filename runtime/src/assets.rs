//! Where the runtime finds husk-vmm, the guest kernel and the initramfs.
//!
//! Engines call the runtime with a scrubbed environment (the containerd
//! shim passes none of its client's, conmon empties HOME and PATH), so the
//! defaults are found relative to the `husk` binary itself:
//!
//! - `husk-vmm` beside `husk`;
//! - `vmlinux` and `initramfs.cpio` in `<dir of husk>/../husk/` (in a
//!   source tree that is `target/husk/`, where scripts/build.sh puts them),
//!   else in `/usr/local/share/husk/`.
//!
//! `HUSK_VMM`, `HUSK_KERNEL` and `HUSK_INITRAMFS` override each one.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{what} not found (looked at {}); set {env} or run scripts/build.sh", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
pub struct MissingAsset {
    pub what: &'static str,
    pub env: &'static str,
    pub tried: Vec<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Assets {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

impl Assets {
    pub fn locate() -> Result<Self, MissingAsset> {
        let exe = std::env::current_exe().unwrap_or_default();
        let bin_dir = exe.parent().unwrap_or(Path::new("/")).to_owned();
        let share_dirs = [bin_dir.join("../husk"), PathBuf::from("/usr/local/share/husk")];
        Ok(Self {
            vmm: find("husk-vmm", "HUSK_VMM", &[bin_dir.join("husk-vmm")])?,
            kernel: find("the guest kernel", "HUSK_KERNEL", &share_dirs.clone().map(|d| d.join("vmlinux")))?,
            initramfs: find("the guest initramfs", "HUSK_INITRAMFS", &share_dirs.map(|d| d.join("initramfs.cpio")))?,
        })
    }
}

fn find(what: &'static str, env: &'static str, candidates: &[PathBuf]) -> Result<PathBuf, MissingAsset> {
    let tried: Vec<PathBuf> = match std::env::var_os(env) {
        Some(path) => vec![PathBuf::from(path)],
        None => candidates.to_vec(),
    };
    tried
        .iter()
        .find(|path| path.is_file())
        .map(|path| std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()))
        .ok_or(MissingAsset { what, env, tried })
}

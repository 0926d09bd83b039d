//! Where the project's built artifacts are published.

use std::path::{Path, PathBuf};

/// The repository root: `HUSK_REPO_DIR`, else the checkout this crate was
/// built from.
pub fn repo_dir() -> PathBuf {
    match std::env::var_os("HUSK_REPO_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf(),
    }
}

/// `target/husk`: the guest kernel, initramfs and test-host images.
pub fn artifacts_dir() -> PathBuf {
    repo_dir().join("target/husk")
}

/// A published artifact that must exist, with the command that makes it in
/// the error; tests fail with this message rather than skipping.
pub fn artifact(relative: &str) -> Result<PathBuf, String> {
    let path = artifacts_dir().join(relative);
    if path.is_file() || path.is_dir() {
        return Ok(path);
    }
    let maker = match relative.split('/').next() {
        Some("vmlinux" | "bzImage" | "kernel.config") => "kernel-config/build-kernel.sh",
        Some("initramfs.cpio" | "initramfs-test.cpio") => "images/build-initramfs.sh",
        Some("images") => "images/build-busybox-rootfs.sh",
        Some("testhost") => "tests/testhost/build-host-image.sh",
        _ => "scripts/test.sh",
    };
    Err(format!("{} is missing: build it with `{maker}` (scripts/test.sh runs every step)", path.display()))
}

/// The husk-vmm binary the tests run: `HUSK_VMM_BIN`, else the workspace's
/// debug build (scripts/build.sh builds it).
pub fn husk_vmm() -> Result<PathBuf, String> {
    let path = match std::env::var_os("HUSK_VMM_BIN") {
        Some(path) => PathBuf::from(path),
        None => repo_dir().join("target/debug/husk-vmm"),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} is missing: build it with `cargo build -p husk-vmm` (or set HUSK_VMM_BIN)", path.display()))
    }
}

/// The static husk-guest-probe that images/build-initramfs.sh builds for
/// the guest (and puts in the test initramfs).
pub fn guest_probe() -> Result<PathBuf, String> {
    let path = repo_dir().join("target/guest/x86_64-unknown-linux-gnu/guest/husk-guest-probe");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} is missing: build it with `images/build-initramfs.sh`", path.display()))
    }
}

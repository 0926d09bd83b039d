//! What this machine's `/dev/kvm` is, which decides where microVMs can boot.

use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvmFlavour {
    /// kvm_intel or kvm_amd: hardware virtualization; a stock kernel boots.
    Hardware,
    /// kvm-pvm: software virtualization for clouds without VMX/SVM. Small
    /// test guests run; a stock Linux kernel does not boot on it.
    Pvm,
    /// /dev/kvm exists but its provider is not recognised.
    Unknown,
    /// No /dev/kvm at all.
    Absent,
}

impl KvmFlavour {
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/"))
    }

    /// Detects from a root directory, so tests can point at a fake tree.
    pub fn detect_in(root: &Path) -> Self {
        let module = |name: &str| root.join("sys/module").join(name).exists();
        if !root.join("dev/kvm").exists() {
            Self::Absent
        } else if module("kvm_pvm") {
            Self::Pvm
        } else if module("kvm_intel") || module("kvm_amd") {
            Self::Hardware
        } else {
            Self::Unknown
        }
    }

    /// Whether a stock Linux guest boots on this /dev/kvm.
    pub fn boots_linux(self) -> bool {
        self == Self::Hardware
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Hardware => "hardware",
            Self::Pvm => "kvm-pvm",
            Self::Unknown => "unknown",
            Self::Absent => "absent",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root(entries: &[&str]) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!(
            "husk-kvm-{}-{}",
            std::process::id(),
            entries.join("+").replace('/', "_")
        ));
        let _ = std::fs::remove_dir_all(&root);
        for entry in entries {
            let path = root.join(entry);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::create_dir_all(&path).unwrap();
        }
        root
    }

    #[test]
    fn tells_the_flavours_apart() {
        let cases: &[(&[&str], KvmFlavour)] = &[
            (&["dev/kvm", "sys/module/kvm_pvm", "sys/module/kvm"], KvmFlavour::Pvm),
            (&["dev/kvm", "sys/module/kvm_amd", "sys/module/kvm"], KvmFlavour::Hardware),
            (&["dev/kvm", "sys/module/kvm_intel"], KvmFlavour::Hardware),
            (&["dev/kvm", "sys/module/kvm"], KvmFlavour::Unknown),
            (&["sys/module/kvm_amd"], KvmFlavour::Absent),
        ];
        for (entries, want) in cases {
            let root = fake_root(entries);
            assert_eq!(KvmFlavour::detect_in(&root), *want, "{entries:?}");
            std::fs::remove_dir_all(root).unwrap();
        }
        assert!(KvmFlavour::Hardware.boots_linux());
        assert!(!KvmFlavour::Pvm.boots_linux());
    }
}

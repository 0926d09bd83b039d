//! `husk features`: what this runtime supports, in the OCI runtime-spec
//! "features" format (runtime-spec `features.md`), for engines that ask
//! before they build a bundle.
//!
//! Everything listed is what the container gets inside its microVM: the
//! guest agent sets containers up with youki's libcontainer on the guest's
//! own kernel (cgroup v2 only, no LSM), so the lists follow libcontainer
//! and the guest kernel configuration, not the host's.

use std::collections::HashMap;

use husk_api::agent_protocol::PROTOCOL_VERSION;
use oci_spec::runtime::{
    ApparmorBuilder, Arch, Capability, CgroupBuilder, Features, FeaturesBuilder, IDMapBuilder, IntelRdtBuilder,
    LinuxFeatureBuilder, LinuxNamespaceType, LinuxSeccompAction, MemoryPolicyBuilder, MountExtensionsBuilder,
    NetDevicesBuilder, SeccompBuilder, SelinuxBuilder, VERSION,
};

use crate::sizing::{MAX_MEM_MIB, MAX_VCPUS, MEMORY_ANNOTATION, MIN_MEM_MIB, VCPUS_ANNOTATION};

/// The oldest runtime-spec version whose bundles husk runs.
pub const OCI_VERSION_MIN: &str = "1.0.0";

/// Mount options libcontainer 0.7 (the agent's container library) turns
/// into mount flags or `mount_setattr` attributes; any other option goes to
/// the file system as data, which the spec's list does not cover. `idmap`
/// is absent: it needs a user namespace, which husk does not offer.
const MOUNT_OPTIONS: &[&str] = &[
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "private",
    "ratime",
    "rbind",
    "rdev",
    "rdiratime",
    "relatime",
    "remount",
    "rexec",
    "rnoatime",
    "rnodev",
    "rnodiratime",
    "rnoexec",
    "rnorelatime",
    "rnostrictatime",
    "rnosuid",
    "rnosymfollow",
    "ro",
    "rprivate",
    "rrelatime",
    "rro",
    "rrw",
    "rshared",
    "rslave",
    "rstrictatime",
    "rsuid",
    "rsymfollow",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "sync",
    "unbindable",
];

/// Every capability oci-spec knows, in the kernel's numbering (CAP_CHOWN
/// = 0 … CAP_CHECKPOINT_RESTORE = 40); the guest kernel (6.12) has them all.
const CAPABILITIES: [Capability; 41] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::LinuxImmutable,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetAdmin,
    Capability::NetRaw,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::SysModule,
    Capability::SysRawio,
    Capability::SysChroot,
    Capability::SysPtrace,
    Capability::SysPacct,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Mknod,
    Capability::Lease,
    Capability::AuditWrite,
    Capability::AuditControl,
    Capability::Setfcap,
    Capability::MacOverride,
    Capability::MacAdmin,
    Capability::Syslog,
    Capability::WakeAlarm,
    Capability::BlockSuspend,
    Capability::AuditRead,
    Capability::Perfmon,
    Capability::Bpf,
    Capability::CheckpointRestore,
];

/// Seccomp actions the agent can honour. `SCMP_ACT_NOTIFY` is left out: its
/// listener socket (`listenerPath`) is a host path, and the notification
/// fd would be sent from inside the VM, where no such socket exists.
const SECCOMP_ACTIONS: [LinuxSeccompAction; 8] = [
    LinuxSeccompAction::ScmpActAllow,
    LinuxSeccompAction::ScmpActErrno,
    LinuxSeccompAction::ScmpActKill,
    LinuxSeccompAction::ScmpActKillProcess,
    LinuxSeccompAction::ScmpActKillThread,
    LinuxSeccompAction::ScmpActLog,
    LinuxSeccompAction::ScmpActTrace,
    LinuxSeccompAction::ScmpActTrap,
];

const SECCOMP_OPERATORS: &[&str] =
    &["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT", "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"];

/// The filter flags libcontainer passes on to libseccomp.
const SECCOMP_KNOWN_FLAGS: &[&str] = &[
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_LOG",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
];

/// The known flags that work in the guest: WAIT_KILLABLE_RECV needs
/// libseccomp 2.6, and the agent links Debian 12's 2.5.
const SECCOMP_SUPPORTED_FLAGS: &[&str] =
    &["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

/// The capability's spec name (`CAP_…`), as oci-spec serialises it.
fn capability_name(capability: Capability) -> String {
    match serde_json::to_value(capability) {
        Ok(serde_json::Value::String(name)) => name,
        // oci-spec serialises every capability as its renamed string.
        _ => unreachable!("capability {capability:?} does not serialise to a string"),
    }
}

/// The runtime's features document.
pub fn features() -> Features {
    let namespaces = vec![
        LinuxNamespaceType::Cgroup,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Uts,
    ];
    let cgroup = CgroupBuilder::default()
        .v1(false)
        .v2(true)
        .systemd(false)
        .systemd_user(false)
        // The guest kernel has no RDMA controller (nor RDMA devices).
        .rdma(false)
        .build()
        .expect("every field is set");
    let seccomp = SeccompBuilder::default()
        .enabled(true)
        .actions(SECCOMP_ACTIONS.to_vec())
        .operators(strings(SECCOMP_OPERATORS))
        // The guest is x86_64; its kernel runs no 32-bit code (no
        // IA32_EMULATION or X32), but filters naming those ABIs still load.
        .archs(vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32])
        .known_flags(strings(SECCOMP_KNOWN_FLAGS))
        .supported_flags(strings(SECCOMP_SUPPORTED_FLAGS))
        .build()
        .expect("every field is set");
    let linux = LinuxFeatureBuilder::default()
        .namespaces(namespaces)
        .capabilities(CAPABILITIES.iter().map(|c| capability_name(*c)).collect::<Vec<_>>())
        .cgroup(cgroup)
        .seccomp(seccomp)
        .apparmor(ApparmorBuilder::default().enabled(false).build().expect("every field is set"))
        .selinux(SelinuxBuilder::default().enabled(false).build().expect("every field is set"))
        .intel_rdt(IntelRdtBuilder::default().enabled(false).build().expect("every field is set"))
        // The guest kernel is built without NUMA: set_mempolicy(2) is absent.
        .memory_policy(MemoryPolicyBuilder::default().modes(vec![]).flags(vec![]).build().expect("every field is set"))
        .mount_extensions(
            MountExtensionsBuilder::default()
                .idmap(IDMapBuilder::default().enabled(false).build().expect("every field is set"))
                .build()
                .expect("every field is set"),
        )
        // A host interface cannot be moved into a VM's namespace.
        .net_devices(NetDevicesBuilder::default().enabled(false).build().expect("every field is set"))
        .build()
        .expect("every field is set");
    let annotations = HashMap::from([
        ("io.github.husk.version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ("io.github.husk.vmm".to_owned(), "husk-vmm".to_owned()),
        ("io.github.husk.agent.protocol".to_owned(), PROTOCOL_VERSION.to_string()),
        (
            MEMORY_ANNOTATION.to_owned(),
            format!("the microVM's memory in MiB, guest overhead included ({MIN_MEM_MIB} to {MAX_MEM_MIB})"),
        ),
        (VCPUS_ANNOTATION.to_owned(), format!("the microVM's vCPU count (1 to {MAX_VCPUS})")),
    ]);
    FeaturesBuilder::default()
        .oci_version_min(OCI_VERSION_MIN)
        .oci_version_max(VERSION)
        // Hooks would run on the host against a container that lives in a
        // VM; the agent drops them.
        .hooks(Vec::<String>::new())
        .mount_options(strings(MOUNT_OPTIONS))
        .linux(linux)
        .annotations(annotations)
        // The sizing annotations let a bundle size its VM beyond what its
        // cgroup limits ask for: an engine may want to filter them.
        .potentially_unsafe_config_annotations(vec![MEMORY_ANNOTATION.to_owned(), VCPUS_ANNOTATION.to_owned()])
        .build()
        .expect("every field is set")
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use serde_json::Value;

    use super::*;

    fn json() -> Value {
        let text = serde_json::to_string_pretty(&features()).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn string_list(value: &Value) -> Vec<&str> {
        value
            .as_array()
            .unwrap_or_else(|| panic!("{value} is not a list"))
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect()
    }

    fn no_nulls(value: &Value, path: &str) {
        match value {
            Value::Null => panic!("{path} is null: a known feature must not read as unknown"),
            Value::Array(items) => items.iter().for_each(|item| no_nulls(item, path)),
            Value::Object(map) => map.iter().for_each(|(key, value)| no_nulls(value, &format!("{path}.{key}"))),
            _ => {}
        }
    }

    #[test]
    fn the_document_has_the_spec_keys_and_husks_answers() {
        let doc = json();
        no_nulls(&doc, "");
        assert_eq!(doc["ociVersionMin"], "1.0.0");
        assert_eq!(doc["ociVersionMax"], VERSION);
        assert_eq!(doc["hooks"], serde_json::json!([]));
        let linux = &doc["linux"];
        assert_eq!(string_list(&linux["namespaces"]), ["cgroup", "ipc", "mount", "network", "pid", "uts"]);
        assert_eq!(
            linux["cgroup"],
            serde_json::json!({ "v1": false, "v2": true, "systemd": false, "systemdUser": false, "rdma": false })
        );
        assert_eq!(linux["apparmor"]["enabled"], false);
        assert_eq!(linux["selinux"]["enabled"], false);
        let seccomp = &linux["seccomp"];
        assert_eq!(seccomp["enabled"], true);
        assert!(string_list(&seccomp["actions"]).contains(&"SCMP_ACT_ERRNO"));
        assert!(!string_list(&seccomp["actions"]).contains(&"SCMP_ACT_NOTIFY"));
        assert!(string_list(&seccomp["operators"]).contains(&"SCMP_CMP_MASKED_EQ"));
        assert_eq!(string_list(&seccomp["archs"]), ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]);
        let known: HashSet<_> = string_list(&seccomp["knownFlags"]).into_iter().collect();
        assert!(string_list(&seccomp["supportedFlags"]).iter().all(|flag| known.contains(flag)));
        let annotations = doc["annotations"].as_object().unwrap();
        assert_eq!(annotations["io.github.husk.vmm"], "husk-vmm");
        assert!(annotations.contains_key("husk.vcpus") && annotations.contains_key("husk.memory_mib"));
        assert_eq!(string_list(&doc["potentiallyUnsafeConfigAnnotations"]), ["husk.memory_mib", "husk.vcpus"]);
    }

    #[test]
    fn every_capability_is_listed_once_by_its_spec_name() {
        let doc = json();
        let names = string_list(&doc["linux"]["capabilities"]);
        assert_eq!(names.len(), 41);
        assert_eq!(names.iter().collect::<HashSet<_>>().len(), names.len(), "{names:?}");
        assert_eq!((names[0], names[21], names[40]), ("CAP_CHOWN", "CAP_SYS_ADMIN", "CAP_CHECKPOINT_RESTORE"));
        for name in names {
            assert!(name.starts_with("CAP_"), "{name}");
            // Each reads back as the same capability.
            let capability: Capability = serde_json::from_value(Value::from(name)).unwrap();
            assert_eq!(capability_name(capability), name);
        }
    }

    #[test]
    fn mount_options_are_sorted_unique_and_cover_the_default_mounts() {
        let doc = json();
        let options = string_list(&doc["mountOptions"]);
        assert!(options.windows(2).all(|pair| pair[0] < pair[1]), "{options:?}");
        // Everything `husk spec` writes into its mounts is a listed option
        // or file-system data (key=value, newinstance).
        let spec = crate::spec_template::default_spec(false);
        for option in spec.mounts().iter().flatten().flat_map(|m| m.options().iter().flatten()) {
            assert!(options.contains(&option.as_str()) || option.contains('=') || option == "newinstance", "{option}");
        }
    }
}

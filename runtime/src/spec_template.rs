//! `husk spec`: the starting `config.json` for a bundle, as `runc spec`
//! writes it, adjusted only where husk runs containers differently.

use oci_spec::runtime::{
    Capabilities, Capability, LinuxCapabilities, LinuxDeviceCgroup, LinuxIdMappingBuilder, LinuxNamespace,
    LinuxNamespaceType, LinuxResources, Spec, VERSION,
};

/// The hostname in the template (`runc spec` writes "runc").
pub const TEMPLATE_HOSTNAME: &str = "husk";

/// The template spec: `sh` on a terminal in `rootfs`, with runc's default
/// capabilities, mounts, masked and read-only paths, and pid, network, ipc,
/// uts, mount and cgroup namespaces (the guest has cgroup v2 only, where a
/// container sees its own cgroup through its cgroup namespace).
///
/// `rootless`, as `runc spec --rootless`: a user namespace mapping the
/// caller's effective uid and gid to root, no resource limits (an
/// unprivileged caller cannot set them), and devpts without `gid=5` (no
/// such group in the mapping). Unlike runc's, the network namespace stays
/// and `/sys` stays a sysfs mount: runc bind-mounts the host's `/sys`
/// because a user namespace may mount sysfs only in a network namespace it
/// owns, but in husk a bind source must be a host path shared with the VM,
/// and the host's `/sys` is not.
pub fn default_spec(rootless: bool) -> Spec {
    let mut spec = Spec::default();
    spec.set_version(VERSION.to_owned());
    spec.set_hostname(Some(TEMPLATE_HOSTNAME.to_owned()));
    spec.set_annotations(None);

    if let Some(process) = spec.process_mut() {
        process.set_terminal(Some(true));
        let defaults: Capabilities =
            [Capability::AuditWrite, Capability::Kill, Capability::NetBindService].into_iter().collect();
        let mut capabilities = LinuxCapabilities::default();
        capabilities.set_bounding(Some(defaults.clone()));
        capabilities.set_effective(Some(defaults.clone()));
        capabilities.set_permitted(Some(defaults.clone()));
        capabilities.set_ambient(Some(defaults));
        // runc stopped granting inheritable capabilities (CVE-2022-29162):
        // they would survive an exec of a file with inheritable file caps.
        capabilities.set_inheritable(None);
        process.set_capabilities(Some(capabilities));
    }

    if let Some(linux) = spec.linux_mut() {
        let mut deny_all = LinuxDeviceCgroup::default();
        deny_all.set_allow(false);
        deny_all.set_access(Some("rwm".to_owned()));
        let mut resources = LinuxResources::default();
        resources.set_devices(Some(vec![deny_all]));
        linux.set_resources(Some(resources));
        let namespaces = [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Cgroup,
        ];
        linux.set_namespaces(Some(namespaces.into_iter().map(namespace).collect()));
    }

    if rootless {
        make_rootless(&mut spec, effective_ids());
    }
    spec
}

fn namespace(typ: LinuxNamespaceType) -> LinuxNamespace {
    let mut namespace = LinuxNamespace::default();
    namespace.set_typ(typ);
    namespace
}

/// The caller's effective uid and gid.
fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid take no arguments, touch no memory and
    // cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

fn make_rootless(spec: &mut Spec, (uid, gid): (u32, u32)) {
    if let Some(linux) = spec.linux_mut() {
        let mapping = |host_id: u32| {
            let mapping = LinuxIdMappingBuilder::default().container_id(0u32).host_id(host_id).size(1u32).build();
            vec![mapping.expect("every field of an id mapping is set")]
        };
        linux.set_uid_mappings(Some(mapping(uid)));
        linux.set_gid_mappings(Some(mapping(gid)));
        linux.set_resources(None);
        if let Some(namespaces) = linux.namespaces_mut() {
            namespaces.push(namespace(LinuxNamespaceType::User));
        }
    }
    if let Some(mounts) = spec.mounts_mut() {
        for mount in mounts.iter_mut().filter(|m| m.destination().as_os_str() == "/dev/pts") {
            if let Some(options) = mount.options_mut() {
                options.retain(|option| option != "gid=5");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::Path;

    use serde_json::{json, Value};

    use super::*;

    fn namespaces(spec: &Spec) -> Vec<LinuxNamespaceType> {
        spec.linux().as_ref().unwrap().namespaces().iter().flatten().map(|ns| ns.typ()).collect()
    }

    fn mount_options<'a>(spec: &'a Spec, destination: &str) -> &'a [String] {
        let mount = spec.mounts().iter().flatten().find(|m| m.destination() == Path::new(destination)).unwrap();
        mount.options().as_deref().unwrap_or_default()
    }

    #[test]
    fn the_template_matches_runc_spec() {
        let spec = default_spec(false);
        let doc = serde_json::to_value(&spec).unwrap();
        assert_eq!(doc["ociVersion"], VERSION);
        assert_eq!(doc["root"], json!({ "path": "rootfs", "readonly": true }));
        assert_eq!(doc["hostname"], "husk");
        assert!(doc.get("annotations").is_none_or(Value::is_null), "{}", doc["annotations"]);
        let process = &doc["process"];
        assert_eq!(process["terminal"], true);
        assert_eq!(process["args"], json!(["sh"]));
        assert_eq!(process["cwd"], "/");
        assert_eq!(process["user"], json!({ "uid": 0, "gid": 0 }));
        assert_eq!(
            process["env"],
            json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"])
        );
        assert_eq!(process["noNewPrivileges"], true);
        assert_eq!(process["rlimits"], json!([{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }]));
        let defaults: HashSet<&str> = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"].into();
        let capabilities = process["capabilities"].as_object().unwrap();
        assert!(capabilities.get("inheritable").is_none_or(Value::is_null));
        for set in ["bounding", "effective", "permitted", "ambient"] {
            let listed: HashSet<&str> =
                capabilities[set].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
            assert_eq!(listed, defaults, "{set}");
        }

        let destinations: Vec<_> =
            spec.mounts().iter().flatten().map(|m| m.destination().display().to_string()).collect();
        assert_eq!(destinations, ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]);
        assert!(mount_options(&spec, "/dev/pts").contains(&"gid=5".to_owned()));
        assert_eq!(mount_options(&spec, "/sys"), ["nosuid", "noexec", "nodev", "ro"]);

        let linux = &doc["linux"];
        assert_eq!(linux["resources"], json!({ "devices": [{ "allow": false, "access": "rwm" }] }));
        assert_eq!(
            namespaces(&spec),
            [
                LinuxNamespaceType::Pid,
                LinuxNamespaceType::Network,
                LinuxNamespaceType::Ipc,
                LinuxNamespaceType::Uts,
                LinuxNamespaceType::Mount,
                LinuxNamespaceType::Cgroup,
            ]
        );
        assert!(linux.get("uidMappings").is_none_or(Value::is_null));
        assert_eq!(linux["maskedPaths"].as_array().unwrap().len(), 10);
        assert!(linux["maskedPaths"].as_array().unwrap().contains(&json!("/proc/kcore")));
        assert_eq!(
            linux["readonlyPaths"],
            json!(["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"])
        );
    }

    #[test]
    fn the_template_survives_a_round_trip_through_config_json() {
        let spec = default_spec(false);
        let text = serde_json::to_string_pretty(&spec).unwrap();
        let back: Spec = serde_json::from_str(&text).unwrap();
        assert_eq!(back, spec);
    }

    #[test]
    fn rootless_maps_the_caller_into_a_user_namespace() {
        let mut spec = default_spec(false);
        make_rootless(&mut spec, (1234, 5678));
        let linux = spec.linux().as_ref().unwrap();
        let uid = linux.uid_mappings().as_ref().unwrap();
        let gid = linux.gid_mappings().as_ref().unwrap();
        assert_eq!((uid.len(), uid[0].container_id(), uid[0].host_id(), uid[0].size()), (1, 0, 1234, 1));
        assert_eq!((gid.len(), gid[0].container_id(), gid[0].host_id(), gid[0].size()), (1, 0, 5678, 1));
        assert!(linux.resources().is_none());
        let types = namespaces(&spec);
        assert!(types.contains(&LinuxNamespaceType::User) && types.contains(&LinuxNamespaceType::Network));
        assert!(!mount_options(&spec, "/dev/pts").contains(&"gid=5".to_owned()));
        let sys = spec.mounts().iter().flatten().find(|m| m.destination() == Path::new("/sys")).unwrap();
        assert_eq!(sys.typ().as_deref(), Some("sysfs"));

        // The public entry point maps whoever runs the test.
        let spec = default_spec(true);
        let (uid, _) = effective_ids();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.uid_mappings().as_ref().unwrap()[0].host_id(), uid);
        assert!(namespaces(&spec).contains(&LinuxNamespaceType::User));
    }
}

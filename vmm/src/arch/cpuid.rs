//! Each vCPU's CPUID: KVM's supported set, with the topology a vCPU must
//! report about itself (APIC ID, thread and core counts) and the hypervisor
//! bit set.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Features KVM emulates but leaves out of KVM_GET_SUPPORTED_CPUID, to be
/// advertised when it reports the matching capability.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtraFeatures {
    /// KVM_CAP_TSC_DEADLINE_TIMER: the LAPIC timer can be armed with one
    /// MSR write instead of MMIO register accesses.
    pub tsc_deadline_timer: bool,
}

/// How the vCPUs are arranged: one socket of `vcpu_count` logical CPUs,
/// two threads per core when SMT is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Topology {
    pub vcpu_count: u8,
    pub threads_per_core: u8,
}

impl Topology {
    pub fn new(vcpu_count: u8, smt: bool) -> Self {
        Self { vcpu_count, threads_per_core: if smt && vcpu_count > 1 { 2 } else { 1 } }
    }

    fn cores(&self) -> u8 {
        self.vcpu_count / self.threads_per_core
    }
}

/// Bits needed to number `count` things (x86 topology "shift" widths).
fn bits_for(count: u8) -> u32 {
    (u32::from(count.max(1))).next_power_of_two().trailing_zeros()
}

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC_ID: u32 = 0x8000_001e;

const ECX_TSC_DEADLINE: u32 = 1 << 24;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Returns vCPU `id`'s CPUID table, derived from KVM's supported `base`.
pub fn vcpu_cpuid(base: &CpuId, id: u8, topology: Topology, extra: ExtraFeatures) -> CpuId {
    let mut cpuid = base.clone();
    // KVM may list only the extended topology leaves' first sub-leaf (it
    // does on AMD hosts); a guest walking them needs the SMT and core levels
    // and a terminating invalid level.
    for leaf in [LEAF_EXT_TOPOLOGY, LEAF_EXT_TOPOLOGY_V2] {
        let present: Vec<u32> = cpuid.as_slice().iter().filter(|e| e.function == leaf).map(|e| e.index).collect();
        if present.is_empty() {
            continue;
        }
        for index in (0..=2).filter(|i| !present.contains(i)) {
            let entry = kvm_cpuid_entry2 {
                function: leaf,
                index,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            };
            if cpuid.push(entry).is_err() {
                tracing::warn!("no room to add CPUID leaf {leaf:#x} sub-leaf {index}");
            }
        }
    }
    for entry in cpuid.as_mut_slice() {
        fix_entry(entry, id, topology, extra);
    }
    cpuid
}

fn fix_entry(entry: &mut kvm_cpuid_entry2, id: u8, topology: Topology, extra: ExtraFeatures) {
    let thread_bits = bits_for(topology.threads_per_core);
    let all_bits = bits_for(topology.vcpu_count);
    match entry.function {
        LEAF_FEATURES => {
            // EBX: initial APIC ID (31:24), logical CPUs per package (23:16),
            // CLFLUSH line size in 8-byte units (15:8).
            entry.ebx = (u32::from(id) << 24) | (u32::from(topology.vcpu_count) << 16) | (8 << 8) | (entry.ebx & 0xff);
            entry.ecx |= ECX_HYPERVISOR;
            if extra.tsc_deadline_timer {
                entry.ecx |= ECX_TSC_DEADLINE;
            }
            if topology.vcpu_count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // EAX 31:26: cores per package - 1; 25:14: logical CPUs sharing
            // this cache - 1 (L1/L2 per core, L3 per package).
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 { topology.vcpu_count } else { topology.threads_per_core };
            entry.eax &= 0x3fff;
            entry.eax |= (u32::from(topology.cores()) - 1) << 26;
            if entry.eax & 0x1f != 0 {
                entry.eax |= (u32::from(sharing) - 1) << 14;
            }
        }
        LEAF_EXT_TOPOLOGY | LEAF_EXT_TOPOLOGY_V2 => {
            entry.edx = u32::from(id);
            match entry.index {
                // SMT level.
                0 => {
                    entry.eax = thread_bits;
                    entry.ebx = u32::from(topology.threads_per_core);
                    entry.ecx = 1 << 8;
                }
                // Core level: everything in the package.
                1 => {
                    entry.eax = all_bits;
                    entry.ebx = u32::from(topology.vcpu_count);
                    entry.ecx = (2 << 8) | 1;
                }
                index => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = index;
                }
            }
        }
        LEAF_AMD_SIZE_IDS => {
            // ECX 15:12: APIC ID bits; 7:0: logical CPUs in the package - 1.
            entry.ecx = (all_bits << 12) | (u32::from(topology.vcpu_count) - 1);
        }
        LEAF_AMD_EXT_APIC_ID => {
            entry.eax = u32::from(id);
            entry.ebx = ((u32::from(topology.threads_per_core) - 1) << 8) | (u32::from(id) >> thread_bits);
            entry.ecx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> CpuId {
        let entries = [
            kvm_cpuid_entry2 { function: LEAF_FEATURES, ebx: 0x0012_34ff, ..Default::default() },
            kvm_cpuid_entry2 { function: LEAF_EXT_TOPOLOGY, index: 0, ..Default::default() },
            kvm_cpuid_entry2 { function: LEAF_EXT_TOPOLOGY, index: 1, ..Default::default() },
            kvm_cpuid_entry2 { function: LEAF_EXT_TOPOLOGY, index: 2, ..Default::default() },
            kvm_cpuid_entry2 { function: LEAF_CACHE_PARAMS, eax: (3 << 5) | 3, ..Default::default() },
            kvm_cpuid_entry2 { function: LEAF_AMD_SIZE_IDS, ..Default::default() },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid.as_slice().iter().find(|e| e.function == function && e.index == index).unwrap()
    }

    #[test]
    fn each_vcpu_reports_its_own_apic_id_and_the_package_size() {
        let topology = Topology::new(4, false);
        for id in 0..4 {
            let cpuid = vcpu_cpuid(&base(), id, topology, ExtraFeatures::default());
            let leaf1 = find(&cpuid, LEAF_FEATURES, 0);
            assert_eq!(leaf1.ebx >> 24, u32::from(id));
            assert_eq!((leaf1.ebx >> 16) & 0xff, 4);
            assert_eq!(leaf1.ebx & 0xff, 0xff, "brand index kept");
            assert_ne!(leaf1.ecx & ECX_HYPERVISOR, 0);
            assert_ne!(leaf1.edx & EDX_HTT, 0);
            assert_eq!(find(&cpuid, LEAF_EXT_TOPOLOGY, 1).edx, u32::from(id));
        }
    }

    #[test]
    fn extended_topology_levels_follow_smt() {
        let cpuid = vcpu_cpuid(&base(), 3, Topology::new(4, true), ExtraFeatures { tsc_deadline_timer: true });
        assert_ne!(find(&cpuid, LEAF_FEATURES, 0).ecx & ECX_TSC_DEADLINE, 0);
        let smt = find(&cpuid, LEAF_EXT_TOPOLOGY, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx), (1, 2, 1 << 8));
        let core = find(&cpuid, LEAF_EXT_TOPOLOGY, 1);
        assert_eq!((core.eax, core.ebx, core.ecx), (2, 4, (2 << 8) | 1));
        let end = find(&cpuid, LEAF_EXT_TOPOLOGY, 2);
        assert_eq!((end.eax, end.ebx, end.ecx), (0, 0, 2));
        let l3 = find(&cpuid, LEAF_CACHE_PARAMS, 0);
        assert_eq!(l3.eax >> 26, 1, "two cores");
        assert_eq!((l3.eax >> 14) & 0xfff, 3, "L3 shared by all four");
        assert_eq!(find(&cpuid, LEAF_AMD_SIZE_IDS, 0).ecx & 0xff, 3);
    }

    #[test]
    fn missing_topology_sub_leaves_are_added() {
        let entries = [kvm_cpuid_entry2 { function: LEAF_EXT_TOPOLOGY, index: 0, ebx: 1, ..Default::default() }];
        let cpuid =
            vcpu_cpuid(&CpuId::from_entries(&entries).unwrap(), 1, Topology::new(2, false), ExtraFeatures::default());
        let core = find(&cpuid, LEAF_EXT_TOPOLOGY, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (1, 2, (2 << 8) | 1, 1));
        assert_eq!(find(&cpuid, LEAF_EXT_TOPOLOGY, 2).ecx, 2, "an invalid level ends the walk");
        assert!(cpuid.as_slice().iter().all(|e| e.function != LEAF_EXT_TOPOLOGY_V2), "absent leaves stay absent");
    }

    #[test]
    fn a_single_vcpu_has_no_htt() {
        let cpuid = vcpu_cpuid(&base(), 0, Topology::new(1, true), ExtraFeatures::default());
        assert_eq!(find(&cpuid, LEAF_FEATURES, 0).edx & EDX_HTT, 0);
        assert_eq!(find(&cpuid, LEAF_FEATURES, 0).ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(Topology::new(1, true).threads_per_core, 1);
    }
}

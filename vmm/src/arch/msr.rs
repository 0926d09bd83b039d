//! The model-specific registers a Linux guest expects to find initialised.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::VcpuFd;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// Fast string operations enabled, as firmware leaves them.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled with write-back as the default memory type: without it the
/// guest would run all of RAM uncached.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// The TSC is deliberately not written: KVM keeps the vCPUs' TSCs in sync
/// when it sets them itself, and a write per vCPU at different moments
/// makes the guest mark its TSC unstable.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry { index, data, ..Default::default() })
    .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    #[error("KVM_SET_MSRS: {0}")]
    Kvm(#[from] kvm_ioctls::Error),
    #[error("building the MSR list: {0:?}")]
    Fam(vmm_sys_util::fam::Error),
    #[error("KVM accepted only {set} of the boot MSRs; it refused MSR {index:#x}")]
    Refused { set: usize, index: u32 },
}

pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), MsrError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(MsrError::Fam)?;
    let set = vcpu.set_msrs(&msrs)?;
    if set != entries.len() {
        return Err(MsrError::Refused { set, index: entries[set].index });
    }
    Ok(())
}

//! General, segment and FPU registers of the boot vCPU for each entry
//! protocol.

use kvm_bindings::{kvm_fpu, kvm_regs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::gdt::{gdt_entry, segment, CODE32, CODE64, DATA, TSS};
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// The 64-bit Linux boot protocol: long mode with identity paging,
    /// `rsi` pointing at the zero page.
    Linux64 { entry: GuestAddress, zero_page: GuestAddress },
    /// The PVH protocol: 32-bit protected mode without paging, `rbx`
    /// pointing at the `hvm_start_info`.
    Pvh { entry: GuestAddress, start_info: GuestAddress },
}

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing the boot GDT/IDT/page tables to guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    #[error("{what}: {source}")]
    Kvm { what: &'static str, source: kvm_ioctls::Error },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    // The x87 and SSE control words a CPU has after FNINIT/reset.
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))
}

pub fn setup_regs(vcpu: &VcpuFd, entry: EntryPoint) -> Result<(), RegsError> {
    let regs = match entry {
        EntryPoint::Linux64 { entry, zero_page } => kvm_regs {
            // Bit 1 of RFLAGS is reserved and always set.
            rflags: 0x2,
            rip: entry.0,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: zero_page.0,
            ..Default::default()
        },
        EntryPoint::Pvh { entry, start_info } => {
            kvm_regs { rflags: 0x2, rip: entry.0, rbx: start_info.0, ..Default::default() }
        }
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))
}

pub fn setup_sregs<M: GuestMemory>(mem: &M, vcpu: &VcpuFd, entry: EntryPoint) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let code = match entry {
        EntryPoint::Linux64 { .. } => CODE64,
        EntryPoint::Pvh { .. } => CODE32,
    };
    let gdt =
        [gdt_entry(0, 0, 0), gdt_entry(code, 0, 0xfffff), gdt_entry(DATA, 0, 0xfffff), gdt_entry(TSS, 0, 0xfffff)];
    for (i, entry) in gdt.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + i as u64 * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let data = segment(gdt[2], 2);
    sregs.cs = segment(gdt[1], 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[3], 3);

    match entry {
        EntryPoint::Linux64 { .. } => {
            setup_identity_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryPoint::Pvh { .. } => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))
}

/// Identity-maps the first 1 GiB with 2 MiB pages: enough for the kernel to
/// reach its own page tables.
fn setup_identity_page_tables<M: GuestMemory>(mem: &M) -> Result<(), RegsError> {
    const PRESENT_WRITABLE: u64 = 0x3;
    const HUGE: u64 = 0x80;
    mem.write_obj(PDPTE_START | PRESENT_WRITABLE, GuestAddress(PML4_START))?;
    mem.write_obj(PDE_START | PRESENT_WRITABLE, GuestAddress(PDPTE_START))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | HUGE | PRESENT_WRITABLE, GuestAddress(PDE_START + i * 8))?;
    }
    Ok(())
}

//! Where things live in guest physical memory.
//!
//! ```text
//! 0x0000_0500  GDT                 0x0000_9000  PML4 / 0xa000 PDPT / 0xb000 PD
//! 0x0000_0520  IDT                 0x0002_0000  kernel command line
//! 0x0000_6000  PVH start info      0x0009_fc00  MP table (EBDA), to 640 KiB
//! 0x0000_6040  PVH module list     0x0010_0000  kernel (HIMEM_START)
//! 0x0000_7000  zero page / PVH     ...          RAM, initrd at its top
//!              memory map          0xd000_0000  MMIO gap: guest-signal register,
//! 0x0000_8ff0  boot stack                       then devices; IOAPIC, LAPIC
//!                                  0x1_0000_0000 RAM above the gap
//! ```

use vm_memory::GuestAddress;

/// The first 1 MiB: real-mode area, BIOS data, EBDA, legacy video/ROM.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the Extended BIOS Data Area, where the MP table goes.
pub const EBDA_START: u64 = 0x9_fc00;
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
pub const PVH_MEMMAP_START: u64 = 0x7000;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x2_0000;
/// x86 Linux's COMMAND_LINE_SIZE.
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// The 768 MiB below 4 GiB that hold no RAM: device MMIO, IOAPIC, LAPIC.
/// Starts with the guest-signal register (husk_api::guest_signal).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS and one for the identity map on
/// Intel; they sit at the top of the gap, above the LAPIC, where a PC has
/// its BIOS ROM.
pub const KVM_TSS_START: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_START: u64 = 0xfffb_c000;

/// IRQ lines (GSIs) of the legacy devices.
pub const I8042_IRQ: u32 = 1;
pub const SERIAL_IRQ: u32 = 4;

/// The RAM regions for `mem_size` bytes of guest memory: below the MMIO
/// gap, and the rest above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (mem_size - MMIO_GAP_START) as usize),
        ]
    }
}

/// An E820 range type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

/// The memory map the guest is told about: usable RAM, with the legacy
/// hole between the EBDA and 1 MiB left out, plus the reserved MP table area.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, E820Kind)> {
    let mut map = vec![(0, EBDA_START, E820Kind::Ram), (EBDA_START, 0xa_0000 - EBDA_START, E820Kind::Reserved)];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push((HIMEM_START, low_end - HIMEM_START, E820Kind::Ram));
    }
    if mem_size > MMIO_GAP_START {
        map.push((MMIO_GAP_END, mem_size - MMIO_GAP_START, E820Kind::Ram));
    }
    map
}

/// The highest RAM address below the MMIO gap: the initrd goes under it.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_region_below_the_gap() {
        assert_eq!(ram_regions(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let map = e820_map(128 << 20);
        assert_eq!(map.last(), Some(&(HIMEM_START, (128 << 20) - HIMEM_START, E820Kind::Ram)));
    }

    #[test]
    fn large_memory_continues_above_4g() {
        let size = 4u64 << 30;
        let regions = ram_regions(size);
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(regions[1], (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize));
        let total: u64 = regions.iter().map(|r| r.1 as u64).sum();
        assert_eq!(total, size);
        assert_eq!(e820_map(size).last(), Some(&(MMIO_GAP_END, size - MMIO_GAP_START, E820Kind::Ram)));
    }

    #[test]
    fn the_gap_starts_at_the_guest_signal_register() {
        assert_eq!(MMIO_GAP_START, husk_api::guest_signal::GUEST_SIGNAL_MMIO_BASE);
        const { assert!(KVM_IDENTITY_MAP_START >= LAPIC_START + 0x1000) };
        const { assert!(KVM_IDENTITY_MAP_START + 0x1000 <= KVM_TSS_START) };
        const { assert!(KVM_TSS_START + 3 * 0x1000 <= MMIO_GAP_END) };
        const { assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START) };
    }
}

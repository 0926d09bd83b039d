//! The Intel MultiProcessor Specification table, through which a guest
//! without ACPI learns about its CPUs, the IOAPIC and how the legacy IRQs are
//! wired. Built in the EBDA, where Linux scans for it.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{EBDA_START, IOAPIC_START, LAPIC_START};

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_PINS: u8 = 24;
const ISA_BUS_ID: u8 = 0;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

/// The floating pointer structure is 16 bytes; the table follows it.
const FLOATING_POINTER_LEN: usize = 16;
/// What the EBDA offers before the 640 KiB line.
const EBDA_SIZE: usize = 0xa_0000 - EBDA_START as usize;

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("an MP table for {0} vCPUs does not fit in the EBDA")]
    TooLarge(u8),
    #[error("writing the MP table: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_sub(*b))
}

/// Builds the floating pointer and the configuration table, as they are to
/// be placed at `EBDA_START`.
pub fn build(vcpu_count: u8) -> Result<Vec<u8>, MpTableError> {
    let table_addr = EBDA_START as u32 + FLOATING_POINTER_LEN as u32;
    let ioapic_id = vcpu_count;

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpu_count {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        // Signature (family 6), feature flags (FPU and APIC present).
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, CPU_ENABLED]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    // Legacy IRQ n drives IOAPIC pin n: how KVM's default GSI routing wires them.
    for irq in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, ISA_BUS_ID, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 takes the PIC's interrupts, LINT1 NMIs, on every local APIC.
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, kind, 0, 0, ISA_BUS_ID, 0, 0xff, lint]);
        count += 1;
    }

    let mut table: Vec<u8> = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"HUSK    ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // no extended table
    table.push(0);
    table.push(0);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating: Vec<u8> = Vec::with_capacity(FLOATING_POINTER_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_addr.to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(4); // spec revision
    floating.push(0); // checksum, below
    floating.extend_from_slice(&[0; 5]); // feature bytes: the table is present
    floating[10] = checksum(&floating);

    let mut out = floating;
    out.extend_from_slice(&table);
    if out.len() > EBDA_SIZE {
        return Err(MpTableError::TooLarge(vcpu_count));
    }
    Ok(out)
}

pub fn setup<M: GuestMemory>(mem: &M, vcpu_count: u8) -> Result<(), MpTableError> {
    mem.write_slice(&build(vcpu_count)?, GuestAddress(EBDA_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
    }

    #[test]
    fn checksums_and_pointers_are_consistent() {
        for vcpus in [1u8, 2, 32] {
            let bytes = build(vcpus).unwrap();
            assert_eq!(&bytes[..4], b"_MP_");
            assert!(sums_to_zero(&bytes[..16]));
            let table_addr = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as u64;
            let table = &bytes[(table_addr - EBDA_START) as usize..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert!(sums_to_zero(table));
            let count = u16::from_le_bytes([table[34], table[35]]) as usize;
            // CPUs, bus, IOAPIC, 24 IRQs, 2 local interrupts.
            assert_eq!(count, vcpus as usize + 1 + 1 + 24 + 2);
            let cpus = table[44..].chunks(20).take(vcpus as usize).collect::<Vec<_>>();
            assert_eq!(cpus[0][3], CPU_ENABLED | CPU_BOOTSTRAP);
            assert!(cpus.iter().enumerate().all(|(i, c)| c[0] == ENTRY_PROCESSOR && c[1] == i as u8));
        }
    }

    #[test]
    fn fits_the_ebda_for_the_largest_vm() {
        assert!(build(32).unwrap().len() <= EBDA_SIZE);
    }
}

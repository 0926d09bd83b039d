//! The boot GDT and the segment registers derived from it.

use kvm_bindings::kvm_segment;

/// Flags of a 64-bit code segment (L set, D clear).
pub const CODE64: u16 = 0xa09b;
/// Flags of a 32-bit flat code segment (D set), for the PVH entry.
pub const CODE32: u16 = 0xc09b;
/// Flags of a flat writable data segment.
pub const DATA: u16 = 0xc093;
/// Flags of a 64-bit busy TSS.
pub const TSS: u16 = 0x808b;

/// Packs a GDT entry from its flags, base and limit, in the CPU's layout.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let limit = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff)) as u32;
    // With the granularity bit, the limit counts 4 KiB pages.
    if entry & (1 << 55) != 0 {
        (limit << 12) | 0xfff
    } else {
        limit
    }
}

/// The segment register KVM should load for GDT entry `index`.
pub fn segment(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        padding: 0,
        unusable: if bit(47) == 0 { 1 } else { 0 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_segment_is_long_mode_flat() {
        let entry = gdt_entry(CODE64, 0, 0xfffff);
        let seg = segment(entry, 1);
        assert_eq!(seg.selector, 8);
        assert_eq!((seg.l, seg.db, seg.present, seg.s, seg.g), (1, 0, 1, 1, 1));
        assert_eq!(seg.type_, 0xb);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.base, 0);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let entry = gdt_entry(DATA & !0x8000, 0x1234_5678, 0xabcde);
        let seg = segment(entry, 2);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcde);
        assert_eq!(seg.unusable, 0);
        assert_eq!(segment(0, 0).unusable, 1);
    }
}

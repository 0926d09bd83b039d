//! The local APIC's LINT0/LINT1 wiring, as a PC's firmware leaves it.

use kvm_ioctls::VcpuFd;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

fn get(regs: &[std::os::raw::c_char], offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn set(regs: &mut [std::os::raw::c_char], offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        regs[offset + i] = byte as std::os::raw::c_char;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 delivers the 8259 PIC's interrupts (ExtINT), LINT1 delivers NMIs.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut lapic = vcpu.get_lapic()?;
    let lvt0 = get(&lapic.regs, APIC_LVT0);
    set(&mut lapic.regs, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = get(&lapic.regs, APIC_LVT1);
    set(&mut lapic.regs, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
    vcpu.set_lapic(&lapic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_mode_replaces_only_bits_8_to_10() {
        assert_eq!(with_delivery_mode(0x0001_0000, APIC_MODE_EXTINT), 0x0001_0700);
        assert_eq!(with_delivery_mode(0xffff_ffff, APIC_MODE_NMI), 0xffff_fcff);
        let mut regs = [0 as std::os::raw::c_char; 1024];
        set(&mut regs, APIC_LVT1, 0xdead_beef);
        assert_eq!(get(&regs, APIC_LVT1), 0xdead_beef);
    }
}

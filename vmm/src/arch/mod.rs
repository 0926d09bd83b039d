//! x86_64 specifics: the guest physical memory layout, and the CPU and
//! firmware-table state a Linux guest expects at its entry point.

pub mod cpuid;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;

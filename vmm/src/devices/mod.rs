//! Emulated devices: plain structs behind the narrow [`BusDevice`] trait,
//! placed on the port-I/O or MMIO bus at fixed addresses.

pub mod bus;
pub mod guest_signal;
pub mod i8042;
pub mod serial;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};

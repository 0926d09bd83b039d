//! The virtio-mmio transport's registers, as the guest's vCPUs reach them,
//! in front of a real device (net, vsock or fs): feature negotiation,
//! queue setup, activation, resets and configuration space accesses in
//! any order, with the device's event loop running in between.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use husk_api::devices::{FsConfig, VsockConfig};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempdir::TempDir;

use super::driver::{fill, guest_memory};
use super::Input;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};

/// Where the device-specific configuration space starts.
const CONFIG_SPACE: u64 = 0x100;

fn drive<D: VirtioDevice + MutEventSubscriber + 'static>(device: D, input: &mut Input) {
    let mem = guest_memory();
    let device = Arc::new(Mutex::new(device));
    let mut events = EventManager::<Arc<Mutex<D>>>::new().expect("event manager");
    events.add_subscriber(device.clone());
    let interrupt = Arc::new(VirtioInterrupt::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")));
    let mut transport = MmioTransport::new(mem.clone(), device, interrupt).expect("transport");
    while !input.is_empty() {
        match input.u8() % 6 {
            0 | 1 => {
                let offset = u64::from(input.u8() % 0x40) * 4;
                let value = match input.u8() % 4 {
                    0 => u32::from(input.u8()),
                    1 => 1 << (input.u8() % 32),
                    _ => input.u32(),
                };
                transport.write(offset, &value.to_le_bytes());
            }
            2 => {
                let mut value = [0u8; 4];
                transport.read(u64::from(input.u8() % 0x40) * 4, &mut value);
            }
            3 => {
                // Any width, anywhere, the configuration space included.
                let offset = if input.bool() { CONFIG_SPACE + u64::from(input.u8()) } else { u64::from(input.u16()) };
                let width = [1, 2, 4, 8, 3][usize::from(input.u8() % 5)];
                if input.bool() {
                    let data = input.bytes(width);
                    transport.write(offset, data);
                } else {
                    let mut data = vec![0u8; width];
                    transport.read(offset, &mut data);
                }
            }
            4 => {
                // The driver lays out rings and buffers.
                let addr = u64::from(input.u32() % 0x31_0000);
                fill(&mem, addr, input.data(1024));
            }
            _ => {
                for _ in 0..1000 {
                    if events.run_with_timeout(0).expect("event loop") == 0 {
                        break;
                    }
                }
            }
        }
    }
}

pub fn virtio_mmio(data: &[u8]) {
    let mut input = Input::new(data);
    let dir = TempDir::new_with_prefix("/tmp/husk-fuzz-mmio-").expect("temporary directory");
    let path = dir.as_path().to_str().expect("UTF-8 temporary path").to_owned();
    match input.u8() % 3 {
        0 => {
            let (_host, backend) = super::net::seqpacket_pair();
            drive(super::net::device(backend), &mut input);
        }
        1 => {
            let config = VsockConfig { vsock_id: None, guest_cid: 3, uds_path: format!("{path}/v.sock") };
            drive(Vsock::new(&config).expect("vsock device"), &mut input);
        }
        _ => {
            let config: FsConfig = serde_json::from_value(serde_json::json!({
                "fs_id": "fuzz",
                "tag": "fuzz",
                "shared_dir": path,
            }))
            .expect("fs configuration");
            drive(Fs::new(&config).expect("fs device"), &mut input);
        }
    }
}

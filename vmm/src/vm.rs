//! Building and starting a microVM: the KVM VM with its interrupt
//! controllers, guest memory, the loaded guest, the legacy devices on their
//! buses, and one thread per vCPU.

use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use husk_api::guest_signal::{GUEST_SIGNAL_MMIO_BASE, GUEST_SIGNAL_MMIO_SIZE};
use husk_api::vmm::{BootSourceConfig, MachineConfig};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::cpuid::{vcpu_cpuid, ExtraFeatures, Topology};
use crate::arch::layout::{ram_regions, I8042_IRQ, KVM_IDENTITY_MAP_START, KVM_TSS_START, SERIAL_IRQ};
use crate::arch::regs::EntryPoint;
use crate::arch::{lapic, mptable, msr, regs};
use crate::boot::{build_cmdline, load_guest};
use crate::devices::guest_signal::GuestSignalDevice;
use crate::devices::i8042::{I8042Device, I8042_BASE, I8042_LEN};
use crate::devices::serial::{SerialDevice, SerialOut, COM1_BASE, COM1_LEN};
use crate::devices::virtio::mmio::{MmioTransport, ShmLayout, MMIO_SLOT_SIZE, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::shm::ShmMapping;
use crate::devices::virtio::{VirtioDevice, VirtioInterrupt};
use crate::devices::Bus;
use crate::seccomp::SeccompFilters;
use crate::vcpu::{Vcpu, VcpuControl};
use crate::vm_exit::ExitSignal;

/// The command line when `boot_args` is not given: a serial console,
/// reset through the i8042 on reboot, and no probing of PS/2 hardware the
/// microVM does not have.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// The first virtio device's register page, right after the guest-signal
/// register; each further device takes the next page.
pub const VIRTIO_MMIO_START: u64 = GUEST_SIGNAL_MMIO_BASE + GUEST_SIGNAL_MMIO_SIZE;
/// The first virtio device's GSI; each further device takes the next line
/// (up to the IOAPIC's 23).
pub const VIRTIO_FIRST_IRQ: u32 = 5;
pub const MAX_VIRTIO_DEVICES: usize = 23 - VIRTIO_FIRST_IRQ as usize + 1;

/// Devices' shared memory regions (the virtio-fs DAX window) start at a
/// multiple of this, above all RAM and above 4 GiB: never in RAM, never in
/// the MMIO gap below 4 GiB.
pub const SHM_REGION_ALIGN: u64 = 1 << 30;
const FOUR_GIB: u64 = 1 << 32;

/// Where shared memory regions of `sizes` bytes go, one after the other,
/// each at the next [`SHM_REGION_ALIGN`]ed address from `ram_end` (the
/// first address after RAM) or 4 GiB, whichever is higher.
pub fn shm_region_bases(ram_end: u64, sizes: &[u64]) -> Option<Vec<u64>> {
    let align = |addr: u64| addr.checked_next_multiple_of(SHM_REGION_ALIGN);
    let mut next = align(ram_end.max(FOUR_GIB))?;
    sizes
        .iter()
        .map(|&size| {
            let base = next;
            next = align(base.checked_add(size)?)?;
            Some(base)
        })
        .collect()
}

/// A virtio device to attach: the same object seen by the transport (on
/// vCPU threads) and by the event loop (where its queues are processed).
pub struct VirtioDeviceHandle {
    pub device: Arc<Mutex<dyn VirtioDevice>>,
    pub subscriber: Arc<Mutex<dyn event_manager::MutEventSubscriber + Send>>,
}

impl VirtioDeviceHandle {
    pub fn new<D: VirtioDevice + event_manager::MutEventSubscriber + Send + 'static>(device: D) -> Self {
        let shared = Arc::new(Mutex::new(device));
        Self { device: shared.clone(), subscriber: shared }
    }
}

/// Options that are the VMM process's, not the VM's API configuration.
#[derive(Clone, Debug)]
pub struct VmOptions {
    pub boot_timer: bool,
    pub serial_out: SerialOut,
    /// Back guest memory with a memfd (shareable, snapshot-able) instead of
    /// anonymous memory.
    pub memfd: bool,
    /// Ask for transparent huge pages on guest memory: far fewer
    /// second-level page faults and TLB misses, at up to 2 MiB of host
    /// memory per touched guest region.
    pub transparent_huge_pages: bool,
    /// The threads' seccomp filters (disabled with `--no-seccomp`).
    pub seccomp: Arc<SeccompFilters>,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("opening /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM lacks a capability husk needs: {0:?}")]
    MissingCap(Cap),
    #[error("{what}: {source}")]
    Kvm { what: String, source: kvm_ioctls::Error },
    #[error("allocating {mib} MiB of guest memory: {reason}")]
    Memory { mib: usize, reason: String },
    #[error(transparent)]
    Boot(#[from] crate::boot::BootError),
    #[error("vCPU setup: {0}")]
    Regs(#[from] regs::RegsError),
    #[error("vCPU MSRs: {0}")]
    Msr(#[from] msr::MsrError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error("device setup: {0}")]
    Device(String),
    #[error("starting a vCPU thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

fn kvm_err(what: impl Into<String>) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Kvm { what, source }
}

/// A microVM whose vCPUs are running.
pub struct RunningVm {
    // Order matters for drop: threads reference the VM's memory and fds.
    vcpu_threads: Vec<JoinHandle<()>>,
    control: Arc<VcpuControl>,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub i8042: Arc<Mutex<I8042Device>>,
    pub memory: Arc<GuestMemoryMmap>,
    /// The virtio devices' event-loop halves, for the VMM to add to its
    /// event manager.
    pub subscribers: Vec<Arc<Mutex<dyn event_manager::MutEventSubscriber + Send>>>,
    _vm: VmFd,
    _kvm: Kvm,
    /// The devices' shared memory regions, memory slots of `_vm`: dropped
    /// after it.
    _shm_mappings: Vec<Arc<ShmMapping>>,
}

impl RunningVm {
    pub fn pause(&self) {
        self.control.pause(&self.vcpu_threads);
    }

    pub fn resume(&self) {
        self.control.resume();
    }
}

/// Builds the VM described by `boot` and `machine` and starts its vCPUs.
pub fn start_vm(
    boot: &BootSourceConfig,
    machine: &MachineConfig,
    options: &VmOptions,
    virtio_devices: Vec<VirtioDeviceHandle>,
    exit: Arc<ExitSignal>,
    instance_start: Instant,
) -> Result<RunningVm, VmError> {
    if virtio_devices.len() > MAX_VIRTIO_DEVICES {
        return Err(VmError::Device(format!(
            "at most {MAX_VIRTIO_DEVICES} virtio devices, got {}",
            virtio_devices.len()
        )));
    }
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    for cap in [Cap::Irqchip, Cap::Irqfd, Cap::Ioeventfd, Cap::Pit2, Cap::UserMemory, Cap::ImmediateExit] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCap(cap));
        }
    }
    let vm = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_START as usize).map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(KVM_IDENTITY_MAP_START).map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    // The in-kernel PIC and IOAPIC (and a LAPIC per vCPU) deliver interrupts
    // without a trip through the VMM; the PIT keeps the legacy timer the
    // kernel calibrates against, its speaker port a dummy.
    vm.create_irq_chip().map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;

    tracing::debug!("KVM VM and irqchip ready at +{} us", instance_start.elapsed().as_micros());
    let mem_size = (machine.mem_size_mib as u64) << 20;
    let memory = Arc::new(create_memory(machine.mem_size_mib, options.memfd)?);
    if options.transparent_huge_pages {
        advise_huge_pages(&memory);
    }
    register_memory(&vm, &memory, machine.track_dirty_pages)?;

    let mut cmdline = build_cmdline(boot.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS))?;
    let irq = |gsi: u32| -> Result<EventFd, VmError> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Device(format!("eventfd: {e}")))?;
        vm.register_irqfd(&evt, gsi).map_err(kvm_err(format!("KVM_IRQFD for GSI {gsi}")))?;
        Ok(evt)
    };
    let mut mmio_bus = Bus::default();
    let bus_err = |e: crate::devices::BusError| VmError::Device(e.to_string());
    let mut subscribers = Vec::with_capacity(virtio_devices.len());
    // The devices' shared memory regions, placed above RAM, each its own
    // memory slot after the RAM slots.
    let shm_regions: Vec<_> =
        virtio_devices.iter().map(|handle| handle.device.lock().expect("device lock").shm_region()).collect();
    let shm_sizes: Vec<u64> = shm_regions.iter().flatten().map(|region| region.mapping.size()).collect();
    let ram_end = memory.last_addr().0 + 1;
    let mut shm_bases = shm_region_bases(ram_end, &shm_sizes)
        .ok_or_else(|| VmError::Device("the devices' shared memory regions do not fit the address space".into()))?
        .into_iter();
    let mut shm_mappings = Vec::new();
    for (slot, (handle, shm_region)) in virtio_devices.into_iter().zip(shm_regions).enumerate() {
        let base = VIRTIO_MMIO_START + slot as u64 * MMIO_SLOT_SIZE;
        let gsi = VIRTIO_FIRST_IRQ + slot as u32;
        let interrupt = Arc::new(VirtioInterrupt::new(irq(gsi)?));
        let mut transport = MmioTransport::new(memory.clone(), handle.device, interrupt)
            .map_err(|e| VmError::Device(format!("virtio-mmio transport: {e}")))?;
        if let Some(region) = shm_region {
            let guest_base = shm_bases.next().expect("one base per region");
            let kvm_slot = (memory.num_regions() + shm_mappings.len()) as u32;
            let len = region.mapping.size();
            let memory_region = kvm_userspace_memory_region {
                slot: kvm_slot,
                flags: 0,
                guest_phys_addr: guest_base,
                memory_size: len,
                userspace_addr: region.mapping.host_addr(),
            };
            // SAFETY: the host range is the mapping's reservation, kept
            // alive by RunningVm for longer than the VM fd.
            unsafe { vm.set_user_memory_region(memory_region) }
                .map_err(kvm_err(format!("KVM_SET_USER_MEMORY_REGION slot {kvm_slot} (virtio device {slot})")))?;
            tracing::info!(
                "virtio device {slot}: shared memory region {} at {guest_base:#x}, {} MiB",
                region.id,
                len >> 20
            );
            transport.set_shm_region(ShmLayout { id: region.id, guest_base, len });
            shm_mappings.push(region.mapping);
        }
        for (queue, evt) in transport.queue_events().iter().enumerate() {
            let address = kvm_ioctls::IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET);
            vm.register_ioevent(evt, &address, queue as u32)
                .map_err(kvm_err(format!("KVM_IOEVENTFD for virtio device {slot} queue {queue}")))?;
        }
        mmio_bus.insert(Arc::new(Mutex::new(transport)), base, MMIO_SLOT_SIZE).map_err(bus_err)?;
        // Declared on the command line: the guest has no ACPI to find them in.
        cmdline
            .add_virtio_mmio_device(MMIO_SLOT_SIZE, GuestAddress(base), gsi, None)
            .map_err(|e| VmError::Device(format!("declaring virtio device {slot} on the command line: {e}")))?;
        subscribers.push(handle.subscriber);
    }
    let loaded = load_guest(
        &memory,
        mem_size,
        Path::new(&boot.kernel_image_path),
        boot.initrd_path.as_deref().map(Path::new),
        &cmdline,
    )?;
    mptable::setup(&*memory, machine.vcpu_count)?;
    tracing::debug!("guest memory and guest loaded at +{} us", instance_start.elapsed().as_micros());

    let serial_out = options.serial_out.open().map_err(|e| VmError::Device(format!("serial output: {e}")))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(irq(SERIAL_IRQ)?, serial_out)));
    let i8042 = Arc::new(Mutex::new(I8042Device::new(irq(I8042_IRQ)?, exit.clone())));
    let guest_signal = Arc::new(Mutex::new(GuestSignalDevice::new(instance_start, options.boot_timer, exit.clone())));
    let mut io_bus = Bus::default();
    io_bus.insert(serial.clone(), COM1_BASE, COM1_LEN).map_err(bus_err)?;
    io_bus.insert(i8042.clone(), I8042_BASE, I8042_LEN).map_err(bus_err)?;
    mmio_bus.insert(guest_signal, GUEST_SIGNAL_MMIO_BASE, GUEST_SIGNAL_MMIO_SIZE).map_err(bus_err)?;
    let (io_bus, mmio_bus) = (Arc::new(io_bus), Arc::new(mmio_bus));

    let supported_cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    let topology = Topology::new(machine.vcpu_count, machine.smt);
    let extra = ExtraFeatures { tsc_deadline_timer: kvm.check_extension(Cap::TscDeadlineTimer) };
    let control = Arc::new(VcpuControl::default());
    let mut vcpus = Vec::with_capacity(machine.vcpu_count as usize);
    for id in 0..machine.vcpu_count {
        let fd = vm.create_vcpu(u64::from(id)).map_err(kvm_err(format!("KVM_CREATE_VCPU {id}")))?;
        let cpuid = vcpu_cpuid(&supported_cpuid, id, topology, extra);
        if tracing::enabled!(tracing::Level::TRACE) {
            for e in cpuid.as_slice() {
                tracing::trace!(
                    "vcpu{id} cpuid {:#010x}.{}: eax={:#010x} ebx={:#010x} ecx={:#010x} edx={:#010x}",
                    e.function,
                    e.index,
                    e.eax,
                    e.ebx,
                    e.ecx,
                    e.edx
                );
            }
        }
        fd.set_cpuid2(&cpuid).map_err(kvm_err(format!("vcpu{id}: KVM_SET_CPUID2")))?;
        msr::setup_msrs(&fd)?;
        regs::setup_fpu(&fd)?;
        lapic::setup_lint(&fd).map_err(kvm_err(format!("vcpu{id}: LAPIC LINT0/LINT1")))?;
        // Application processors wait for the boot processor's INIT/SIPI,
        // which resets their registers anyway.
        if id == 0 {
            regs::setup_regs(&fd, loaded.entry)?;
            regs::setup_sregs(&*memory, &fd, loaded.entry)?;
        }
        vcpus.push(Vcpu {
            fd,
            id,
            io_bus: io_bus.clone(),
            mmio_bus: mmio_bus.clone(),
            exit: exit.clone(),
            control: control.clone(),
            instance_start,
            seccomp: options.seccomp.clone(),
        });
    }
    tracing::debug!("vCPUs configured at +{} us", instance_start.elapsed().as_micros());
    match loaded.entry {
        EntryPoint::Pvh { entry, .. } => tracing::info!("booting through the PVH entry at {:#x}", entry.0),
        EntryPoint::Linux64 { entry, .. } => tracing::info!("booting through the 64-bit entry at {:#x}", entry.0),
    }
    let vcpu_threads = vcpus.into_iter().map(Vcpu::start).collect::<Result<Vec<_>, _>>()?;
    Ok(RunningVm {
        vcpu_threads,
        control,
        serial,
        i8042,
        memory,
        subscribers,
        _vm: vm,
        _kvm: kvm,
        _shm_mappings: shm_mappings,
    })
}

fn create_memory(mib: usize, memfd: bool) -> Result<GuestMemoryMmap, VmError> {
    let err = |reason: String| VmError::Memory { mib, reason };
    let size = (mib as u64) << 20;
    let regions = ram_regions(size);
    if !memfd {
        return GuestMemoryMmap::from_ranges(&regions).map_err(|e| err(e.to_string()));
    }
    let name = c"husk-guest-memory";
    // SAFETY: name is a valid C string; the returned fd is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(err(format!("memfd_create: {}", std::io::Error::last_os_error())));
    }
    // SAFETY: fd is a fresh memfd owned by nobody else.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(size).map_err(|e| err(format!("sizing the memfd: {e}")))?;
    debug_assert!(file.as_raw_fd() >= 0);
    let mut offset = 0;
    let ranges: Vec<(GuestAddress, usize, Option<FileOffset>)> = regions
        .iter()
        .map(|&(addr, len)| {
            let file = file.try_clone().map_err(|e| err(format!("memfd: {e}")))?;
            let range = (addr, len, Some(FileOffset::new(file, offset)));
            offset += len as u64;
            Ok(range)
        })
        .collect::<Result<_, VmError>>()?;
    GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(|e| err(e.to_string()))
}

fn advise_huge_pages(memory: &GuestMemoryMmap) {
    for region in memory.iter() {
        let Ok(host) = memory.get_host_address(region.start_addr()) else { continue };
        // SAFETY: the range is exactly one region's live mapping.
        let rc = unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
        if rc != 0 {
            tracing::debug!("madvise(MADV_HUGEPAGE): {}", std::io::Error::last_os_error());
        }
    }
}

fn register_memory(vm: &VmFd, memory: &GuestMemoryMmap, dirty_log: bool) -> Result<(), VmError> {
    for (slot, region) in memory.iter().enumerate() {
        let host = memory.get_host_address(region.start_addr()).map_err(|e| VmError::Memory {
            mib: 0,
            reason: format!("host address of {:#x}: {e}", region.start_addr().0),
        })?;
        let flags = if dirty_log { KVM_MEM_LOG_DIRTY_PAGES } else { 0 };
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the host mapping is owned by `memory`, which RunningVm
        // keeps alive as long as the VM fd that references it.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(kvm_err(format!("KVM_SET_USER_MEMORY_REGION slot {slot}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn shared_memory_regions_go_above_ram_and_4_gib_aligned_to_1_gib() {
        // Small guests: at 4 GiB, clear of the MMIO gap.
        assert_eq!(shm_region_bases(256 << 20, &[64 << 20]), Some(vec![4 * GIB]));
        // RAM past 4 GiB: the next GiB after it; regions one after another.
        assert_eq!(
            shm_region_bases(4 * GIB + (512 << 20), &[2 << 20, GIB, 4 * GIB]),
            Some(vec![5 * GIB, 6 * GIB, 7 * GIB])
        );
        assert_eq!(shm_region_bases(6 * GIB, &[GIB + 1, 1]), Some(vec![6 * GIB, 8 * GIB]));
        assert_eq!(shm_region_bases(GIB, &[]), Some(vec![]));
        assert_eq!(shm_region_bases(u64::MAX - GIB, &[1]), None);
        assert_eq!(shm_region_bases(GIB, &[u64::MAX]), None);
    }
}

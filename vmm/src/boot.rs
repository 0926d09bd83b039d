//! Loading the guest: kernel (ELF vmlinux through its PVH note or its
//! 64-bit entry, or a bzImage), initrd and command line into guest memory,
//! and the boot information the chosen entry protocol hands the kernel.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info};
use linux_loader::loader::{BzImage, Cmdline, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::layout::{
    e820_map, low_ram_end, CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START,
    PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::arch::regs::EntryPoint;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;
/// The bzImage's 64-bit entry point is 0x200 past where it is loaded.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Where an initrd may end at the latest when the kernel does not say.
const DEFAULT_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("opening the kernel image {path}: {source}")]
    OpenKernel { path: String, source: std::io::Error },
    #[error("reading the kernel image {path}: {source}")]
    ReadKernel { path: String, source: std::io::Error },
    #[error("loading the kernel image {path}: {source}")]
    LoadKernel { path: String, source: linux_loader::loader::Error },
    #[error("opening the initrd {path}: {source}")]
    OpenInitrd { path: String, source: std::io::Error },
    #[error("the initrd {path} ({size} bytes) does not fit in guest memory above the kernel")]
    InitrdTooLarge { path: String, size: u64 },
    #[error("reading the initrd {path} into guest memory: {source}")]
    ReadInitrd { path: String, source: vm_memory::GuestMemoryError },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("writing boot parameters: {0}")]
    BootParams(String),
}

/// What the VMM needs to know about the loaded guest.
#[derive(Debug)]
pub struct LoadedGuest {
    pub entry: EntryPoint,
}

/// `boot_params` and the PVH structures are plain C data: any byte pattern
/// is a valid value, which is what `ByteValued` promises.
// The field is only ever read as bytes, through ByteValued.
#[allow(dead_code)]
#[derive(Clone, Copy, Default)]
struct BootParamsBytes(boot_params);
// SAFETY: boot_params is a repr(C) struct of integers and arrays of them.
unsafe impl ByteValued for BootParamsBytes {}

// The field is only ever read as bytes, through ByteValued.
#[allow(dead_code)]
#[derive(Clone, Copy, Default)]
struct StartInfoBytes(hvm_start_info);
// SAFETY: repr(C) struct of integers.
unsafe impl ByteValued for StartInfoBytes {}

// The field is only ever read as bytes, through ByteValued.
#[allow(dead_code)]
#[derive(Clone, Copy, Default)]
struct MemmapEntryBytes(hvm_memmap_table_entry);
// SAFETY: repr(C) struct of integers.
unsafe impl ByteValued for MemmapEntryBytes {}

// The field is only ever read as bytes, through ByteValued.
#[allow(dead_code)]
#[derive(Clone, Copy, Default)]
struct ModlistEntryBytes(hvm_modlist_entry);
// SAFETY: repr(C) struct of integers.
unsafe impl ByteValued for ModlistEntryBytes {}

pub fn build_cmdline(boot_args: &str) -> Result<Cmdline, BootError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cmdline.insert_str(boot_args).map_err(|e| BootError::Cmdline(format!("{e} in {boot_args:?}")))?;
    Ok(cmdline)
}

/// Loads `kernel` (and `initrd`) into `mem`, writes `cmdline` and the boot
/// information, and returns how the boot vCPU must enter the kernel.
pub fn load_guest(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &Cmdline,
) -> Result<LoadedGuest, BootError> {
    let kernel_path = kernel.display().to_string();
    let mut file = File::open(kernel).map_err(|source| BootError::OpenKernel { path: kernel_path.clone(), source })?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
        .map_err(|source| BootError::ReadKernel { path: kernel_path.clone(), source })?;
    let load_err = |source| BootError::LoadKernel { path: kernel_path.clone(), source };
    let highmem = Some(GuestAddress(HIMEM_START));
    let result = if &magic == ELF_MAGIC {
        Elf::load(mem, None, &mut file, highmem).map_err(load_err)?
    } else {
        BzImage::load(mem, None, &mut file, highmem).map_err(load_err)?
    };

    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_len = cmdline.as_cstring().map_err(|e| BootError::Cmdline(e.to_string()))?.as_bytes().len();

    let initrd_max = result
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|&max| max != 0)
        .unwrap_or(DEFAULT_INITRD_ADDR_MAX);
    let initrd = initrd.map(|path| load_initrd(mem, mem_size, path, result.kernel_end, initrd_max)).transpose()?;

    let entry = match (&magic == ELF_MAGIC, result.pvh_boot_cap) {
        (true, PvhBootCapability::PvhEntryPresent(entry)) => {
            write_pvh_start_info(mem, mem_size, initrd)?;
            EntryPoint::Pvh { entry, start_info: GuestAddress(PVH_INFO_START) }
        }
        (is_elf, _) => {
            let entry =
                if is_elf { result.kernel_load } else { result.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET) };
            write_zero_page(mem, mem_size, cmdline_len, initrd, result.setup_header)?;
            EntryPoint::Linux64 { entry, zero_page: GuestAddress(ZERO_PAGE_START) }
        }
    };
    Ok(LoadedGuest { entry })
}

/// Places the initrd page-aligned at the top of low RAM (below `max`),
/// above the kernel. Returns (address, size).
fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
    kernel_end: u64,
    max: u64,
) -> Result<(GuestAddress, u64), BootError> {
    let path_str = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::OpenInitrd { path: path_str.clone(), source })?;
    let size = file
        .seek(SeekFrom::End(0))
        .and_then(|size| file.seek(SeekFrom::Start(0)).map(|_| size))
        .map_err(|source| BootError::OpenInitrd { path: path_str.clone(), source })?;
    let top = low_ram_end(mem_size).min(max.saturating_add(1));
    let too_large = || BootError::InitrdTooLarge { path: path_str.clone(), size };
    let start = top.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if start < kernel_end.max(HIMEM_START) {
        return Err(too_large());
    }
    mem.read_exact_volatile_from(GuestAddress(start), &mut file, size as usize)
        .map_err(|source| BootError::ReadInitrd { path: path_str, source })?;
    Ok((GuestAddress(start), size))
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<(GuestAddress, u64)>,
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr.raw_value() as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(mem_size);
    for (i, (addr, size, kind)) in map.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].type_ = *kind as u32;
    }
    params.e820_entries = map.len() as u8;
    let boot = BootParams::new(&BootParamsBytes(params), GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&boot, mem).map_err(|e| BootError::BootParams(e.to_string()))
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    initrd: Option<(GuestAddress, u64)>,
) -> Result<(), BootError> {
    let memmap: Vec<MemmapEntryBytes> = e820_map(mem_size)
        .into_iter()
        .map(|(addr, size, kind)| {
            MemmapEntryBytes(hvm_memmap_table_entry { addr, size, type_: kind as u32, reserved: 0 })
        })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { PVH_MODLIST_START } else { 0 },
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut boot = BootParams::new(&StartInfoBytes(start_info), GuestAddress(PVH_INFO_START));
    if let Some((addr, size)) = initrd {
        let module = ModlistEntryBytes(hvm_modlist_entry { paddr: addr.raw_value(), size, ..Default::default() });
        boot.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    boot.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&boot, mem).map_err(|e| BootError::BootParams(e.to_string()))
}

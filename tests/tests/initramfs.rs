//! The published initramfs is what the guest kernel needs: a newc archive
//! whose /init is the static agent and which has /dev/console for its stdio.

mod common;

use common::artifact;

struct Entry {
    name: String,
    mode: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

/// Parses a newc ("070701") cpio archive.
fn parse_newc(mut archive: &[u8]) -> Vec<Entry> {
    let mut entries = Vec::new();
    let field = |header: &[u8], index: usize| {
        let hex = std::str::from_utf8(&header[6 + index * 8..6 + (index + 1) * 8]).unwrap();
        u32::from_str_radix(hex, 16).unwrap()
    };
    let pad4 = |n: usize| (n + 3) & !3;
    loop {
        assert!(archive.len() >= 110, "truncated header");
        let header = &archive[..110];
        assert_eq!(&header[..6], b"070701", "not a newc archive");
        let (mode, filesize, rdev_major, rdev_minor, namesize) = (
            field(header, 1),
            field(header, 6) as usize,
            field(header, 9),
            field(header, 10),
            field(header, 11) as usize,
        );
        let name = String::from_utf8(archive[110..110 + namesize - 1].to_vec()).unwrap();
        let data_start = pad4(110 + namesize);
        let data = archive[data_start..data_start + filesize].to_vec();
        archive = &archive[pad4(data_start + filesize)..];
        if name == "TRAILER!!!" {
            return entries;
        }
        entries.push(Entry { name, mode, rdev: (rdev_major, rdev_minor), data });
    }
}

#[test]
fn init_is_the_static_agent_and_the_console_node_exists() {
    let archive = std::fs::read(artifact("initramfs.cpio")).unwrap();
    let entries = parse_newc(&archive);
    let find =
        |name: &str| entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("no {name} in the initramfs"));

    let init = find("init");
    assert_eq!(init.mode & 0o170000, 0o100000, "/init is a regular file");
    assert_eq!(init.mode & 0o111, 0o111, "/init is executable");
    assert_eq!(&init.data[..4], b"\x7fELF", "/init is an ELF binary");
    assert!(!has_interpreter(&init.data), "/init must be static: the initramfs has no loader");

    let console = find("dev/console");
    assert_eq!(console.mode & 0o170000, 0o020000, "/dev/console is a character device");
    assert_eq!(console.rdev, (5, 1));
}

/// Whether an ELF64 file has a PT_INTERP program header.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(elf[4], 2, "64-bit ELF");
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| u32::from_le_bytes(elf[phoff + i * phentsize..][..4].try_into().unwrap()) == 3)
}

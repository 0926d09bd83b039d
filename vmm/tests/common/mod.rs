//! Small guests the tests assemble themselves, and running husk-vmm on them.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Where small guests are loaded and entered: the start of high memory.
pub const LOAD_ADDR: u64 = 0x10_0000;
pub const COM1: u16 = 0x3f8;
pub const GUEST_SIGNAL: u64 = husk_api::guest_signal::GUEST_SIGNAL_MMIO_BASE;

/// A few x86 instructions, encoded by hand. The same encodings are valid
/// in 32-bit protected mode and 64-bit mode unless noted.
#[derive(Default, Clone)]
pub struct Asm {
    pub code: Vec<u8>,
}

impl Asm {
    pub fn new() -> Self {
        Self::default()
    }
    fn emit(mut self, bytes: &[u8]) -> Self {
        self.code.extend_from_slice(bytes);
        self
    }
    pub fn mov_dx(self, value: u16) -> Self {
        let [lo, hi] = value.to_le_bytes();
        self.emit(&[0x66, 0xba, lo, hi])
    }
    pub fn mov_al(self, value: u8) -> Self {
        self.emit(&[0xb0, value])
    }
    pub fn out_dx_al(self) -> Self {
        self.emit(&[0xee])
    }
    pub fn in_al_dx(self) -> Self {
        self.emit(&[0xec])
    }
    /// Writes `text` to COM1, one `out` per byte.
    pub fn print(mut self, text: &str) -> Self {
        self = self.mov_dx(COM1);
        for byte in text.bytes() {
            self = self.mov_al(byte).out_dx_al();
        }
        self
    }
    /// i8042 "pulse reset line": what `reboot=k` does.
    pub fn i8042_reset(self) -> Self {
        self.mov_al(0xfe).emit(&[0xe6, 0x64])
    }
    /// 64-bit only: `mov rax, imm64`.
    pub fn mov_rax(self, value: u64) -> Self {
        self.emit(&[0x48, 0xb8]).emit(&value.to_le_bytes())
    }
    /// 64-bit only: `mov [imm64], rax`.
    pub fn store_rax(self, addr: u64) -> Self {
        self.emit(&[0x48, 0xa3]).emit(&addr.to_le_bytes())
    }
    /// 64-bit only: `mov byte [rax], imm8`.
    pub fn store_byte_at_rax(self, value: u8) -> Self {
        self.emit(&[0xc6, 0x00, value])
    }
    /// 64-bit only: reload CR3 (flushes the TLB after a page-table edit).
    pub fn reload_cr3(self) -> Self {
        self.emit(&[0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8])
    }
    /// 64-bit only: map the 2 MiB page holding the MMIO gap's start
    /// (0xd000_0000), which the boot page tables (first 1 GiB) leave out:
    /// a page directory at 0x20_0000 hung off PDPT entry 3.
    pub fn map_mmio_gap(self) -> Self {
        let pd = 0x20_0000u64;
        self.mov_rax(pd | 0x3)
            .store_rax(0xa000 + 3 * 8)
            .mov_rax(GUEST_SIGNAL | 0x83)
            .store_rax(pd + ((GUEST_SIGNAL - 0xc000_0000) >> 21) * 8)
            .reload_cr3()
    }
    /// 64-bit only: write the guest-signal power-off byte.
    pub fn power_off(self, status: u8) -> Self {
        self.mov_rax(GUEST_SIGNAL + 1).store_byte_at_rax(status)
    }
    /// 64-bit only: `mov ecx, imm32; rdmsr` (result in edx:eax).
    pub fn rdmsr(self, index: u32) -> Self {
        self.emit(&[0xb9]).emit(&index.to_le_bytes()).emit(&[0x0f, 0x32])
    }
    /// `test eax, imm32; jz +rel8`.
    pub fn test_eax_jz(self, mask: u32, skip: u8) -> Self {
        self.emit(&[0xa9]).emit(&mask.to_le_bytes()).emit(&[0x74, skip])
    }
    /// 32-bit PVH entry only: `mov eax, [ebx]` (the start info's magic).
    pub fn load_eax_from_ebx(self) -> Self {
        self.emit(&[0x8b, 0x03])
    }
    /// `cmp eax, imm32; jne +rel8`.
    pub fn cmp_eax_jne(self, value: u32, skip: u8) -> Self {
        self.emit(&[0x3d]).emit(&value.to_le_bytes()).emit(&[0x75, skip])
    }
    /// `cmp al, imm8; jne +rel8`.
    pub fn cmp_al_jne(self, value: u8, skip: u8) -> Self {
        self.emit(&[0x3c, value, 0x75, skip])
    }
    /// Busy-waits about `iterations` loop turns: `mov ecx, n; loop $`.
    pub fn delay(self, iterations: u32) -> Self {
        self.emit(&[0xb9]).emit(&iterations.to_le_bytes()).emit(&[0xe2, 0xfe])
    }
    /// `jmp $`: spin forever.
    pub fn spin(self) -> Self {
        self.emit(&[0xeb, 0xfe])
    }
    /// `jmp rel8` backwards to the start of the last `back` bytes.
    pub fn jmp_back(self, back: usize) -> Self {
        let rel = -((back + 2) as i64);
        self.emit(&[0xeb, rel as i8 as u8])
    }
    /// 64-bit only: `jmp rax`.
    pub fn jmp_rax(self) -> Self {
        self.emit(&[0xff, 0xe0])
    }
    /// Appends another sequence.
    pub fn emit_all(self, other: &Asm) -> Self {
        self.emit(&other.code)
    }
    pub fn len(&self) -> usize {
        self.code.len()
    }
}

/// An ELF64 executable whose one segment is `code` at [`LOAD_ADDR`]. With
/// `pvh`, it carries a PVH note and is entered in 32-bit protected mode;
/// otherwise through the 64-bit entry, in long mode.
/// A guest printing dots on the console forever, written into `dir`;
/// returns its path.
pub fn dots_guest(dir: &Path) -> String {
    let body = Asm::new().mov_dx(COM1).mov_al(b'.').out_dx_al().delay(2000);
    let code = body.clone().jmp_back(body.len());
    let kernel = dir.join("dots.elf");
    std::fs::write(&kernel, elf(&code.code, false)).unwrap();
    kernel.to_string_lossy().into_owned()
}

pub fn elf(code: &[u8], pvh: bool) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let phnum: u16 = if pvh { 2 } else { 1 };
    let code_offset = 0x1000usize;
    let note_offset = EHDR + PHDR * phnum as usize;
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes()); // name size ("Xen\0")
    note.extend_from_slice(&4u32.to_le_bytes()); // desc size
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(LOAD_ADDR as u32).to_le_bytes());

    let mut out = vec![0u8; code_offset];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // 64-bit
    out[5] = 1; // little endian
    out[6] = 1; // version
    out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[24..32].copy_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    out[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    out[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
    out[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
    out[56..58].copy_from_slice(&phnum.to_le_bytes());

    let mut phdr = |index: usize, kind: u32, offset: u64, addr: u64, size: u64, align: u64| {
        let base = EHDR + index * PHDR;
        out[base..base + 4].copy_from_slice(&kind.to_le_bytes());
        out[base + 4..base + 8].copy_from_slice(&7u32.to_le_bytes()); // RWX
        out[base + 8..base + 16].copy_from_slice(&offset.to_le_bytes());
        out[base + 16..base + 24].copy_from_slice(&addr.to_le_bytes());
        out[base + 24..base + 32].copy_from_slice(&addr.to_le_bytes());
        out[base + 32..base + 40].copy_from_slice(&size.to_le_bytes());
        out[base + 40..base + 48].copy_from_slice(&size.to_le_bytes());
        out[base + 48..base + 56].copy_from_slice(&align.to_le_bytes());
    };
    phdr(0, 1, code_offset as u64, LOAD_ADDR, code.len() as u64, 0x1000); // PT_LOAD
    if pvh {
        phdr(1, 4, note_offset as u64, 0, note.len() as u64, 4); // PT_NOTE
        out[note_offset..note_offset + note.len()].copy_from_slice(&note);
    }
    out.extend_from_slice(code);
    out
}

/// A scratch directory for one test, removed when dropped.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn scratch(name: &str) -> Scratch {
    let dir = std::env::temp_dir().join(format!("husk-vmm-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Scratch(dir)
}

/// Fails the test with a clear message when this machine has no /dev/kvm.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "these tests run small guests directly on /dev/kvm, and this machine has none"
    );
}

pub fn vmm_binary() -> &'static str {
    env!("CARGO_BIN_EXE_husk-vmm")
}

/// Writes `image` as the kernel and a config file for it in `dir`.
pub fn write_guest(dir: &Path, image: &[u8], vcpus: u8) -> PathBuf {
    let kernel = dir.join("guest.elf");
    std::fs::write(&kernel, image).unwrap();
    let config = dir.join("vm.json");
    let body = serde_json::json!({
        "boot-source": { "kernel_image_path": kernel, "boot_args": "console=ttyS0" },
        "machine-config": { "vcpu_count": vcpus, "mem_size_mib": 64 },
    });
    std::fs::write(&config, body.to_string()).unwrap();
    config
}

/// Runs husk-vmm on a config file with a deadline; returns its output.
pub fn run_config(config: &Path, extra_args: &[&str], timeout: Duration) -> Output {
    let mut child = Command::new(vmm_binary())
        .args(["--no-api", "--config-file"])
        .arg(config)
        .args(["--level", "Info"])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting husk-vmm");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "husk-vmm did not end within {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A running husk-vmm serving its API, killed when dropped.
pub struct ApiVmm {
    pub child: std::process::Child,
    pub socket: PathBuf,
}

impl Drop for ApiVmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ApiVmm {
    /// Starts husk-vmm with its API at `dir/api.sock` and waits until the
    /// socket accepts connections.
    pub fn start(dir: &Path, extra_args: &[&str]) -> Self {
        let socket = dir.join("api.sock");
        let child = Command::new(vmm_binary())
            .arg("--api-sock")
            .arg(&socket)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // A file, not a pipe nobody reads: the log can grow past a pipe's buffer.
            .stderr(std::fs::File::create(dir.join("vmm.stderr")).expect("creating vmm.stderr"))
            .spawn()
            .expect("starting husk-vmm");
        let vmm = Self { child, socket };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&vmm.socket).is_err() {
            assert!(std::time::Instant::now() < deadline, "the API socket never accepted a connection");
            std::thread::sleep(Duration::from_millis(5));
        }
        vmm
    }

    /// One HTTP request; returns the status code and the body.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http(&self.socket, method, path, body)
    }
}

/// A minimal HTTP/1.1 client over a Unix socket: one request per
/// connection, `Connection: close`.
pub fn http(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).expect("connecting to the API socket");
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status =
        response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad response {response:?}"));
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

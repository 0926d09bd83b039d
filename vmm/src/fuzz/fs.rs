//! virtio-fs: FUSE requests from the guest into the device's FUSE server
//! and the share's file system, over a fresh temporary directory.

use std::os::unix::fs::symlink;

use husk_api::devices::FsConfig;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;

use super::driver::{fill, queue_size, Wired, WRITE};
use super::Input;
use crate::devices::virtio::fs::{Fs, HIPRIO_QUEUE, REQUEST_QUEUE};

const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: u32 = 16;
const FUSE_INIT: u32 = 26;
/// Where requests and replies go.
const REQUEST_AT: u64 = 0x4_0000;
const REPLY_AT: u64 = 0x10_0000;
const MAX_BODY: usize = 8192;

struct Harness {
    wired: Wired<Fs>,
    unique: u64,
    /// Whether the driver is well-behaved, so that a used entry with the
    /// head of the last request is its reply (a hostile driver may have
    /// put the same head in the ring before).
    check_replies: bool,
    /// Removed last: the shared directory.
    _dir: TempDir,
}

impl Harness {
    /// A device over a small tree: a file, a directory with a file, a
    /// symlink inside the share.
    fn new(input: &mut Input, check_replies: bool) -> Self {
        let dir = TempDir::new_with_prefix("/tmp/husk-fuzz-fs-").expect("temporary directory");
        let root = dir.as_path();
        std::fs::write(root.join("file"), b"0123456789abcdef".repeat(64)).expect("share content");
        std::fs::create_dir(root.join("dir")).expect("share content");
        std::fs::write(root.join("dir/inner"), b"inner").expect("share content");
        symlink("file", root.join("link")).expect("share content");
        let flags = input.u8();
        // From JSON, as the API takes it: fields added later get their
        // defaults.
        let cache = ["never", "always", "auto", "auto"][usize::from(flags >> 1 & 3)];
        let config: FsConfig = serde_json::from_value(serde_json::json!({
            "fs_id": "fuzz",
            "tag": "fuzz",
            "shared_dir": root.to_str().expect("UTF-8 temporary path"),
            "read_only": flags & 1 != 0,
            "cache": cache,
            "allow_host_root": flags & 8 != 0,
        }))
        .expect("fs configuration");
        let device = Fs::new(&config).expect("fs device");
        // Requests take up to three descriptors: a well-behaved driver's
        // queue has room for them.
        let size = if check_replies { 256 } else { queue_size(input) };
        Harness { wired: Wired::new(device, size), unique: 0, check_replies, _dir: dir }
    }

    /// Sends one FUSE request in a well-formed chain (the request over one
    /// or two readable descriptors, a reply buffer), lets the device serve
    /// it, and checks the reply's framing.
    fn request(&mut self, opcode: u32, nodeid: u64, body: &[u8], input: &mut Input) {
        self.unique += 1;
        let len = if input.one_in(32) { input.u32() } else { (IN_HEADER_LEN + body.len()) as u32 };
        let (uid, gid): (u32, u32) = if input.bool() { (0, 0) } else { (1000, 1000) };
        let mut request = Vec::with_capacity(IN_HEADER_LEN + body.len());
        request.extend_from_slice(&len.to_le_bytes());
        request.extend_from_slice(&opcode.to_le_bytes());
        request.extend_from_slice(&self.unique.to_le_bytes());
        request.extend_from_slice(&nodeid.to_le_bytes());
        request.extend_from_slice(&uid.to_le_bytes());
        request.extend_from_slice(&gid.to_le_bytes());
        request.extend_from_slice(&1u32.to_le_bytes());
        request.extend_from_slice(&0u32.to_le_bytes());
        request.extend_from_slice(body);

        let mem = self.wired.mem.clone();
        fill(&mem, REQUEST_AT, &request);
        let reply_len = match input.u8() % 4 {
            0 => OUT_HEADER_LEN,
            1 => u32::from(input.u16()),
            _ => 0x2_0000,
        };
        let total = request.len() as u32;
        let split = if input.one_in(4) { u32::from(input.u16()) % (total + 1) } else { total };
        let mut descs = vec![(REQUEST_AT, split, 0)];
        if split < total {
            descs.push((REQUEST_AT + u64::from(split), total - split, 0));
        }
        if reply_len > 0 {
            descs.push((REPLY_AT, reply_len, WRITE));
        }
        // Wipe the reply header so a stale one cannot pass for an answer.
        fill(&mem, REPLY_AT, &[0u8; OUT_HEADER_LEN as usize]);
        let queue = if input.one_in(8) { HIPRIO_QUEUE } else { REQUEST_QUEUE };
        let head = self.wired.rings[queue].add_chain(&mem, &descs);
        self.wired.kick(queue);
        self.wired.pump();
        for (id, used) in self.wired.rings[queue].take_used(&mem) {
            if !self.check_replies || id != u32::from(head) || used == 0 {
                continue;
            }
            assert!(used >= OUT_HEADER_LEN && used <= reply_len, "a {used}-byte reply in a {reply_len}-byte buffer");
            let out_len: u32 = mem.read_obj(GuestAddress(REPLY_AT)).expect("reply");
            let error: i32 = mem.read_obj(GuestAddress(REPLY_AT + 4)).expect("reply");
            let unique: u64 = mem.read_obj(GuestAddress(REPLY_AT + 8)).expect("reply");
            assert_eq!(out_len, used, "opcode {opcode}: the reply header's length is not the used length");
            assert_eq!(unique, self.unique, "opcode {opcode}: the reply answers another request");
            assert!((-4095..=0).contains(&error), "opcode {opcode}: reply error {error}");
        }
    }

    /// FUSE_INIT as Linux sends it (version 7.31), with fuzzed flags.
    fn init(&mut self, input: &mut Input) {
        let mut body = Vec::new();
        for word in [7u32, 31, 0x2_0000, input.u32()] {
            body.extend_from_slice(&word.to_le_bytes());
        }
        // A truthful length, as root, a large reply buffer, unsplit, on
        // the request queue (see `request`).
        self.request(FUSE_INIT, 0, &body, &mut Input::new(&[1, 1, 2, 1, 1]));
    }

    /// A request of any opcode (mostly known ones) for a node the share
    /// is likely to have (inodes are numbered from 1, the root).
    fn fuzzed_request(&mut self, input: &mut Input) {
        let opcode = if input.one_in(16) { input.u32() } else { u32::from(input.u8() % 56) };
        let nodeid = if input.one_in(16) { input.u64() } else { u64::from(input.u8() % 12) };
        let body = input.data(MAX_BODY);
        self.request(opcode, nodeid, body, input);
    }
}

/// Sequences of FUSE requests, each in a well-formed chain, after the
/// INIT that starts a session: the FUSE server and the share's file
/// system and policies.
pub fn fuse(data: &[u8]) {
    let mut input = Input::new(data);
    let mut h = Harness::new(&mut input, true);
    h.init(&mut input);
    while !input.is_empty() {
        h.fuzzed_request(&mut input);
    }
}

/// Raw descriptor chains on both queues, mixed with FUSE requests and
/// resets.
pub fn virtio_fs(data: &[u8]) {
    let mut input = Input::new(data);
    let mut h = Harness::new(&mut input, false);
    while !input.is_empty() {
        match input.u8() % 6 {
            0 | 1 => {
                let q = if input.bool() { REQUEST_QUEUE } else { HIPRIO_QUEUE };
                let mem = h.wired.mem.clone();
                h.wired.rings[q].hostile_op(&mem, &mut input);
            }
            2 => h.wired.kick(if input.bool() { REQUEST_QUEUE } else { HIPRIO_QUEUE }),
            3 => h.wired.pump(),
            4 => h.fuzzed_request(&mut input),
            _ => {
                h.wired.reset();
                h.wired.activate(queue_size(&mut input));
                h.init(&mut input);
            }
        }
    }
    h.wired.kick(REQUEST_QUEUE);
    h.wired.kick(HIPRIO_QUEUE);
    h.wired.pump();
}

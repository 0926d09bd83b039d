//! Malformed descriptor chains and requests: each is consumed, counted,
//! and followed by a good request that still works.

use fuse_backend_rs::abi::fuse_abi::{BatchForgetIn, GetattrIn, Opcode, ReadIn, SetxattrIn};
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_INDIRECT;

use super::*;

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// An initialised session, and a GETATTR request (of the root) written at
/// IN_BUF, `len` bytes long.
fn session() -> (Harness, u32) {
    let mut h = Harness::new(false);
    h.init();
    let len = getattr_request(&mut h);
    (h, len)
}

fn getattr_request(h: &mut Harness) -> u32 {
    h.write_request(Opcode::Getattr as u32, ROOT, &[GetattrIn::default().as_slice()]).0
}

/// The device still serves a good request, and answers it properly.
fn still_works(h: &mut Harness) {
    let attr = h.getattr(ROOT).expect("a good request after a bad one");
    assert_eq!(attr.attr.mode & libc::S_IFMT, libc::S_IFDIR);
}

/// Pushes `descs` as one chain, runs the request queue, and returns the
/// used length of its one used entry.
fn push_and_run(h: &mut Harness, descs: &[Desc]) -> u32 {
    h.push_chain(REQUEST_QUEUE, descs);
    let used = h.run(REQUEST_QUEUE);
    assert_eq!(used.len(), 1, "the chain is returned: {used:?}");
    used[0].1
}

#[test]
fn short_or_missing_request() {
    let (mut h, _) = session();
    let (requests, ..) = h.counts();
    // Fewer bytes than a FUSE header.
    assert_eq!(push_and_run(&mut h, &[Desc::readable(IN_BUF, 8), Desc::writable(OUT_BUF, 4096)]), 0);
    // No readable buffer at all.
    assert_eq!(push_and_run(&mut h, &[Desc::writable(OUT_BUF, 4096)]), 0);
    // Zero-length buffers only.
    assert_eq!(push_and_run(&mut h, &[Desc::readable(IN_BUF, 0), Desc::writable(OUT_BUF, 0)]), 0);
    assert_eq!(h.counts(), (requests + 3, 0, 3));
    still_works(&mut h);
}

#[test]
fn bogus_opcodes_get_enosys() {
    let (mut h, _) = session();
    // (50 to 52 are the kernel's newer opcodes, answered ENOSYS without
    // counting: see `privilege::statx_tmpfile_and_syncfs_get_enosys_quietly`.)
    for opcode in [0, 7, 19, 53, 4096, Opcode::InitBswapReserved as u32, u32::MAX] {
        let (len, unique) = h.write_request(opcode, ROOT, &[&[0u8; 64]]);
        let used = push_and_run(&mut h, &[Desc::readable(IN_BUF, len), Desc::writable(OUT_BUF, 4096)]);
        let reply = h.read_reply(used);
        assert_eq!((reply.error, reply.unique), (libc::ENOSYS, unique), "opcode {opcode}");
    }
    let (_, errors, bad_chains) = h.counts();
    assert_eq!((errors, bad_chains), (7, 0));
    still_works(&mut h);
}

#[test]
fn buffers_outside_guest_memory() {
    let (mut h, len) = session();
    for descs in [
        [Desc::readable(MEM_SIZE, len), Desc::writable(OUT_BUF, 4096)],
        [Desc::readable(MEM_SIZE - 8, len), Desc::writable(OUT_BUF, 4096)],
        [Desc::readable(u64::MAX - 16, len), Desc::writable(OUT_BUF, 4096)],
        [Desc::readable(IN_BUF, u32::MAX), Desc::writable(OUT_BUF, 4096)],
        [Desc::readable(IN_BUF, len), Desc::writable(MEM_SIZE - 4, 4096)],
        [Desc::readable(IN_BUF, len), Desc::writable(OUT_BUF, u32::MAX)],
    ] {
        assert_eq!(push_and_run(&mut h, &descs), 0, "{descs:?}");
    }
    let (_, errors, bad_chains) = h.counts();
    assert_eq!((errors, bad_chains), (0, 6));
    still_works(&mut h);
}

#[test]
fn wrong_directions() {
    let (mut h, len) = session();
    // The request in a device-writable buffer: nothing to read.
    assert_eq!(push_and_run(&mut h, &[Desc::writable(IN_BUF, len), Desc::writable(OUT_BUF, 4096)]), 0);
    // The reply buffer device-readable: no room for the reply.
    assert_eq!(push_and_run(&mut h, &[Desc::readable(IN_BUF, len), Desc::readable(OUT_BUF, 4096)]), 0);
    // A reply buffer too small for a reply header.
    assert_eq!(push_and_run(&mut h, &[Desc::readable(IN_BUF, len), Desc::writable(OUT_BUF, 8)]), 0);
    let (_, errors, bad_chains) = h.counts();
    assert_eq!((errors, bad_chains), (0, 3));
    // Readable after writable (out of order): served or refused, but
    // returned.
    push_and_run(&mut h, &[Desc::writable(OUT_BUF, 4096), Desc::readable(IN_BUF, len)]);
    still_works(&mut h);
}

#[test]
fn zero_length_buffers_between_real_ones() {
    let (mut h, len) = session();
    let used = push_and_run(
        &mut h,
        &[
            Desc::readable(IN_BUF, 0),
            Desc::readable(IN_BUF, len),
            Desc::readable(IN_BUF, 0),
            Desc::writable(OUT_BUF, 0),
            Desc::writable(OUT_BUF, 4096),
        ],
    );
    assert_eq!(h.read_reply(used).error, 0, "empty buffers are just empty");
}

#[test]
fn lying_header_lengths() {
    let (mut h, _) = session();
    // Longer than the chain.
    let (_, unique) = h.write_request(Opcode::Lookup as u32, ROOT, &[b"name\0"]);
    h.mem.write_obj(u32::MAX, GuestAddress(IN_BUF)).unwrap();
    let used = push_and_run(&mut h, &[Desc::readable(IN_BUF, 45), Desc::writable(OUT_BUF, 4096)]);
    let reply = h.read_reply(used);
    assert_eq!((reply.error, reply.unique), (libc::ENOMEM, unique));
    // Shorter than the header itself, and than the header plus arguments.
    for claimed in [0u32, 10, 40, 41] {
        h.write_request(Opcode::Lookup as u32, ROOT, &[b"name\0"]);
        h.mem.write_obj(claimed, GuestAddress(IN_BUF)).unwrap();
        let used = push_and_run(&mut h, &[Desc::readable(IN_BUF, 45), Desc::writable(OUT_BUF, 4096)]);
        assert_eq!(h.read_reply(used).error, libc::EINVAL, "claimed length {claimed}");
    }
    // A name without its NUL.
    let (len, _) = h.write_request(Opcode::Lookup as u32, ROOT, &[b"name"]);
    let used = push_and_run(&mut h, &[Desc::readable(IN_BUF, len), Desc::writable(OUT_BUF, 4096)]);
    assert_eq!(h.read_reply(used).error, libc::EINVAL);
    // SETXATTR whose size does not match its value.
    let args = SetxattrIn { size: 1000, flags: 0 };
    let (len, _) = h.write_request(Opcode::Setxattr as u32, ROOT, &[args.as_slice(), b"user.x\0", b"abc"]);
    let used = push_and_run(&mut h, &[Desc::readable(IN_BUF, len), Desc::writable(OUT_BUF, 4096)]);
    assert_eq!(h.read_reply(used).error, libc::EINVAL);
    // Huge READDIR and READ sizes against a small reply buffer.
    let dir = h.opendir(ROOT).expect("opendir");
    for opcode in [Opcode::Readdir, Opcode::Readdirplus, Opcode::Read] {
        let args = ReadIn { fh: dir.fh, size: u32::MAX, ..Default::default() };
        let (len, _) = h.write_request(opcode as u32, ROOT, &[args.as_slice()]);
        let used = push_and_run(&mut h, &[Desc::readable(IN_BUF, len), Desc::writable(OUT_BUF, 4096)]);
        assert_ne!(h.read_reply(used).error, 0, "{opcode:?}");
    }
    // BATCH_FORGET claiming more entries than it has: no reply, no panic.
    let args = BatchForgetIn { count: u32::MAX, dummy: 0 };
    let (len, _) = h.write_request(Opcode::BatchForget as u32, 0, &[args.as_slice(), &[0u8; 16]]);
    h.push_chain(HIPRIO_QUEUE, &[Desc::readable(IN_BUF, len)]);
    assert_eq!(h.run(HIPRIO_QUEUE), [(0, 0)]);
    still_works(&mut h);
}

#[test]
fn descriptor_loops() {
    let (mut h, len) = session();
    // A readable descriptor chained to itself.
    h.push_raw(REQUEST_QUEUE, &[(0, Desc { next: 0, flags: NEXT, ..Desc::readable(IN_BUF, len) })], 0);
    assert_eq!(h.run(REQUEST_QUEUE), [(0, 0)], "no reply buffer, nothing written");
    // Request and reply buffers chained in a cycle: served (the reply
    // buffers are the same memory many times over) and returned.
    h.push_raw(
        REQUEST_QUEUE,
        &[
            (0, Desc { next: 1, flags: NEXT, ..Desc::readable(IN_BUF, len) }),
            (1, Desc { next: 0, flags: NEXT | WRITE, ..Desc::writable(OUT_BUF, 4096) }),
        ],
        0,
    );
    let used = h.run(REQUEST_QUEUE);
    assert_eq!(used.len(), 1);
    // A next index past the table ends the chain.
    h.push_raw(
        REQUEST_QUEUE,
        &[
            (0, Desc { next: 1, flags: NEXT, ..Desc::readable(IN_BUF, len) }),
            (1, Desc { next: 60_000, flags: NEXT | WRITE, ..Desc::writable(OUT_BUF, 4096) }),
        ],
        0,
    );
    let used = h.run(REQUEST_QUEUE);
    assert_eq!(h.read_reply(used[0].1).error, 0);
    still_works(&mut h);
}

#[test]
fn indirect_tables() {
    let (mut h, len) = session();
    let table = 0x4_0000u64;
    let write_table = |h: &Harness, descs: &[Desc]| {
        for (i, d) in descs.iter().enumerate() {
            let raw = RawDescriptor::from(SplitDescriptor::new(d.addr, d.len, d.flags, d.next));
            h.mem.write_obj(raw, GuestAddress(table + 16 * i as u64)).unwrap();
        }
    };
    // A well-formed indirect chain works.
    write_table(&h, &[Desc { next: 1, flags: NEXT, ..Desc::readable(IN_BUF, len) }, Desc::writable(OUT_BUF, 4096)]);
    h.push_raw(REQUEST_QUEUE, &[(0, Desc { addr: table, len: 32, flags: INDIRECT, next: 0 })], 0);
    let used = h.run(REQUEST_QUEUE);
    assert_eq!(h.read_reply(used[0].1).error, 0);
    // A table length that is not a whole number of descriptors, a table
    // outside memory, and a table pointing at another indirect table.
    for head in [
        Desc { addr: table, len: 17, flags: INDIRECT, next: 0 },
        Desc { addr: MEM_SIZE, len: 32, flags: INDIRECT, next: 0 },
        Desc { addr: u64::MAX - 15, len: 32, flags: INDIRECT, next: 0 },
    ] {
        h.push_raw(REQUEST_QUEUE, &[(0, head)], 0);
        assert_eq!(h.run(REQUEST_QUEUE), [(0, 0)], "{head:?}");
    }
    write_table(&h, &[Desc { addr: table, len: 32, flags: INDIRECT, next: 0 }]);
    h.push_raw(REQUEST_QUEUE, &[(0, Desc { addr: table, len: 16, flags: INDIRECT, next: 0 })], 0);
    assert_eq!(h.run(REQUEST_QUEUE), [(0, 0)]);
    let (_, errors, bad_chains) = h.counts();
    assert_eq!((errors, bad_chains), (0, 4));
    still_works(&mut h);
}

#[test]
fn head_index_out_of_range() {
    let (mut h, _) = session();
    // The available ring names descriptor 300 of a 256-entry table.
    h.push_raw(REQUEST_QUEUE, &[], 300);
    assert_eq!(h.run(REQUEST_QUEUE), [], "nothing can be returned for it");
    let (_, errors, bad_chains) = h.counts();
    assert_eq!((errors, bad_chains), (1, 1), "an empty chain, and a failed return");
    still_works(&mut h);

    // A flood of them is still taken a turn's worth at a time.
    for _ in 0..100 {
        h.push_raw(REQUEST_QUEUE, &[], 300);
    }
    assert_eq!(h.run(REQUEST_QUEUE), []);
    assert_eq!(h.counts().2, 1 + super::super::REQUESTS_PER_TURN as u64);
    assert_eq!(h.kicks[REQUEST_QUEUE].read().expect("self-notification"), 1);
    assert_eq!(h.run(REQUEST_QUEUE), []);
    assert_eq!(h.counts().2, 101);
    still_works(&mut h);
}

#[test]
fn corrupt_available_index_stops_the_queue() {
    let (mut h, len) = session();
    h.push_chain(REQUEST_QUEUE, &[Desc::readable(IN_BUF, len), Desc::writable(OUT_BUF, 4096)]);
    // More than a queue's worth of chains claimed available.
    let used_idx: u16 = h.mem.read_obj(h.rings[REQUEST_QUEUE].used.unchecked_add(2)).unwrap();
    h.set_avail_idx(REQUEST_QUEUE, used_idx.wrapping_add(RING_SIZE + 10));
    for _ in 0..3 {
        assert_eq!(h.run(REQUEST_QUEUE), []);
    }
    let (_, errors, bad_chains) = h.counts();
    assert_eq!((errors, bad_chains), (3, 0));
    // Once the driver repairs its ring, the pending request is served.
    h.set_avail_idx(REQUEST_QUEUE, used_idx.wrapping_add(1));
    let used = h.run(REQUEST_QUEUE);
    assert_eq!(h.read_reply(used[0].1).error, 0);
    still_works(&mut h);
}

#[test]
fn many_bad_chains_then_good_ones_in_one_batch() {
    let (mut h, len) = session();
    // Alternate bad and good chains in one batch, more than one turn's
    // worth, at distinct descriptor indices.
    let mut expected_good = 0;
    for i in 0..100u16 {
        let first = 2 * i;
        let descs = if i % 2 == 0 {
            expected_good += 1;
            [
                (first, Desc { next: first + 1, flags: NEXT, ..Desc::readable(IN_BUF, len) }),
                (first + 1, Desc::writable(OUT_BUF, 4096)),
            ]
        } else {
            [
                (first, Desc { next: first + 1, flags: NEXT, ..Desc::readable(MEM_SIZE, len) }),
                (first + 1, Desc::writable(OUT_BUF, 4096)),
            ]
        };
        h.push_raw(REQUEST_QUEUE, &descs, first);
    }
    let first_turn = h.run(REQUEST_QUEUE);
    assert_eq!(first_turn.len(), super::super::REQUESTS_PER_TURN);
    // The device rescheduled itself through the queue's eventfd.
    assert_eq!(h.kicks[REQUEST_QUEUE].read().expect("self-notification"), 1);
    let second_turn = h.run(REQUEST_QUEUE);
    let all: Vec<_> = first_turn.into_iter().chain(second_turn).collect();
    assert_eq!(all.len(), 100);
    assert_eq!(all.iter().filter(|(_, len)| *len > 0).count(), expected_good);
    let (_, errors, bad_chains) = h.counts();
    assert_eq!((errors, bad_chains), (0, 50));
    // One interrupt per turn (INIT's batch included).
    assert_eq!(h.irq.read().unwrap(), 3);
}

/// xorshift64*: deterministic, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn random_requests_do_not_break_the_device() {
    let mut h = Harness::with_limits(false, FsLimits::default(), |share| {
        std::fs::write(share.join("file"), b"some contents").unwrap();
        std::fs::create_dir(share.join("dir")).unwrap();
        std::os::unix::fs::symlink("file", share.join("link")).unwrap();
    });
    h.init();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut returned = 0;
    for round in 0..3000 {
        // Mostly real opcodes, node ids and handles, so requests get past
        // decoding into the file system; arguments are noise, sometimes
        // with a NUL-terminated name.
        let opcode = rng.below(54) as u32;
        let nodeid = [0, 1, 2, 3, 4, 5, u64::MAX][rng.below(7) as usize];
        let mut body: Vec<u8> = (0..rng.below(160)).map(|_| rng.next() as u8).collect();
        for word in body.chunks_mut(8) {
            // Small numbers where handles, sizes and flags go.
            if rng.below(2) == 0 {
                word.fill(0);
                word[0] = rng.below(8) as u8;
            }
        }
        if rng.below(2) == 0 {
            body.extend_from_slice(b"name\0");
        }
        let (len, _) = h.write_request(opcode, nodeid, &[&body]);
        // Split the request over several readable descriptors, and give a
        // reply buffer of any size.
        let mut descs = Vec::new();
        let mut offset = 0;
        while offset < len {
            let part = (1 + rng.below(u64::from(len))) as u32;
            let part = part.min(len - offset);
            descs.push(Desc::readable(IN_BUF + u64::from(offset), part));
            offset += part;
        }
        descs.push(Desc::writable(OUT_BUF, rng.below(8192) as u32));
        let queue = if round % 10 == 0 { HIPRIO_QUEUE } else { REQUEST_QUEUE };
        h.push_chain(queue, &descs);
        returned += h.run(queue).len();
    }
    assert_eq!(returned, 3000, "every chain came back");
    still_works(&mut h);
    assert_eq!(h.host_listing("..").len(), 1, "nothing appeared beside the share");
}

//! The virtio-vsock packet header (virtio 1.2, section 5.10.6) and the guest
//! buffers packets travel in.
//!
//! A packet is a 44-byte little-endian header followed by `len` bytes of
//! payload, laid out over the buffers of one descriptor chain in any way the
//! driver likes: the header may be split across descriptors and share one
//! with the payload. [`GuestBuffers`] validates a chain once (direction,
//! bounds, length) and records its buffers, so the header and the payload
//! are then copied with no further trust in the descriptor table, which the
//! guest could rewrite meanwhile.

use std::io::{self, ErrorKind};
use std::ops::Deref;

use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, ReadVolatile, VolatileMemoryError,
    WriteVolatile,
};

/// Size of the packet header.
pub(super) const HDR_LEN: usize = 44;

/// The host's CID: every packet the guest sends goes to it.
pub(super) const HOST_CID: u64 = 2;

/// The only socket type this device carries.
pub(super) const TYPE_STREAM: u16 = 1;

pub(super) const OP_REQUEST: u16 = 1;
pub(super) const OP_RESPONSE: u16 = 2;
pub(super) const OP_RST: u16 = 3;
pub(super) const OP_SHUTDOWN: u16 = 4;
pub(super) const OP_RW: u16 = 5;
pub(super) const OP_CREDIT_UPDATE: u16 = 6;
pub(super) const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive no more data.
pub(super) const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flags: the sender will send no more data.
pub(super) const SHUTDOWN_SEND: u32 = 2;
pub(super) const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// The largest payload of one packet, either way. Linux never sends more
/// (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE), so a larger `len` is a malformed packet.
pub(super) const MAX_PAYLOAD: usize = 64 << 10;

/// A chain with more descriptors than the largest queue is refused: only an
/// indirect table could be that long, and a looping chain is cut there.
pub(super) const MAX_CHAIN_DESCRIPTORS: usize = 256;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn decode(bytes: &[u8; HDR_LEN]) -> Self {
        fn field<const N: usize>(bytes: &[u8; HDR_LEN], at: usize) -> [u8; N] {
            let mut field = [0u8; N];
            field.copy_from_slice(&bytes[at..at + N]);
            field
        }
        Header {
            src_cid: u64::from_le_bytes(field(bytes, 0)),
            dst_cid: u64::from_le_bytes(field(bytes, 8)),
            src_port: u32::from_le_bytes(field(bytes, 16)),
            dst_port: u32::from_le_bytes(field(bytes, 20)),
            len: u32::from_le_bytes(field(bytes, 24)),
            type_: u16::from_le_bytes(field(bytes, 28)),
            op: u16::from_le_bytes(field(bytes, 30)),
            flags: u32::from_le_bytes(field(bytes, 32)),
            buf_alloc: u32::from_le_bytes(field(bytes, 36)),
            fwd_cnt: u32::from_le_bytes(field(bytes, 40)),
        }
    }

    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut bytes = [0u8; HDR_LEN];
        let mut at = 0;
        let mut put = |field: &[u8]| {
            bytes[at..at + field.len()].copy_from_slice(field);
            at += field.len();
        };
        put(&self.src_cid.to_le_bytes());
        put(&self.dst_cid.to_le_bytes());
        put(&self.src_port.to_le_bytes());
        put(&self.dst_port.to_le_bytes());
        put(&self.len.to_le_bytes());
        put(&self.type_.to_le_bytes());
        put(&self.op.to_le_bytes());
        put(&self.flags.to_le_bytes());
        put(&self.buf_alloc.to_le_bytes());
        put(&self.fwd_cnt.to_le_bytes());
        bytes
    }
}

/// Why a descriptor chain was refused before its content was looked at.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum ChainError {
    #[error("descriptor {index} is device-{found} in a chain that must be device-{wanted}")]
    WrongDirection { index: usize, found: &'static str, wanted: &'static str },
    #[error("descriptor {index} ({addr:#x}+{len:#x}) is outside guest memory")]
    OutsideMemory { index: usize, addr: u64, len: u32 },
    #[error("the chain has more than {MAX_CHAIN_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
}

#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: GuestAddress,
    len: usize,
}

/// The validated buffers of one descriptor chain, all device-readable (a
/// TX chain) or all device-writable (an RX chain). Kept by the device and
/// reused for every chain, so handling a packet allocates nothing.
#[derive(Default)]
pub(super) struct GuestBuffers {
    segments: Vec<Segment>,
    len: usize,
}

fn direction(writable: bool) -> &'static str {
    if writable {
        "writable"
    } else {
        "readable"
    }
}

fn memory_to_io(err: GuestMemoryError) -> io::Error {
    match err {
        GuestMemoryError::IOError(err) => err,
        other => io::Error::new(ErrorKind::InvalidData, other),
    }
}

fn volatile_to_io(err: VolatileMemoryError) -> io::Error {
    match err {
        VolatileMemoryError::IOError(err) => err,
        other => io::Error::new(ErrorKind::InvalidData, other),
    }
}

impl GuestBuffers {
    /// Total bytes in the chain.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Walks `chain`, checking that every descriptor has the wanted
    /// direction and lies inside guest memory. Zero-length descriptors are
    /// allowed and skipped. The walk ends at the chain's end or after
    /// [`MAX_CHAIN_DESCRIPTORS`] (virtio-queue itself stops a loop after a
    /// queue size's worth), so a looping chain costs a bounded walk.
    pub fn load<M>(
        &mut self,
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
        device_writable: bool,
    ) -> Result<(), ChainError>
    where
        M: Deref<Target = GuestMemoryMmap>,
    {
        self.segments.clear();
        self.len = 0;
        for (index, desc) in chain.enumerate() {
            if index >= MAX_CHAIN_DESCRIPTORS {
                return Err(ChainError::TooManyDescriptors);
            }
            if desc.is_write_only() != device_writable {
                return Err(ChainError::WrongDirection {
                    index,
                    found: direction(desc.is_write_only()),
                    wanted: direction(device_writable),
                });
            }
            let len = desc.len() as usize;
            if len == 0 {
                continue;
            }
            if !mem.check_range(desc.addr(), len) {
                return Err(ChainError::OutsideMemory { index, addr: desc.addr().0, len: desc.len() });
            }
            // At most 256 descriptors of at most 4 GiB each: no overflow in
            // a 64-bit usize, but keep the arithmetic checked anyway.
            self.len = self.len.checked_add(len).ok_or(ChainError::TooManyDescriptors)?;
            self.segments.push(Segment { addr: desc.addr(), len });
        }
        Ok(())
    }

    /// The guest ranges covering `[offset, offset + len)` of the chain's
    /// bytes, clipped to the chain's end.
    fn pieces(&self, offset: usize, len: usize) -> Pieces<'_> {
        Pieces { segments: self.segments.iter(), skip: offset, remaining: len }
    }

    /// Reads `buf.len()` bytes at `offset`; the caller has checked that the
    /// chain is long enough.
    pub fn read_exact(&self, mem: &GuestMemoryMmap, offset: usize, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        let mut done = 0;
        for (addr, n) in self.pieces(offset, buf.len()) {
            mem.read_slice(&mut buf[done..done + n], addr)?;
            done += n;
        }
        if done != buf.len() {
            return Err(GuestMemoryError::PartialBuffer { expected: buf.len(), completed: done });
        }
        Ok(())
    }

    /// Writes `data` at `offset`; the caller has checked that the chain is
    /// long enough.
    pub fn write_all(&self, mem: &GuestMemoryMmap, offset: usize, data: &[u8]) -> Result<(), GuestMemoryError> {
        let mut done = 0;
        for (addr, n) in self.pieces(offset, data.len()) {
            mem.write_slice(&data[done..done + n], addr)?;
            done += n;
        }
        if done != data.len() {
            return Err(GuestMemoryError::PartialBuffer { expected: data.len(), completed: done });
        }
        Ok(())
    }

    /// Appends `len` bytes at `offset` to `out`.
    pub fn append_to(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), GuestMemoryError> {
        let start = out.len();
        out.resize(start + len, 0);
        let result = self.read_exact(mem, offset, &mut out[start..]);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// Writes up to `len` bytes at `offset` straight from guest memory to
    /// `dst`, a non-blocking socket, until it would block. Returns how many
    /// bytes it took.
    pub fn write_to<W: WriteVolatile>(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        len: usize,
        dst: &mut W,
    ) -> io::Result<usize> {
        let mut done = 0;
        for (addr, n) in self.pieces(offset, len) {
            for slice in mem.get_slices(addr, n) {
                let slice = slice.map_err(memory_to_io)?;
                let mut at = 0;
                while at < slice.len() {
                    let rest = slice.offset(at).map_err(volatile_to_io)?;
                    match dst.write_volatile(&rest) {
                        Ok(0) => return Err(ErrorKind::WriteZero.into()),
                        Ok(written) => {
                            at += written;
                            done += written;
                        }
                        Err(VolatileMemoryError::IOError(err)) if err.kind() == ErrorKind::WouldBlock => {
                            return Ok(done)
                        }
                        Err(VolatileMemoryError::IOError(err)) if err.kind() == ErrorKind::Interrupted => {}
                        Err(err) => return Err(volatile_to_io(err)),
                    }
                }
            }
        }
        Ok(done)
    }

    /// Reads up to `max` bytes from `src`, a non-blocking socket, straight
    /// into guest memory at `offset`. Returns the bytes read: 0 is the end
    /// of the stream; `WouldBlock` means nothing was there. An error after
    /// some data returns the data; the error shows again on the next read.
    pub fn read_from<R: ReadVolatile>(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        max: usize,
        src: &mut R,
    ) -> io::Result<usize> {
        let mut done = 0;
        for (addr, n) in self.pieces(offset, max) {
            for slice in mem.get_slices(addr, n) {
                let slice = slice.map_err(memory_to_io)?;
                let mut at = 0;
                while at < slice.len() {
                    let mut rest = slice.offset(at).map_err(volatile_to_io)?;
                    match src.read_volatile(&mut rest) {
                        Ok(0) => return Ok(done),
                        Ok(read) => {
                            at += read;
                            done += read;
                            // A short read from a stream socket means it
                            // is drained: spare the syscall that would
                            // say so.
                            if read < rest.len() {
                                return Ok(done);
                            }
                        }
                        Err(VolatileMemoryError::IOError(err)) if err.kind() == ErrorKind::Interrupted => {}
                        Err(err) if done > 0 => {
                            tracing::trace!("vsock: read stopped after {done} bytes: {err}");
                            return Ok(done);
                        }
                        Err(err) => return Err(volatile_to_io(err)),
                    }
                }
            }
        }
        Ok(done)
    }
}

struct Pieces<'a> {
    segments: std::slice::Iter<'a, Segment>,
    skip: usize,
    remaining: usize,
}

impl Iterator for Pieces<'_> {
    type Item = (GuestAddress, usize);

    fn next(&mut self) -> Option<Self::Item> {
        while self.remaining > 0 {
            let segment = self.segments.next()?;
            if self.skip >= segment.len {
                self.skip -= segment.len;
                continue;
            }
            let start = self.skip;
            self.skip = 0;
            let n = (segment.len - start).min(self.remaining);
            self.remaining -= n;
            // In range: load() checked the whole segment against guest memory.
            return Some((segment.addr.checked_add(start as u64)?, n));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_little_endian() {
        let hdr = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x0102_0304,
            dst_port: 52,
            len: 7,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: SHUTDOWN_SEND,
            buf_alloc: 1 << 18,
            fwd_cnt: 99,
        };
        let bytes = hdr.encode();
        assert_eq!(&bytes[..8], &3u64.to_le_bytes());
        assert_eq!(&bytes[16..20], &[4, 3, 2, 1]);
        assert_eq!(&bytes[28..30], &1u16.to_le_bytes());
        assert_eq!(&bytes[40..44], &99u32.to_le_bytes());
        assert_eq!(Header::decode(&bytes), hdr);
    }
}

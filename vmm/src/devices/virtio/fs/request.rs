//! One descriptor chain, one FUSE request: the chain's device-readable
//! buffers are the request, its device-writable buffers take the reply.
//!
//! The driver is untrusted. A chain that cannot carry a request (buffers
//! outside guest memory, no room for a FUSE header, no room for a reply) is
//! counted as bad and returned with nothing written. A request the FUSE
//! server fails to decode gets an error reply when the chain has room for
//! one, so a well-meaning driver never waits forever; nothing a chain holds
//! can make the VMM panic.

use std::io::Write;
use std::mem::size_of;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FsCacheReqHandler, Reader, VirtioFsWriter};
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, GuestMemoryMmap};

use super::share::ShareFs;
use super::FsMetrics;

/// Logs the first occurrence of a kind of guest misbehaviour and then every
/// time its count reaches a power of two: a hostile driver cannot flood the
/// log, and the counts still show in it.
pub(super) fn should_log(count: u64) -> bool {
    count.is_power_of_two()
}

/// Counts a bad chain and logs it (rate-limited).
pub(super) fn bad_chain(metrics: &FsMetrics, head: u16, what: &dyn std::fmt::Display) {
    let count = metrics.bad_chains.fetch_add(1, Ordering::Relaxed) + 1;
    if should_log(count) {
        tracing::warn!("virtio-fs: bad descriptor chain (head {head}): {what} ({count} so far)");
    }
}

/// Counts a failed request or queue operation and logs it (rate-limited).
pub(super) fn count_error(metrics: &FsMetrics, what: &dyn std::fmt::Display) {
    let count = metrics.errors.fetch_add(1, Ordering::Relaxed) + 1;
    if should_log(count) {
        tracing::warn!("virtio-fs: {what} ({count} errors so far)");
    }
}

/// Whether `opcode` is one fuse-backend-rs's `Opcode` has a variant for.
/// The server formats every request's opcode as an `Opcode` (in a trace
/// line, when that level is enabled) by transmuting the number; for the
/// gaps in the numbering (0, 7, 19) that is undefined behaviour, so such
/// requests never reach it. Numbers past the last variant are answered
/// ENOSYS here too, which is what the server would answer and what newer
/// kernels expect for opcodes it does not know (SYNCFS, STATX: they fall
/// back on ENOSYS).
fn opcode_known(opcode: u32) -> bool {
    // FUSE has never used 7 and 19.
    opcode >= Opcode::Lookup as u32 && opcode < Opcode::MaxOpcode as u32 && opcode != 7 && opcode != 19
}

/// FUSE_SYNCFS, FUSE_TMPFILE and FUSE_STATX: newer than fuse-backend-rs's
/// opcodes, and sent by a well-behaved guest kernel (a 6.12 one on every
/// statx(2)), which falls back (GETATTR for STATX) or gives up quietly on
/// ENOSYS. Answered so without counting or logging them as errors.
fn kernel_fallback(opcode: u32) -> bool {
    matches!(opcode, 50..=52)
}

/// Requests the protocol never answers.
fn expects_reply(opcode: u32) -> bool {
    opcode != Opcode::Forget as u32 && opcode != Opcode::BatchForget as u32 && opcode != Opcode::Interrupt as u32
}

/// The errno answered for a request the server could not handle.
fn errno_for(err: &fuse_backend_rs::Error) -> i32 {
    use fuse_backend_rs::Error as E;
    match err {
        E::DecodeMessage(_)
        | E::MissingParameter
        | E::InvalidCString(_)
        | E::InvalidHeaderLength
        | E::InvalidXattrSize(_)
        | E::InvalidMessage(_) => libc::EINVAL,
        E::FailedToRemapID(_) => libc::EPERM,
        E::EncodeMessage(_) | E::FailedToWrite(_) | E::FailedToSplitWriter(_) => libc::EIO,
    }
}

/// Writes an error reply at the start of the chain's writable buffers.
/// Returns the reply's length, or None when the buffers cannot hold one.
fn reply_error(mut writer: VirtioFsWriter<'_>, unique: u64, errno: i32) -> Option<u32> {
    let len = size_of::<OutHeader>() as u32;
    let header = OutHeader { len, error: -errno, unique };
    writer.write_all(header.as_slice()).ok().map(|()| len)
}

/// Serves the request in `chain` and returns how many bytes of reply were
/// written to its writable buffers (the used-ring length). `cache_handler`
/// is the DAX window, if the device has one: FUSE_SETUPMAPPING and
/// FUSE_REMOVEMAPPING go to it (without one they answer EINVAL).
pub(super) fn handle_chain(
    server: &Server<Arc<ShareFs>>,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    cache_handler: Option<&mut dyn FsCacheReqHandler>,
    metrics: &FsMetrics,
) -> u32 {
    metrics.requests.fetch_add(1, Ordering::Relaxed);
    let head = chain.head_index();

    // Both constructors check every buffer lies within one guest memory
    // region and that the lengths do not overflow.
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(reader) => reader,
        Err(err) => {
            bad_chain(metrics, head, &format_args!("readable buffers: {err}"));
            return 0;
        }
    };
    let writer = match VirtioFsWriter::new(mem, chain) {
        Ok(writer) => writer,
        Err(err) => {
            bad_chain(metrics, head, &format_args!("writable buffers: {err}"));
            return 0;
        }
    };
    // The server reads the header itself; this copy decides whether it may
    // see the request and answers it when the server fails.
    let header: InHeader = match reader.clone().read_obj() {
        Ok(header) => header,
        Err(_) => {
            let readable = reader.available_bytes();
            bad_chain(metrics, head, &format_args!("{readable} readable bytes, shorter than a FUSE header"));
            return 0;
        }
    };

    let opcode = header.opcode;
    // Answers the request with an errno and counts it as an error, or
    // counts the chain as bad when it has no room for the answer.
    let fail = |writer, errno, what: &dyn std::fmt::Display| match reply_error(writer, header.unique, errno) {
        Some(len) => {
            count_error(metrics, &format_args!("FUSE opcode {opcode}: {what}"));
            len
        }
        None => {
            bad_chain(metrics, head, &format_args!("no room for a reply (FUSE opcode {opcode}: {what})"));
            0
        }
    };

    if kernel_fallback(opcode) {
        tracing::trace!("virtio-fs: FUSE opcode {opcode} answered ENOSYS (the guest falls back)");
        return match reply_error(writer, header.unique, libc::ENOSYS) {
            Some(len) => len,
            None => {
                bad_chain(metrics, head, &format_args!("no room for a reply (FUSE opcode {opcode})"));
                0
            }
        };
    }
    if !opcode_known(opcode) {
        return fail(writer, libc::ENOSYS, &"unsupported");
    }

    match server.handle_message(reader, writer.clone().into(), cache_handler, None) {
        // The server answers DESTROY but counts its reply (a bare header)
        // as 0 bytes; the driver is told the length it was written with.
        Ok(0) if opcode == Opcode::Destroy as u32 && writer.available_bytes() >= size_of::<OutHeader>() => {
            size_of::<OutHeader>() as u32
        }
        // The server's count is of bytes written through a writer bounded
        // by the chain's writable length, itself bounded by u32.
        Ok(written) => u32::try_from(written).unwrap_or(u32::MAX),
        Err(err) if !expects_reply(opcode) => {
            count_error(metrics, &format_args!("FUSE opcode {opcode}: {err}"));
            0
        }
        // Either the server wrote nothing, or it wrote an error header that
        // this one replaces: it never fails after a successful reply.
        Err(err) => fail(writer, errno_for(&err), &err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_opcodes_are_the_enum_variants() {
        let known: Vec<u32> = (0..64).filter(|&op| opcode_known(op)).collect();
        let expected: Vec<u32> = (1..50).filter(|&op| op != 7 && op != 19).collect();
        assert_eq!(known, expected);
        assert!(!opcode_known(u32::MAX));
        assert!(!opcode_known(Opcode::InitBswapReserved as u32));
    }

    #[test]
    fn log_rate_limit() {
        let logged: Vec<u64> = (1..=1000).filter(|&n| should_log(n)).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]);
    }
}

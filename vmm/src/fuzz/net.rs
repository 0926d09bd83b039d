//! virtio-net's receive and transmit queues, over a `SOCK_SEQPACKET`
//! socket pair standing in for the TAP (one frame per message, as a TAP
//! queue): the fuzzer plays both the guest driver and the host network.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use husk_api::devices::NetworkInterfaceConfig;

use super::driver::{queue_size, Wired};
use super::Input;
use crate::devices::virtio::net::{Net, MAX_BUFFER_LEN, OFFERED_FEATURES, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN};
use crate::devices::virtio::{VirtioDevice, VIRTIO_F_VERSION_1};

pub(super) fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into the array, which
    // lives across the call.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(ret, 0, "socketpair: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// The host network's end: sends frames to the device, takes what it
/// transmits and checks each is a whole frame with its header.
struct Host(OwnedFd);

impl Host {
    fn send(&self, frame: &[u8]) {
        // A full socket (EAGAIN) or a frame too large for it (EMSGSIZE)
        // is a frame the network dropped: the result does not matter.
        // SAFETY: send reads `frame`, which lives across the call.
        let _ = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT) };
    }

    fn drain(&self) {
        let mut buf = vec![0u8; MAX_BUFFER_LEN + 1];
        loop {
            // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
            let got = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if got < 0 {
                let err = std::io::Error::last_os_error();
                assert_eq!(err.kind(), ErrorKind::WouldBlock, "reading the TAP stand-in: {err}");
                return;
            }
            let len = got as usize;
            assert!(
                (VNET_HDR_LEN..=MAX_BUFFER_LEN).contains(&len),
                "the device transmitted a {len}-byte frame (header included)"
            );
        }
    }
}

/// A net device whose TAP is `backend` (one end of a socket pair).
pub(super) fn device(backend: OwnedFd) -> Net {
    let config = NetworkInterfaceConfig {
        iface_id: "fuzz0".into(),
        host_dev_name: "fuzztap".into(),
        guest_mac: Some("06:00:ac:10:00:02".into()),
        rx_rate_limiter: None,
        tx_rate_limiter: None,
    };
    Net::with_backend(&config, File::from(backend)).expect("net device")
}

pub fn virtio_net(data: &[u8]) {
    let mut input = Input::new(data);
    let (host, backend) = seqpacket_pair();
    let host = Host(host);
    let mut net = device(backend);
    net.ack_features(input.u64() & (OFFERED_FEATURES | VIRTIO_F_VERSION_1));
    let mut wired = Wired::new(net, queue_size(&mut input));
    while !input.is_empty() {
        let mem = wired.mem.clone();
        match input.u8() % 8 {
            0 => wired.rings[RX_QUEUE].hostile_op(&mem, &mut input),
            1 => wired.rings[TX_QUEUE].hostile_op(&mem, &mut input),
            2 => {
                // A frame from the network: header and payload from the
                // input, repeated up to the length asked for.
                let len = usize::from(input.u16()) + usize::from(input.u8()) * 256;
                let pattern = input.data(256);
                let frame: Vec<u8> =
                    if pattern.is_empty() { vec![0; len] } else { pattern.iter().copied().cycle().take(len).collect() };
                host.send(&frame);
            }
            3 => wired.kick(RX_QUEUE),
            4 => wired.kick(TX_QUEUE),
            5 => wired.pump(),
            6 => host.drain(),
            _ => {
                wired.reset();
                let features = input.u64() & (OFFERED_FEATURES | VIRTIO_F_VERSION_1);
                wired.device.lock().expect("device lock").ack_features(features);
                wired.activate(queue_size(&mut input));
            }
        }
    }
    wired.kick(RX_QUEUE);
    wired.kick(TX_QUEUE);
    wired.pump();
    host.drain();
}

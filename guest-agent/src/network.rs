//! eth0's IPv4 configuration, with the classic socket ioctls: the agent
//! needs no netlink library for one address and one default route.

use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;

use crate::cmdline::NetRequest;

const INTERFACE: &str = "eth0";

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(addr.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the bytes are
    // reinterpreted as the generic type the ioctls take.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: closing the fd this struct owns.
        unsafe { libc::close(self.0) };
    }
}

impl Socket {
    fn new() -> io::Result<Self> {
        // SAFETY: socket() with constant arguments; the fd is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    fn ioctl<T>(&self, request: libc::c_ulong, arg: &mut T, what: &str) -> io::Result<()> {
        // SAFETY: `arg` is the structure this ioctl request expects (ifreq
        // or rtentry), valid for the duration of the call.
        if unsafe { libc::ioctl(self.0, request, arg as *mut T) } < 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(err.kind(), format!("{what}: {err}")));
        }
        Ok(())
    }
}

fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) })
}

/// Brings `lo` up, and `eth0` up with the requested MAC, address and
/// default route.
pub fn configure(request: &NetRequest) -> io::Result<()> {
    let socket = Socket::new()?;
    set_up("lo", &socket)?;
    if let Some(mac) = request.mac {
        let mut req = ifreq(INTERFACE);
        // SAFETY: writing the hwaddr member of the ifreq union.
        unsafe {
            req.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
            for (dst, src) in req.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
                *dst = src as libc::c_char;
            }
        }
        socket.ioctl(libc::SIOCSIFHWADDR, &mut req, "setting eth0's MAC")?;
    }
    let mut req = ifreq(INTERFACE);
    req.ifr_ifru.ifru_addr = sockaddr_in(request.address);
    socket.ioctl(libc::SIOCSIFADDR, &mut req, "setting eth0's address")?;
    let mut req = ifreq(INTERFACE);
    req.ifr_ifru.ifru_netmask = sockaddr_in(netmask(request.prefix));
    socket.ioctl(libc::SIOCSIFNETMASK, &mut req, "setting eth0's netmask")?;
    set_up(INTERFACE, &socket)?;
    if let Some(gateway) = request.gateway {
        // SAFETY: rtentry is plain data; all zeroes is a valid value.
        let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
        route.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        route.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
        route.rt_gateway = sockaddr_in(gateway);
        route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        socket.ioctl(libc::SIOCADDRT, &mut route, "adding the default route")?;
    }
    debug_assert_eq!(size_of::<libc::sockaddr>(), size_of::<libc::sockaddr_in>());
    Ok(())
}

fn set_up(name: &str, socket: &Socket) -> io::Result<()> {
    let mut req = ifreq(name);
    socket.ioctl(libc::SIOCGIFFLAGS, &mut req, &format!("reading {name}'s flags"))?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    socket.ioctl(libc::SIOCSIFFLAGS, &mut req, &format!("bringing {name} up"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks_from_prefixes() {
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(9), Ipv4Addr::new(255, 128, 0, 0));
    }
}

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
    set_address(&socket, INTERFACE, request.address, request.prefix)?;
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

/// Parses `ADDR/PREFIX`.
fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("{text:?} is not an IPv4 address with a prefix length, such as 10.0.0.2/24");
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((addr.parse().map_err(|_| bad())?, prefix))
}

/// The name of the interface with MAC `mac`, from sysfs.
fn interface_with_mac(mac: &str) -> Result<String, String> {
    let wanted = mac.to_ascii_lowercase();
    let entries = std::fs::read_dir("/sys/class/net").map_err(|e| format!("listing interfaces: {e}"))?;
    for entry in entries.flatten() {
        let address = std::fs::read_to_string(entry.path().join("address")).unwrap_or_default();
        if address.trim() == wanted {
            return Ok(entry.file_name().to_string_lossy().into_owned());
        }
    }
    Err(format!("no interface has MAC {mac}"))
}

fn set_address(socket: &Socket, name: &str, address: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_addr = sockaddr_in(address);
    socket.ioctl(libc::SIOCSIFADDR, &mut req, &format!("setting {name}'s address"))?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_netmask = sockaddr_in(netmask(prefix));
    socket.ioctl(libc::SIOCSIFNETMASK, &mut req, &format!("setting {name}'s netmask"))
}

/// Why a network request failed: the request (the host's fault) or the
/// guest (an ioctl or a write that failed).
#[derive(Debug)]
pub enum NetError {
    Invalid(String),
    Failed(String),
}

impl From<String> for NetError {
    fn from(message: String) -> Self {
        Self::Invalid(message)
    }
}

impl From<&str> for NetError {
    fn from(message: &str) -> Self {
        Self::Invalid(message.to_owned())
    }
}

impl From<io::Error> for NetError {
    fn from(err: io::Error) -> Self {
        Self::Failed(err.to_string())
    }
}

/// Applies the host's network configuration (agent protocol
/// `configure_network`): interfaces, then routes, then the resolver.
pub fn apply(config: &husk_api::agent_protocol::NetworkConfig) -> Result<(), NetError> {
    let socket = Socket::new()?;
    set_up("lo", &socket)?;
    for interface in &config.interfaces {
        let name = &interface.name;
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ':', ' ']) {
            return Err(format!("{name:?} is not an interface name").into());
        }
        if let Some(mac) = &interface.mac {
            mac.parse::<husk_api::devices::MacAddr>().map_err(|e| e.to_string())?;
            let current = interface_with_mac(mac)?;
            if current != *name {
                let mut req = ifreq(&current);
                // SAFETY: writing the newname member of the ifreq union, a
                // plain byte array; the name is shorter than IFNAMSIZ
                // (checked above), so the copy stays NUL-terminated.
                let newname = unsafe { &mut req.ifr_ifru.ifru_newname };
                for (dst, src) in newname.iter_mut().zip(name.bytes()) {
                    *dst = src as libc::c_char;
                }
                socket.ioctl(libc::SIOCSIFNAME, &mut req, &format!("renaming {current} to {name}"))?;
            }
        }
        if let Some(mtu) = interface.mtu {
            let mut req = ifreq(name);
            req.ifr_ifru.ifru_mtu = i32::try_from(mtu).map_err(|_| format!("MTU {mtu} is too large"))?;
            socket.ioctl(libc::SIOCSIFMTU, &mut req, &format!("setting {name}'s MTU"))?;
        }
        for (n, address) in interface.addresses.iter().enumerate() {
            let (address, prefix) = parse_cidr(address)?;
            // Further IPv4 addresses go on alias labels, the ioctl way.
            let label = if n == 0 { name.clone() } else { format!("{name}:{n}") };
            if label.len() >= libc::IFNAMSIZ {
                return Err(format!("too many addresses for {name}").into());
            }
            set_address(&socket, &label, address, prefix)?;
        }
        set_up(name, &socket)?;
    }
    for route in &config.routes {
        let (destination, prefix) = parse_cidr(&route.destination)?;
        // SAFETY: rtentry is plain data; all zeroes is a valid value.
        let mut entry: libc::rtentry = unsafe { std::mem::zeroed() };
        entry.rt_dst = sockaddr_in(destination);
        entry.rt_genmask = sockaddr_in(netmask(prefix));
        entry.rt_flags = libc::RTF_UP | if prefix == 32 { libc::RTF_HOST } else { 0 };
        if let Some(gateway) = &route.gateway {
            let gateway: Ipv4Addr = gateway.parse().map_err(|_| format!("{gateway:?} is not an IPv4 address"))?;
            entry.rt_gateway = sockaddr_in(gateway);
            entry.rt_flags |= libc::RTF_GATEWAY;
        }
        let device =
            route.device.as_deref().map(std::ffi::CString::new).transpose().map_err(|_| "NUL in a device name")?;
        if let Some(device) = &device {
            entry.rt_dev = device.as_ptr().cast_mut();
        }
        socket.ioctl(libc::SIOCADDRT, &mut entry, &format!("adding the route to {}", route.destination))?;
    }
    if let Some(dns) = &config.dns {
        let mut text = String::new();
        for server in &dns.nameservers {
            server.parse::<std::net::IpAddr>().map_err(|_| format!("{server:?} is not a name server address"))?;
            text.push_str(&format!("nameserver {server}\n"));
        }
        for (key, values) in [("search", &dns.search), ("options", &dns.options)] {
            if values.iter().any(|v| v.contains(char::is_whitespace) || v.is_empty()) {
                return Err(format!("resolver {key} entries must be single words").into());
            }
            if !values.is_empty() {
                text.push_str(&format!("{key} {}\n", values.join(" ")));
            }
        }
        for path in [crate::container::RESOLV_CONF, "/etc/resolv.conf"] {
            let path = std::path::Path::new(path);
            let write = || -> io::Result<()> {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(path, &text)
            };
            write().map_err(|e| NetError::Failed(format!("writing {}: {e}", path.display())))?;
        }
    }
    Ok(())
}

/// Sets the VM's hostname.
pub fn set_hostname(hostname: &str) -> Result<(), NetError> {
    let valid = !hostname.is_empty()
        && hostname.len() <= 64
        && hostname.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err(format!("{hostname:?} is not a hostname").into());
    }
    // SAFETY: a valid buffer of the given length.
    if unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) } != 0 {
        return Err(NetError::Failed(format!("sethostname: {}", io::Error::last_os_error())));
    }
    Ok(())
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

    #[test]
    fn cidrs_parse() {
        assert_eq!(parse_cidr("10.0.0.2/24"), Ok((Ipv4Addr::new(10, 0, 0, 2), 24)));
        for bad in ["10.0.0.2", "10.0.0.2/33", "host/24", "10.0.0.2/x"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }
}

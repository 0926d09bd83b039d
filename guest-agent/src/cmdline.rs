//! Agent options from the kernel command line (`husk.*=…`).
//!
//! Dotted parameters are not handed to init as arguments or environment by
//! the kernel, so the agent reads them from `/proc/cmdline`.

use std::net::Ipv4Addr;

use crate::AgentError;

/// What the agent does once it has announced that it is ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadyAction {
    /// Stay up and supervise (the normal case).
    #[default]
    Wait,
    /// Power off at once: boot-time measurements and boot tests.
    PowerOff,
}

/// `husk.mount=TAG:PATH[:ro][:dax]`: a virtio-fs share to mount before
/// ready; `dax` maps its files through the device's DAX window (the mount
/// fails if the device has none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountRequest {
    pub tag: String,
    pub path: String,
    pub read_only: bool,
    pub dax: bool,
}

/// `husk.net=ADDR/PREFIX[,gw=GATEWAY][,mac=MAC]`: eth0's IPv4 setup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetRequest {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub mac: Option<[u8; 6]>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentOptions {
    /// `husk.ready_action=wait|poweroff`
    pub ready_action: ReadyAction,
    /// `husk.mount=…`, repeatable.
    pub mounts: Vec<MountRequest>,
    /// `husk.net=…`
    pub net: Option<NetRequest>,
    /// `husk.run=PATH[,ARG…]`: a program (and its arguments, comma
    /// separated: the kernel command line splits on spaces) to run once
    /// ready; the VM powers off with its exit status when it ends (tests and
    /// one-shot jobs).
    pub run: Option<Vec<String>>,
    /// `husk.debug=1`: debug lines on the console (spec fields the guest
    /// ignores, container setup steps).
    pub debug: bool,
}

static DEBUG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether `husk.debug=1` was given (set once the options are read).
pub fn debug_enabled() -> bool {
    DEBUG.load(std::sync::atomic::Ordering::Relaxed)
}

fn parse_mac(text: &str) -> Option<[u8; 6]> {
    text.parse::<husk_api::devices::MacAddr>().ok().map(|mac| mac.0)
}

fn parse_mount(value: &str) -> Option<MountRequest> {
    let mut parts = value.split(':');
    let tag = parts.next().filter(|t| !t.is_empty())?.to_owned();
    let path = parts.next().filter(|p| p.starts_with('/'))?.to_owned();
    let mut request = MountRequest { tag, path, read_only: false, dax: false };
    // Each flag at most once, in any order.
    for flag in parts {
        let seen = match flag {
            "ro" => std::mem::replace(&mut request.read_only, true),
            "dax" => std::mem::replace(&mut request.dax, true),
            _ => return None,
        };
        if seen {
            return None;
        }
    }
    Some(request)
}

fn parse_net(value: &str) -> Option<NetRequest> {
    let mut fields = value.split(',');
    let (address, prefix) = fields.next()?.split_once('/')?;
    let mut request =
        NetRequest { address: address.parse().ok()?, prefix: prefix.parse().ok()?, gateway: None, mac: None };
    if request.prefix > 32 {
        return None;
    }
    for field in fields {
        match field.split_once('=')? {
            ("gw", gw) => request.gateway = Some(gw.parse().ok()?),
            ("mac", mac) => request.mac = Some(parse_mac(mac)?),
            _ => return None,
        }
    }
    Some(request)
}

impl AgentOptions {
    pub fn from_proc_cmdline() -> Result<Self, AgentError> {
        let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(AgentError::Cmdline)?;
        let options = Self::parse(&cmdline)?;
        DEBUG.store(options.debug, std::sync::atomic::Ordering::Relaxed);
        Ok(options)
    }

    /// Parses the `husk.` options of a kernel command line; other parameters
    /// belong to the kernel and are skipped. An unknown `husk.` option is an
    /// error: a typo must not silently change what the VM does.
    pub fn parse(cmdline: &str) -> Result<Self, AgentError> {
        let mut options = Self::default();
        for param in cmdline.split_ascii_whitespace() {
            let Some(option) = param.strip_prefix("husk.") else {
                continue;
            };
            let bad = |reason| AgentError::BadOption { option: param.to_owned(), reason };
            let (key, value) = option.split_once('=').ok_or_else(|| bad("expected husk.KEY=VALUE"))?;
            match key {
                "ready_action" => {
                    options.ready_action = match value {
                        "wait" => ReadyAction::Wait,
                        "poweroff" => ReadyAction::PowerOff,
                        _ => return Err(bad("ready_action is wait or poweroff")),
                    }
                }
                "mount" => options
                    .mounts
                    .push(parse_mount(value).ok_or_else(|| bad("mount is TAG:/PATH with optional :ro and :dax"))?),
                "net" => {
                    options.net =
                        Some(parse_net(value).ok_or_else(|| {
                            bad("net is ADDR/PREFIX with optional ,gw=ADDR and ,mac=aa:bb:cc:dd:ee:ff")
                        })?)
                }
                "run" if value.starts_with('/') => options.run = Some(value.split(',').map(str::to_owned).collect()),
                "run" => return Err(bad("run takes an absolute path")),
                "debug" => {
                    options.debug = match value {
                        "1" => true,
                        "0" => false,
                        _ => return Err(bad("debug is 0 or 1")),
                    }
                }
                _ => return Err(bad("unknown husk option")),
            }
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_waiting_and_skips_kernel_parameters() {
        let options = AgentOptions::parse("console=ttyS0 quiet reboot=k panic=-1\n").unwrap();
        assert_eq!(options.ready_action, ReadyAction::Wait);
    }

    #[test]
    fn reads_ready_action() {
        let options = AgentOptions::parse("quiet husk.ready_action=poweroff").unwrap();
        assert_eq!(options.ready_action, ReadyAction::PowerOff);
        let options = AgentOptions::parse("husk.ready_action=wait").unwrap();
        assert_eq!(options.ready_action, ReadyAction::Wait);
    }

    #[test]
    fn reads_mounts_network_and_run() {
        let options = AgentOptions::parse(
            "husk.mount=rootfs:/run/rootfs:ro husk.mount=vol:/data husk.mount=d:/d:dax husk.mount=rd:/rd:dax:ro husk.net=10.0.0.2/24,gw=10.0.0.1,mac=06:00:0a:00:00:02 \
             husk.run=/test/check",
        )
        .unwrap();
        assert_eq!(
            options.mounts,
            vec![
                MountRequest { tag: "rootfs".into(), path: "/run/rootfs".into(), read_only: true, dax: false },
                MountRequest { tag: "vol".into(), path: "/data".into(), read_only: false, dax: false },
                MountRequest { tag: "d".into(), path: "/d".into(), read_only: false, dax: true },
                MountRequest { tag: "rd".into(), path: "/rd".into(), read_only: true, dax: true },
            ]
        );
        let net = options.net.unwrap();
        assert_eq!((net.address, net.prefix), (Ipv4Addr::new(10, 0, 0, 2), 24));
        assert_eq!(net.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(net.mac, Some([6, 0, 10, 0, 0, 2]));
        assert_eq!(options.run, Some(vec!["/test/check".to_owned()]));
        let options = AgentOptions::parse("husk.run=/probe,vsock-echo,5000").unwrap();
        assert_eq!(options.run, Some(vec!["/probe".into(), "vsock-echo".into(), "5000".into()]));
    }

    #[test]
    fn rejects_unknown_or_malformed_husk_options() {
        for cmdline in [
            "husk.ready_action=reboot",
            "husk.readyaction=wait",
            "husk.ready_action",
            "husk.mount=tag",
            "husk.mount=tag:relative",
            "husk.mount=tag:/p:rw",
            "husk.mount=tag:/p:ro:ro",
            "husk.mount=tag:/p:dax:dax",
            "husk.mount=tag:/p:ro:dax:x",
            "husk.mount=tag:/p:",
            "husk.net=10.0.0.2",
            "husk.net=10.0.0.2/33",
            "husk.net=10.0.0.2/24,gw=nope",
            "husk.net=10.0.0.2/24,mac=06:00:0a:00:00",
            "husk.net=10.0.0.2/24,dns=1.1.1.1",
            "husk.run=relative",
        ] {
            let err = AgentOptions::parse(cmdline).unwrap_err();
            assert!(matches!(err, AgentError::BadOption { .. }), "{cmdline}: {err}");
            assert!(err.to_string().contains(cmdline), "error names the option: {err}");
        }
    }
}

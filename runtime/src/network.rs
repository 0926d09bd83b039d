//! Connects a microVM to a container's network namespace.
//!
//! The engine (podman with netavark, a CNI plugin) hands over a network
//! namespace that already holds the container's interface, usually a veth
//! named `eth0`, with its addresses and routes. husk puts a TAP device
//! beside it and joins the two with tc: an ingress qdisc on each and a
//! match-all u32 filter whose `mirred egress redirect` action sends every
//! frame arriving on one out of the other (the scheme Kata Containers calls
//! "tcfilter"). The VMM attaches to the TAP, and the guest's NIC takes the
//! veth's MAC address, addresses and routes, so the engine's bridge, ARP
//! and neighbour state keep pointing at the right place. The namespace's
//! own stack never sees a frame: everything arriving on the veth is stolen
//! by the redirect before it.
//!
//! u32 rather than matchall: both do the job, and u32 is the one kernels
//! without `cls_matchall` still have. The kernel pieces this needs are
//! `tun`, `sch_ingress`, `cls_u32` and `act_mirred`.
//!
//! The work is done with iproute2's `ip` and `tc`, their JSON output parsed
//! with serde_json, each run inside the namespace by `setns` on an open
//! descriptor of it, so a namespace that is only a `/proc/<pid>/ns/net`
//! path (CNI) works as well as one under `/run/netns` (podman).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;

use husk_api::agent_protocol::{DnsConfig, InterfaceConfig, NetworkConfig, RouteConfig};
use husk_api::devices::{validate_host_dev_name, MacAddr, NetworkInterfaceConfig};
use serde::Deserialize;

/// Why connecting a VM to a network namespace (or disconnecting it) failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("opening network namespace {path}: {source}")]
    OpenNetns { path: PathBuf, source: io::Error },
    #[error("entering network namespace {path}: {source}")]
    EnterNetns { path: PathBuf, source: io::Error },
    #[error("starting `{command}`: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed { command: String, status: ExitStatus, stderr: String },
    #[error("parsing the output of `{command}`: {reason}; output: {snippet}")]
    Parse { command: String, reason: String, snippet: String },
    #[error("invalid TAP device name: {0}")]
    InvalidTapName(String),
    #[error("network namespace {path} has no ethernet interface (veth or other) to connect the VM to")]
    NoInterface { path: PathBuf },
    #[error(
        "network namespace {path} has several ethernet interfaces ({}); husk connects a VM to exactly one",
        names.join(", ")
    )]
    SeveralInterfaces { path: PathBuf, names: Vec<String> },
    #[error("interface {interface} in {path}: {reason}")]
    BadInterface { path: PathBuf, interface: String, reason: String },
    #[error(
        "interface {interface} in {path} already has an ingress qdisc; husk redirects all its traffic \
         and will not share it"
    )]
    IngressInUse { path: PathBuf, interface: String },
    #[error("an interface named {name:?} already exists in {path}")]
    TapExists { path: PathBuf, name: String },
    #[error("{name:?} in {path} is not a TAP device (kind {kind:?}); husk leaves it alone")]
    NotATap { path: PathBuf, name: String, kind: String },
    #[error("route {route} in {path} cannot be given to the guest: {reason}")]
    UnsupportedRoute { path: PathBuf, route: String, reason: String },
    #[error("{setup}; undoing the partial setup failed too: {rollback}")]
    RollbackFailed { setup: Box<NetworkError>, rollback: Box<NetworkError> },
}

/// An open network namespace: a descriptor of its `/run/netns/…` or
/// `/proc/<pid>/ns/net` file, which keeps it alive while open.
#[derive(Debug)]
pub struct NetnsHandle {
    // Shared with the pre_exec closures of the commands made from it, so
    // the descriptor outlives every child that still has to enter it.
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

impl NetnsHandle {
    pub fn open(path: &Path) -> Result<Self, NetworkError> {
        let file = File::open(path).map_err(|source| NetworkError::OpenNetns { path: path.to_owned(), source })?;
        Ok(Self { fd: Arc::new(file.into()), path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the calling thread into the namespace. Only `setns(2)`, which
    /// is async-signal-safe, so it may run in a `Command::pre_exec` hook
    /// between fork and exec (the descriptor is close-on-exec, so the
    /// program started does not inherit it).
    pub fn enter_in_child(&self) -> io::Result<()> {
        enter(self.fd.as_raw_fd())
    }

    /// A command whose process runs inside the namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        let fd = Arc::clone(&self.fd);
        // SAFETY: the hook only calls setns(2), which is async-signal-safe
        // and touches no memory of the parent; `fd` stays open because the
        // closure owns a reference to it.
        unsafe {
            command.pre_exec(move || enter(fd.as_raw_fd()));
        }
        command
    }

    /// Runs `f` on a thread that entered the namespace: what it opens
    /// (sockets, `/dev/net/tun` queues) belongs to the namespace and stays
    /// there when handed back to other threads. The calling thread's own
    /// namespace is untouched.
    pub fn run<F, T>(&self, f: F) -> Result<T, NetworkError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let joined = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter_in_child()
                        .map_err(|source| NetworkError::EnterNetns { path: self.path.clone(), source })?;
                    Ok(f())
                })
                .join()
        });
        match joined {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

fn enter(fd: libc::c_int) -> io::Result<()> {
    // SAFETY: setns only reads its integer arguments; a bad descriptor is
    // reported as an error.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What the VM's NIC and the guest agent need, read from the container's
/// interface when the TAP was connected to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestNetwork {
    /// The TAP in the namespace; the VMM, started inside the namespace,
    /// opens it by this name.
    pub tap_name: String,
    /// The container's interface (e.g. `eth0`), which is also the name the
    /// guest gives its NIC.
    pub interface: String,
    /// The container interface's MAC address, lower case: the guest NIC's.
    pub mac: String,
    pub mtu: u32,
    /// IPv4 addresses with prefix length (`10.88.0.5/16`).
    pub addresses: Vec<String>,
    /// IPv4 routes through the interface, link routes before routes via a
    /// gateway; without the connected routes the kernel makes for each
    /// address.
    pub routes: Vec<RouteConfig>,
    /// Global IPv6 addresses with prefix length. The agent protocol carries
    /// IPv4 only, so [`GuestNetwork::to_agent_config`] leaves these out;
    /// they are here for the caller to report.
    pub ipv6_addresses: Vec<String>,
    /// IPv6 routes (`::/0` for the default), as [`GuestNetwork::routes`];
    /// not sent to the agent either.
    pub ipv6_routes: Vec<RouteConfig>,
}

impl GuestNetwork {
    /// The agent's `configure_network` request: the interface found by its
    /// MAC and renamed to the container's interface name, its IPv4
    /// addresses and MTU, its IPv4 routes and the resolver.
    pub fn to_agent_config(&self, dns: Option<DnsConfig>) -> NetworkConfig {
        NetworkConfig {
            interfaces: vec![InterfaceConfig {
                name: self.interface.clone(),
                mac: Some(self.mac.clone()),
                addresses: self.addresses.clone(),
                mtu: Some(self.mtu),
            }],
            routes: self.routes.clone(),
            dns,
        }
    }

    /// The VMM's virtio-net device on the TAP with the interface's MAC.
    pub fn vmm_interface(&self, iface_id: &str) -> NetworkInterfaceConfig {
        NetworkInterfaceConfig {
            iface_id: iface_id.to_owned(),
            host_dev_name: self.tap_name.clone(),
            guest_mac: Some(self.mac.clone()),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        }
    }
}

/// The uid husk-vmm runs as (the runtime's jail keeps root, with its
/// capabilities cut: see monitor.rs), and so the TAP's owner.
pub const TAP_OWNER_UID: u32 = 0;

/// Inside the network namespace at `netns`: finds the container's
/// interface, reads its MAC, MTU, addresses and routes, creates the
/// persistent TAP `tap_name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, single
/// queue, as husk-vmm attaches to it), sets its MTU to the interface's,
/// brings it up and redirects each one's ingress traffic to the other.
///
/// The container's interface is the only non-loopback ethernet-type
/// interface that is not a TUN/TAP device; none or several is an error.
/// When a step fails after the TAP was made, what was set up is removed
/// again.
pub fn prepare(netns: &Path, tap_name: &str) -> Result<GuestNetwork, NetworkError> {
    check_tap_name(tap_name)?;
    let ns = NetnsHandle::open(netns)?;
    let path = ns.path().to_owned();

    let (command, output) = run_tool(&ns, "ip", &["-j", "-d", "address", "show"])?;
    let links: Vec<IpLink> = parse_json(&command, &output)?;
    if links.iter().any(|link| link.ifname == tap_name) {
        return Err(NetworkError::TapExists { path, name: tap_name.to_owned() });
    }
    let link = select_interface(&links).map_err(|names| {
        if names.is_empty() {
            NetworkError::NoInterface { path: path.clone() }
        } else {
            NetworkError::SeveralInterfaces { path: path.clone(), names }
        }
    })?;
    let bad =
        |reason: String| NetworkError::BadInterface { path: path.clone(), interface: link.ifname.clone(), reason };
    let mac = link.address.as_deref().ok_or_else(|| bad("it has no MAC address".into()))?;
    let mac: MacAddr = mac.parse().map_err(|e: husk_api::devices::MacAddrError| bad(e.to_string()))?;
    if !mac.is_unicast() || mac.0 == [0; 6] {
        return Err(bad(format!("its MAC address {mac} cannot be a NIC's")));
    }
    if ingress_devices(&ns)?.contains(&link.ifname) {
        return Err(NetworkError::IngressInUse { path, interface: link.ifname.clone() });
    }
    let (addresses, ipv6_addresses) = addresses(link);

    let (command, output) = run_tool(&ns, "ip", &["-j", "-4", "route", "show", "table", "main"])?;
    let routes = guest_routes(&parse_json(&command, &output)?, &link.ifname, Family::V4)
        .map_err(|(route, reason)| NetworkError::UnsupportedRoute { path: path.clone(), route, reason })?;
    let ipv6_routes = if ipv6_enabled() {
        let (command, output) = run_tool(&ns, "ip", &["-j", "-6", "route", "show", "table", "main"])?;
        guest_routes(&parse_json(&command, &output)?, &link.ifname, Family::V6)
            .map_err(|(route, reason)| NetworkError::UnsupportedRoute { path: path.clone(), route, reason })?
    } else {
        Vec::new()
    };

    let network = GuestNetwork {
        tap_name: tap_name.to_owned(),
        interface: link.ifname.clone(),
        mac: mac.to_string(),
        mtu: link.mtu,
        addresses,
        routes,
        ipv6_addresses,
        ipv6_routes,
    };
    // Owned by the VMM's uid: a TAP's owner attaches to it without
    // CAP_NET_ADMIN, which the jailed VMM no longer has.
    let owner = TAP_OWNER_UID.to_string();
    run_tool(&ns, "ip", &["tuntap", "add", "dev", tap_name, "mode", "tap", "user", &owner, "vnet_hdr"])?;
    if let Err(setup) = connect(&ns, &network) {
        return match remove(&ns, tap_name) {
            Ok(()) => Err(setup),
            Err(rollback) => Err(NetworkError::RollbackFailed { setup: Box::new(setup), rollback: Box::new(rollback) }),
        };
    }
    Ok(network)
}

/// Undoes [`prepare`]: removes the redirect filters pointing at `tap_name`
/// (and the ingress qdiscs they leave empty) and the TAP itself, whose own
/// qdisc and filters go with it. The namespace and the container's
/// interface are the engine's and stay.
///
/// Idempotent: a missing TAP, filters already gone or a namespace that no
/// longer exists (its path gone, or unmounted) are fine. It needs no state from `prepare` and works after
/// the VMM died: the TAP is persistent and is found by name. A redirect
/// whose target device has disappeared (shown as `*`) is taken for husk's
/// when the TAP is gone, since it could only drop traffic.
pub fn teardown(netns: &Path, tap_name: &str) -> Result<(), NetworkError> {
    check_tap_name(tap_name)?;
    let ns = match NetnsHandle::open(netns) {
        Ok(ns) => ns,
        // The engine deleted the namespace, and everything in it with it.
        Err(NetworkError::OpenNetns { source, .. }) if source.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    // An engine unmounts the namespace before it removes the file: what
    // is left is no namespace, and setns says EINVAL.
    match ns.run(|| ()) {
        Err(NetworkError::EnterNetns { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => return Ok(()),
        other => other?,
    }
    remove(&ns, tap_name)
}

/// The resolver configuration of a resolv.conf (`nameserver`, `search`,
/// `domain` and `options` lines), read as glibc does: the last `search` or
/// `domain` line wins, `options` accumulate, `#` and `;` start comments.
/// Name servers that are not IP addresses (such as link-local IPv6 ones
/// with a `%zone`) are skipped; glibc ignores what it cannot parse too.
pub fn dns_from_resolv_conf(text: &str) -> DnsConfig {
    let mut dns = DnsConfig::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                if let Some(server) = words.next().filter(|s| s.parse::<std::net::IpAddr>().is_ok()) {
                    dns.nameservers.push(server.to_owned());
                }
            }
            Some("search") => dns.search = words.map(str::to_owned).collect(),
            Some("domain") => dns.search = words.next().map(str::to_owned).into_iter().collect(),
            Some("options") => dns.options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    dns
}

fn check_tap_name(name: &str) -> Result<(), NetworkError> {
    validate_host_dev_name(name).map_err(NetworkError::InvalidTapName)?;
    // iproute2 would take it for an option.
    if name.starts_with('-') {
        return Err(NetworkError::InvalidTapName(format!("{name:?} starts with '-'")));
    }
    Ok(())
}

fn ipv6_enabled() -> bool {
    Path::new("/proc/sys/net/ipv6").exists()
}

/// Configures the new TAP and wires it to the interface; the caller
/// removes it again on failure.
fn connect(ns: &NetnsHandle, network: &GuestNetwork) -> Result<(), NetworkError> {
    let tap = network.tap_name.as_str();
    let interface = network.interface.as_str();
    let mtu = network.mtu.to_string();
    if ipv6_enabled() {
        // No link-local address, so the namespace's stack sends no router
        // solicitations or DAD probes to the guest through the TAP.
        run_tool(ns, "ip", &["link", "set", "dev", tap, "addrgenmode", "none"])?;
    }
    run_tool(ns, "ip", &["link", "set", "dev", tap, "mtu", &mtu, "up"])?;
    for (from, to) in [(interface, tap), (tap, interface)] {
        run_tool(ns, "tc", &["qdisc", "add", "dev", from, "ingress"])?;
        run_tool(
            ns,
            "tc",
            &[
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match", "u32", "0", "0",
                "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )?;
    }
    Ok(())
}

/// What [`teardown`] does once the namespace is open.
fn remove(ns: &NetnsHandle, tap_name: &str) -> Result<(), NetworkError> {
    let (command, output) = run_tool(ns, "ip", &["-j", "-d", "link", "show"])?;
    let links: Vec<IpLink> = parse_json(&command, &output)?;
    let tap = links.iter().find(|link| link.ifname == tap_name);
    if let Some(tap) = tap {
        if tap.kind() != Some("tun") {
            return Err(NetworkError::NotATap {
                path: ns.path().to_owned(),
                name: tap_name.to_owned(),
                kind: tap.kind().unwrap_or("none").to_owned(),
            });
        }
    }
    for device in ingress_devices(ns)? {
        if device == tap_name {
            continue;
        }
        let filters = ingress_filters(ns, &device)?;
        let ours: Vec<&TcFilter> = filters.iter().filter(|f| f.redirects_to(tap_name, tap.is_none())).collect();
        if ours.is_empty() {
            continue;
        }
        for filter in ours {
            let (Some(options), Some(pref)) = (&filter.options, filter.pref) else { continue };
            let Some(handle) = &options.fh else { continue };
            let pref = pref.to_string();
            let protocol = filter.protocol.as_deref().unwrap_or("all");
            run_tool(
                ns,
                "tc",
                &[
                    "filter",
                    "del",
                    "dev",
                    &device,
                    "parent",
                    "ffff:",
                    "protocol",
                    protocol,
                    "pref",
                    &pref,
                    "handle",
                    handle,
                    &filter.kind,
                ],
            )?;
        }
        // Only the hash table shells of u32 may be left; a filter that
        // still acts is someone else's, and keeps the qdisc.
        if !ingress_filters(ns, &device)?.iter().any(TcFilter::acts) {
            run_tool(ns, "tc", &["qdisc", "del", "dev", &device, "ingress"])?;
        }
    }
    if tap.is_some() {
        run_tool(ns, "ip", &["link", "del", "dev", tap_name])?;
    }
    Ok(())
}

/// The devices that have an ingress qdisc.
fn ingress_devices(ns: &NetnsHandle) -> Result<Vec<String>, NetworkError> {
    let (command, output) = run_tool(ns, "tc", &["-j", "qdisc", "show"])?;
    let qdiscs: Vec<TcQdisc> = parse_json(&command, &output)?;
    Ok(qdiscs.into_iter().filter(|q| q.kind == "ingress").filter_map(|q| q.dev).collect())
}

fn ingress_filters(ns: &NetnsHandle, device: &str) -> Result<Vec<TcFilter>, NetworkError> {
    let (command, output) = run_tool(ns, "tc", &["-j", "filter", "show", "dev", device, "ingress"])?;
    parse_json(&command, &output)
}

/// Where a program of iproute2 is: the PATH, then the sbin directories a
/// minimal PATH (an engine's) may leave out.
fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Runs `program args` inside the namespace; its command line (for error
/// messages) and standard output.
fn run_tool(ns: &NetnsHandle, program: &str, args: &[&str]) -> Result<(String, String), NetworkError> {
    let command = format!("{program} {} (in {})", args.join(" "), ns.path().display());
    let output = ns
        .command(tool(program))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetworkError::Spawn { command: command.clone(), source })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(NetworkError::CommandFailed { command, status: output.status, stderr });
    }
    Ok((command, String::from_utf8_lossy(&output.stdout).into_owned()))
}

fn parse_json<T: serde::de::DeserializeOwned>(command: &str, output: &str) -> Result<Vec<T>, NetworkError> {
    // Some iproute2 versions print nothing rather than `[]`.
    if output.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(output).map_err(|err| {
        let snippet: String = output.chars().skip(err.column().saturating_sub(100)).take(200).collect();
        NetworkError::Parse { command: command.to_owned(), reason: err.to_string(), snippet }
    })
}

/// A link of `ip -j -d link show` or `ip -j -d address show`.
#[derive(Clone, Debug, Deserialize)]
struct IpLink {
    ifname: String,
    mtu: u32,
    #[serde(default)]
    link_type: Option<String>,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    linkinfo: Option<LinkInfo>,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

impl IpLink {
    fn kind(&self) -> Option<&str> {
        self.linkinfo.as_ref()?.info_kind.as_deref()
    }
}

#[derive(Clone, Debug, Deserialize)]
struct LinkInfo {
    #[serde(default)]
    info_kind: Option<String>,
}

/// An address of `ip -j address show`; iproute2 prints empty objects for
/// some filtered entries, hence every field optional.
#[derive(Clone, Debug, Deserialize)]
struct AddrInfo {
    #[serde(default)]
    family: Option<String>,
    #[serde(default)]
    local: Option<String>,
    #[serde(default)]
    prefixlen: Option<u8>,
    #[serde(default)]
    scope: Option<String>,
}

/// A route of `ip -j route show`.
#[derive(Clone, Debug, Deserialize)]
struct IpRoute {
    #[serde(rename = "type", default)]
    route_type: Option<String>,
    dst: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    dev: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    nexthops: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize)]
struct TcQdisc {
    kind: String,
    #[serde(default)]
    dev: Option<String>,
}

/// A filter of `tc -j filter show`.
#[derive(Clone, Debug, Deserialize)]
struct TcFilter {
    kind: String,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    pref: Option<u32>,
    #[serde(default)]
    options: Option<TcFilterOptions>,
}

#[derive(Clone, Debug, Deserialize)]
struct TcFilterOptions {
    #[serde(default)]
    fh: Option<String>,
    #[serde(default)]
    actions: Vec<TcAction>,
}

#[derive(Clone, Debug, Deserialize)]
struct TcAction {
    kind: String,
    #[serde(default)]
    mirred_action: Option<String>,
    #[serde(default)]
    to_dev: Option<String>,
}

impl TcFilter {
    fn acts(&self) -> bool {
        self.options.as_ref().is_some_and(|o| !o.actions.is_empty())
    }

    /// Whether the filter redirects to `device`, or, with `or_dangling`,
    /// to a device that no longer exists.
    fn redirects_to(&self, device: &str, or_dangling: bool) -> bool {
        let Some(options) = &self.options else { return false };
        options.actions.iter().any(|action| {
            action.kind == "mirred"
                && action.mirred_action.as_deref() == Some("redirect")
                && match action.to_dev.as_deref() {
                    Some(to) => to == device || (or_dangling && to == "*"),
                    None => false,
                }
        })
    }
}

/// The container's interface: the single ethernet-type, non-TUN/TAP link.
/// Without one, the names of the candidates (empty for none).
fn select_interface(links: &[IpLink]) -> Result<&IpLink, Vec<String>> {
    let candidates: Vec<&IpLink> =
        links.iter().filter(|link| link.link_type.as_deref() == Some("ether") && link.kind() != Some("tun")).collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        _ => {
            let mut names: Vec<String> = candidates.iter().map(|link| link.ifname.clone()).collect();
            names.sort();
            Err(names)
        }
    }
}

/// The interface's IPv4 addresses and its global IPv6 ones, with prefix
/// length. IPv6 link-local addresses the guest derives itself, from the
/// same MAC.
fn addresses(link: &IpLink) -> (Vec<String>, Vec<String>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for info in &link.addr_info {
        let (Some(family), Some(local), Some(prefix)) = (&info.family, &info.local, info.prefixlen) else {
            continue;
        };
        match family.as_str() {
            "inet" => v4.push(format!("{local}/{prefix}")),
            "inet6" if info.scope.as_deref() == Some("global") => v6.push(format!("{local}/{prefix}")),
            _ => {}
        }
    }
    (v4, v6)
}

#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

/// The routes the guest needs: unicast routes through `device`, except the
/// connected ones the kernel adds by itself for each address (protocol
/// `kernel`), link routes first so that every gateway is reachable when
/// its route is added. Routes through other devices (and blackhole or
/// unreachable routes, which have none) cannot go through the guest's one
/// NIC and are left out; a multipath route has no equivalent in the agent
/// protocol and is refused, as `(route, reason)`.
fn guest_routes(routes: &[IpRoute], device: &str, family: Family) -> Result<Vec<RouteConfig>, (String, String)> {
    let mut out = Vec::new();
    for route in routes {
        if route.nexthops.is_some() {
            return Err((route.dst.clone(), "multipath routes are not supported".into()));
        }
        let unicast = matches!(route.route_type.as_deref(), None | Some("unicast"));
        if !unicast || route.dev.as_deref() != Some(device) || route.protocol.as_deref() == Some("kernel") {
            continue;
        }
        let destination = match (route.dst.as_str(), family) {
            ("default", Family::V4) => "0.0.0.0/0".to_owned(),
            ("default", Family::V6) => "::/0".to_owned(),
            (dst, _) if dst.contains('/') => dst.to_owned(),
            (dst, Family::V4) => format!("{dst}/32"),
            (dst, Family::V6) => format!("{dst}/128"),
        };
        out.push(RouteConfig { destination, gateway: route.gateway.clone(), device: Some(device.to_owned()) });
    }
    out.sort_by_key(|route| route.gateway.is_some());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs::OpenOptions;
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    // Captured on Debian 12 (iproute2 6.1.0) from a namespace set up as
    // the live tests below set theirs up, plus a TAP made by `prepare`.
    const ADDR_SHOW: &str = r#"[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue","operstate":"UNKNOWN","group":"default","txqlen":1000,"link_type":"loopback","address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00","promiscuity":0,"allmulti":0,"min_mtu":0,"max_mtu":0,"num_tx_queues":1,"num_rx_queues":1,"gso_max_size":65536,"gso_max_segs":65535,"tso_max_size":524280,"tso_max_segs":65535,"gro_max_size":65536,"addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"::1","prefixlen":128,"scope":"host","valid_life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":2,"link_index":2,"ifname":"eth0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1400,"qdisc":"noqueue","operstate":"UP","group":"default","txqlen":1000,"link_type":"ether","address":"02:42:0a:58:00:05","broadcast":"ff:ff:ff:ff:ff:ff","link_netnsid":0,"promiscuity":0,"allmulti":0,"min_mtu":68,"max_mtu":65535,"linkinfo":{"info_kind":"veth"},"num_tx_queues":2,"num_rx_queues":2,"gso_max_size":65536,"gso_max_segs":65535,"tso_max_size":524280,"tso_max_segs":65535,"gro_max_size":65536,"addr_info":[{"family":"inet","local":"10.88.0.5","prefixlen":16,"scope":"global","label":"eth0","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fd00:88::5","prefixlen":64,"scope":"global","nodad":true,"valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"fe80::42:aff:fe58:5","prefixlen":64,"scope":"link","tentative":true,"valid_life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":3,"ifname":"tp0","flags":["NO-CARRIER","BROADCAST","MULTICAST","UP"],"mtu":1400,"qdisc":"pfifo_fast","operstate":"DOWN","linkmode":"DEFAULT","group":"default","txqlen":1000,"link_type":"ether","address":"6a:81:c7:3b:4f:92","broadcast":"ff:ff:ff:ff:ff:ff","promiscuity":0,"allmulti":0,"min_mtu":68,"max_mtu":65521,"linkinfo":{"info_kind":"tun","info_data":{"type":"tap","pi":false,"vnet_hdr":true,"multi_queue":false,"persist":true}},"inet6_addr_gen_mode":"none","num_tx_queues":1,"num_rx_queues":1,"gso_max_size":65536,"gso_max_segs":65535,"tso_max_size":65536,"tso_max_segs":65535,"gro_max_size":65536,"addr_info":[]}]"#;
    const ROUTES_V4: &str = r#"[{"dst":"default","gateway":"10.88.0.1","dev":"eth0","flags":[]},{"dst":"10.88.0.0/16","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.88.0.5","flags":[]},{"type":"blackhole","dst":"10.99.0.0/16","flags":[]},{"dst":"192.168.7.0/24","gateway":"10.88.0.254","dev":"eth0","flags":[]},{"dst":"172.16.0.9","dev":"eth0","scope":"link","flags":[]}]"#;
    const ROUTES_V6: &str = r#"[{"dst":"fd00:88::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},{"dst":"fe80::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},{"dst":"default","gateway":"fd00:88::1","dev":"eth0","metric":1024,"flags":[],"pref":"medium"}]"#;
    const QDISC_SHOW: &str = r#"[{"kind":"noqueue","handle":"0:","dev":"v0","root":true,"refcnt":2,"options":{}},{"kind":"ingress","handle":"ffff:","dev":"v0","parent":"ffff:fff1","options":{}},{"kind":"pfifo_fast","handle":"0:","dev":"tp0","root":true,"refcnt":2,"options":{"bands":3,"priomap":[1,2,2,2,1,2,0,0,1,1,1,1,1,1,1,1],"multiqueue":false}},{"kind":"ingress","handle":"ffff:","dev":"tp0","parent":"ffff:fff1","options":{}}]"#;
    const FILTER_SHOW: &str = r#"[{"parent":"ffff:","protocol":"all","pref":49152,"kind":"u32","chain":0},{"parent":"ffff:","protocol":"all","pref":49152,"kind":"u32","chain":0,"options":{"fh":"800:","ht_divisor":1}},{"parent":"ffff:","protocol":"all","pref":49152,"kind":"u32","chain":0,"options":{"fh":"800::800","order":2048,"key_ht":"800","bkt":"0","not_in_hw":true,"match":{"value":"0","mask":"0","offmask":"","off":0},"actions":[{"order":1,"kind":"mirred","mirred_action":"redirect","direction":"egress","to_dev":"tp0","control_action":{"type":"stolen"},"index":1,"ref":1,"bind":1}]}}]"#;
    // The same filter after its target device was deleted.
    const FILTER_DANGLING: &str = r#"[{"parent":"ffff:","protocol":"all","pref":49152,"kind":"u32","chain":0},{"parent":"ffff:","protocol":"all","pref":49152,"kind":"u32","chain":0,"options":{"fh":"800:","ht_divisor":1}},{"parent":"ffff:","protocol":"all","pref":49152,"kind":"u32","chain":0,"options":{"fh":"800::800","order":2048,"key_ht":"800","bkt":"0","not_in_hw":true,"match":{"value":"0","mask":"0","offmask":"","off":0},"actions":[{"order":1,"kind":"mirred","mirred_action":"redirect","direction":"egress","to_dev":"*","control_action":{"type":"stolen"},"index":1,"ref":1,"bind":1}]}}]"#;

    fn route(destination: &str, gateway: Option<&str>) -> RouteConfig {
        RouteConfig { destination: destination.into(), gateway: gateway.map(Into::into), device: Some("eth0".into()) }
    }

    #[test]
    fn the_container_interface_and_its_addresses_are_found() {
        let links: Vec<IpLink> = parse_json("ip", ADDR_SHOW).unwrap();
        let link = select_interface(&links).unwrap();
        assert_eq!(link.ifname, "eth0");
        assert_eq!(link.mtu, 1400);
        assert_eq!(link.address.as_deref(), Some("02:42:0a:58:00:05"));
        let (v4, v6) = addresses(link);
        assert_eq!(v4, ["10.88.0.5/16"]);
        assert_eq!(v6, ["fd00:88::5/64"]);
    }

    #[test]
    fn several_or_no_ethernet_interfaces_are_reported_by_name() {
        let links: Vec<IpLink> = parse_json("ip", ADDR_SHOW).unwrap();
        let mut two = links.clone();
        two.push(IpLink { ifname: "eth1".into(), ..links[1].clone() });
        assert_eq!(select_interface(&two).unwrap_err(), ["eth0", "eth1"]);
        let only_lo_and_tap: Vec<IpLink> = links.into_iter().filter(|l| l.ifname != "eth0").collect();
        assert!(select_interface(&only_lo_and_tap).unwrap_err().is_empty());
    }

    #[test]
    fn routes_through_the_interface_are_kept_link_routes_first() {
        let v4: Vec<IpRoute> = parse_json("ip", ROUTES_V4).unwrap();
        assert_eq!(
            guest_routes(&v4, "eth0", Family::V4).unwrap(),
            [
                route("172.16.0.9/32", None),
                route("0.0.0.0/0", Some("10.88.0.1")),
                route("192.168.7.0/24", Some("10.88.0.254"))
            ]
        );
        let v6: Vec<IpRoute> = parse_json("ip", ROUTES_V6).unwrap();
        assert_eq!(guest_routes(&v6, "eth0", Family::V6).unwrap(), [route("::/0", Some("fd00:88::1"))]);
        assert!(guest_routes(&v4, "eth1", Family::V4).unwrap().is_empty());
    }

    #[test]
    fn multipath_routes_are_refused() {
        let json = r#"[{"dst":"default","flags":[],"nexthops":[{"gateway":"10.88.0.1","dev":"eth0","weight":1,"flags":[]},{"gateway":"10.88.0.2","dev":"eth0","weight":1,"flags":[]}]}]"#;
        let routes: Vec<IpRoute> = parse_json("ip", json).unwrap();
        let (route, reason) = guest_routes(&routes, "eth0", Family::V4).unwrap_err();
        assert_eq!(route, "default");
        assert!(reason.contains("multipath"), "{reason}");
    }

    #[test]
    fn ingress_qdiscs_and_redirects_are_recognised() {
        let qdiscs: Vec<TcQdisc> = parse_json("tc", QDISC_SHOW).unwrap();
        let ingress: Vec<_> = qdiscs.into_iter().filter(|q| q.kind == "ingress").filter_map(|q| q.dev).collect();
        assert_eq!(ingress, ["v0", "tp0"]);

        let filters: Vec<TcFilter> = parse_json("tc", FILTER_SHOW).unwrap();
        let ours: Vec<_> = filters.iter().filter(|f| f.redirects_to("tp0", false)).collect();
        assert_eq!(ours.len(), 1);
        assert_eq!(ours[0].options.as_ref().unwrap().fh.as_deref(), Some("800::800"));
        assert_eq!(ours[0].pref, Some(49152));
        assert!(!filters.iter().any(|f| f.redirects_to("tp1", true)));
        assert_eq!(filters.iter().filter(|f| f.acts()).count(), 1);

        let dangling: Vec<TcFilter> = parse_json("tc", FILTER_DANGLING).unwrap();
        assert!(!dangling.iter().any(|f| f.redirects_to("tp0", false)));
        assert!(dangling.iter().any(|f| f.redirects_to("tp0", true)));
    }

    #[test]
    fn bad_json_is_reported_with_the_command_and_a_snippet() {
        assert!(parse_json::<IpLink>("ip x", "  \n").unwrap().is_empty());
        let err = parse_json::<IpLink>("ip -j link show", r#"[{"ifname":"eth0","mtu":"big"}]"#).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ip -j link show") && text.contains("\"big\""), "{text}");
    }

    #[test]
    fn resolv_conf_parses_as_glibc_reads_it() {
        let text = "# written by podman\n\
                    search old.example\n\
                    nameserver 10.88.0.1\n\
                    nameserver fe80::1%eth0\n\
                    nameserver  2001:db8::53 # v6\n\
                    nameserver not-an-address\n\
                    domain ignored.example\n\
                    search dns.podman example.com\n\
                    ; options ignored\n\
                    options ndots:2 timeout:1\n\
                    options edns0\n";
        assert_eq!(
            dns_from_resolv_conf(text),
            DnsConfig {
                nameservers: vec!["10.88.0.1".into(), "2001:db8::53".into()],
                search: vec!["dns.podman".into(), "example.com".into()],
                options: vec!["ndots:2".into(), "timeout:1".into(), "edns0".into()],
            }
        );
        assert_eq!(dns_from_resolv_conf("domain corp.example\n").search, ["corp.example"]);
        assert_eq!(dns_from_resolv_conf(""), DnsConfig::default());
    }

    #[test]
    fn tap_names_are_checked() {
        for bad in ["", "a-name-that-is-too-long", "a/b", "a b", "-x", "eth0:1"] {
            assert!(matches!(check_tap_name(bad), Err(NetworkError::InvalidTapName(_))), "{bad:?}");
        }
        check_tap_name("husk-tap0").unwrap();
    }

    #[test]
    fn the_agent_and_vmm_configs_carry_the_interface() {
        let network = GuestNetwork {
            tap_name: "husk-tap0".into(),
            interface: "eth0".into(),
            mac: "02:42:0a:58:00:05".into(),
            mtu: 1400,
            addresses: vec!["10.88.0.5/16".into()],
            routes: vec![route("0.0.0.0/0", Some("10.88.0.1"))],
            ipv6_addresses: vec!["fd00:88::5/64".into()],
            ipv6_routes: vec![route("::/0", Some("fd00:88::1"))],
        };
        let dns = DnsConfig { nameservers: vec!["10.88.0.1".into()], ..Default::default() };
        assert_eq!(
            network.to_agent_config(Some(dns.clone())),
            NetworkConfig {
                interfaces: vec![InterfaceConfig {
                    name: "eth0".into(),
                    mac: Some("02:42:0a:58:00:05".into()),
                    addresses: vec!["10.88.0.5/16".into()],
                    mtu: Some(1400),
                }],
                routes: vec![route("0.0.0.0/0", Some("10.88.0.1"))],
                dns: Some(dns),
            }
        );
        let nic = network.vmm_interface("eth0");
        nic.validate().unwrap();
        assert_eq!((nic.host_dev_name.as_str(), nic.guest_mac.as_deref()), ("husk-tap0", Some("02:42:0a:58:00:05")));
    }

    // ---- Live tests: real namespaces, veths and TAPs (root, as on CI). ----

    const TAP: &str = "husk-tap0";
    const MAC: &str = "02:42:0a:58:00:05";
    const TEST_ETHERTYPE: u16 = 0x88b5;
    static NEXT_NETNS: AtomicU32 = AtomicU32::new(0);

    /// Runs iproute2 on the test's behalf; panics with its stderr on failure.
    fn sh(program: &str, args: &[&str]) -> String {
        let output = Command::new(tool(program)).args(args).output().expect(program);
        assert!(output.status.success(), "{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }

    fn json(program: &str, args: &[&str]) -> serde_json::Value {
        let out = sh(program, args);
        if out.trim().is_empty() {
            return serde_json::json!([]);
        }
        serde_json::from_str(&out).unwrap()
    }

    /// Named namespaces of one test, deleted (with the veths and TAPs in
    /// them) when it ends, however it ends.
    struct Namespaces(Vec<String>);

    impl Namespaces {
        fn new(count: usize) -> Self {
            let test = NEXT_NETNS.fetch_add(1, Ordering::SeqCst);
            let names = (0..count).map(|i| format!("husk-test-{}-{test}-{i}", std::process::id())).collect();
            let namespaces = Self(names);
            for name in &namespaces.0 {
                sh("ip", &["netns", "add", name]);
            }
            namespaces
        }

        fn name(&self, i: usize) -> &str {
            &self.0[i]
        }

        fn path(&self, i: usize) -> PathBuf {
            Path::new("/run/netns").join(&self.0[i])
        }
    }

    impl Drop for Namespaces {
        fn drop(&mut self) {
            for name in &self.0 {
                let _ = Command::new(tool("ip")).args(["netns", "del", name]).status();
            }
        }
    }

    /// A container's namespace (0) as podman leaves it, its veth's peer in
    /// a namespace of its own (1) standing in for the host's bridge.
    fn container() -> Namespaces {
        let ns = Namespaces::new(2);
        let (c, h) = (ns.name(0), ns.name(1));
        sh("ip", &["link", "add", "eth0", "netns", c, "type", "veth", "peer", "name", "peer0", "netns", h]);
        sh("ip", &["-n", c, "link", "set", "eth0", "address", MAC, "mtu", "1400", "up"]);
        sh("ip", &["-n", c, "address", "add", "10.88.0.5/16", "dev", "eth0"]);
        sh("ip", &["-n", c, "address", "add", "fd00:88::5/64", "dev", "eth0", "nodad"]);
        sh("ip", &["-n", c, "route", "add", "default", "via", "10.88.0.1"]);
        sh("ip", &["-n", h, "link", "set", "peer0", "mtu", "1400", "addrgenmode", "none", "up"]);
        ns
    }

    fn link(netns: &str, name: &str) -> Option<serde_json::Value> {
        let links = json("ip", &["-n", netns, "-j", "link", "show"]);
        links.as_array().unwrap().iter().find(|l| l["ifname"] == name).cloned()
    }

    fn has_ingress(netns: &str, dev: &str) -> bool {
        let qdiscs = json("tc", &["-n", netns, "-j", "qdisc", "show", "dev", dev]);
        qdiscs.as_array().unwrap().iter().any(|q| q["kind"] == "ingress")
    }

    /// The devices the ingress filters of `dev` redirect to.
    fn redirect_targets(netns: &str, dev: &str) -> Vec<String> {
        let filters = json("tc", &["-n", netns, "-j", "filter", "show", "dev", dev, "ingress"]);
        let mut targets = Vec::new();
        for filter in filters.as_array().unwrap() {
            for action in filter["options"]["actions"].as_array().into_iter().flatten() {
                if action["kind"] == "mirred" && action["mirred_action"] == "redirect" {
                    targets.push(action["to_dev"].as_str().unwrap().to_owned());
                }
            }
        }
        targets
    }

    fn check(ret: libc::c_int, what: &str) {
        assert!(ret >= 0, "{what}: {}", io::Error::last_os_error());
    }

    /// Attaches to the TAP as husk-vmm does (same flags, 12-byte header).
    fn open_tap(name: &str) -> File {
        let tap = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .expect("open /dev/net/tun");
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        request.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the ifreq, a live local.
        check(unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETIFF, &mut request) }, "TUNSETIFF");
        let hdr_len: libc::c_int = 12;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int, a live local.
        check(unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) }, "TUNSETVNETHDRSZ");
        tap
    }

    /// A packet socket on `dev` for the test EtherType only.
    fn packet_socket(dev: &str) -> OwnedFd {
        let protocol = TEST_ETHERTYPE.to_be();
        // SAFETY: a plain socket call; the result is checked.
        let fd = unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, protocol.into())
        };
        check(fd, "socket(AF_PACKET)");
        // SAFETY: the descriptor was just created and is owned here only.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(dev).unwrap();
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0, "no {dev}");
        // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: bind reads `addr`, a live sockaddr_ll of the given size.
        let ret = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        check(ret, "bind(AF_PACKET)");
        fd
    }

    fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        frame.extend_from_slice(&dst);
        frame.extend_from_slice(&src);
        frame.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
        frame.extend_from_slice(payload);
        frame.resize(frame.len().max(60), 0);
        frame
    }

    /// Reads frames from `fd` until one (after `skip` header bytes) is
    /// `want`, for up to five seconds.
    fn expect_frame(fd: libc::c_int, skip: usize, want: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 2048];
        let mut seen = 0;
        while Instant::now() < deadline {
            let mut pollfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one live pollfd.
            check(unsafe { libc::poll(&mut pollfd, 1, 100) }, "poll");
            // SAFETY: the kernel writes at most buf.len() bytes into buf.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let err = io::Error::last_os_error();
                assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "read: {err}");
                continue;
            }
            seen += 1;
            if buf.get(skip..n as usize) == Some(want) {
                return;
            }
        }
        panic!("the frame did not arrive ({seen} others did)");
    }

    fn send(fd: libc::c_int, data: &[u8]) {
        // SAFETY: the kernel reads data.len() bytes of `data`.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        check(n as libc::c_int, "write");
        assert_eq!(n as usize, data.len());
    }

    #[test]
    fn network_prepare_connects_the_tap_and_teardown_removes_it() {
        let ns = container();
        let (c, h) = (ns.name(0), ns.name(1));
        let network = prepare(&ns.path(0), TAP).unwrap();
        assert_eq!(
            network,
            GuestNetwork {
                tap_name: TAP.into(),
                interface: "eth0".into(),
                mac: MAC.into(),
                mtu: 1400,
                addresses: vec!["10.88.0.5/16".into()],
                routes: vec![route("0.0.0.0/0", Some("10.88.0.1"))],
                ipv6_addresses: vec!["fd00:88::5/64".into()],
                ipv6_routes: vec![],
            }
        );
        assert_eq!(redirect_targets(c, "eth0"), [TAP]);
        assert_eq!(redirect_targets(c, TAP), ["eth0"]);
        let tap = link(c, TAP).expect("the TAP exists");
        assert_eq!(tap["mtu"], 1400);
        assert!(tap["flags"].as_array().unwrap().iter().any(|f| f == "UP"), "{tap}");

        // The VMM's side of the TAP, and the bridge's side of the veth.
        let netns = NetnsHandle::open(&ns.path(0)).unwrap();
        let tap = netns.run(|| open_tap(TAP)).unwrap();
        let peer = NetnsHandle::open(&ns.path(1)).unwrap().run(|| packet_socket("peer0")).unwrap();
        let guest_mac: MacAddr = MAC.parse().unwrap();
        let peer_mac: MacAddr = link(h, "peer0").unwrap()["address"].as_str().unwrap().parse().unwrap();

        let out = frame([0xff; 6], guest_mac.0, b"husk: from the guest");
        send(tap.as_raw_fd(), &[vec![0u8; 12], out.clone()].concat());
        expect_frame(peer.as_raw_fd(), 0, &out);

        let back = frame(guest_mac.0, peer_mac.0, b"husk: to the guest");
        send(peer.as_raw_fd(), &back);
        expect_frame(tap.as_raw_fd(), 12, &back);

        // As when the VMM was killed: its queue closes, the TAP stays.
        drop(tap);
        assert!(link(c, TAP).is_some());
        teardown(&ns.path(0), TAP).unwrap();
        assert!(link(c, TAP).is_none());
        assert!(!has_ingress(c, "eth0"));
        assert!(link(c, "eth0").is_some(), "the veth is the engine's");
        teardown(&ns.path(0), TAP).unwrap();

        // Connecting again works on the cleaned namespace.
        prepare(&ns.path(0), TAP).unwrap();
        assert_eq!(redirect_targets(c, "eth0"), [TAP]);
        teardown(&ns.path(0), TAP).unwrap();
        assert!(link(c, TAP).is_none() && !has_ingress(c, "eth0"));
    }

    #[test]
    fn network_teardown_cleans_up_after_the_tap_vanished_and_the_namespace_too() {
        let ns = container();
        let c = ns.name(0);
        prepare(&ns.path(0), TAP).unwrap();
        sh("ip", &["-n", c, "link", "del", "dev", TAP]);
        assert_eq!(redirect_targets(c, "eth0"), ["*"]);
        teardown(&ns.path(0), TAP).unwrap();
        assert!(!has_ingress(c, "eth0"));

        sh("ip", &["netns", "del", c]);
        teardown(&ns.path(0), TAP).unwrap();
        // What an unmounted namespace leaves behind: a plain file.
        let leftover = std::env::temp_dir().join(format!("husk-test-netns-{}", std::process::id()));
        std::fs::write(&leftover, "").unwrap();
        let result = teardown(&leftover, TAP);
        std::fs::remove_file(&leftover).unwrap();
        result.unwrap();
        let err = prepare(&leftover, TAP).unwrap_err();
        assert!(matches!(err, NetworkError::OpenNetns { .. }), "{err}");
    }

    #[test]
    fn network_teardown_leaves_other_filters_and_non_taps_alone() {
        let ns = container();
        let c = ns.name(0);
        prepare(&ns.path(0), TAP).unwrap();
        // Someone else's filter on the same qdisc keeps it.
        sh(
            "tc",
            &[
                "-n", c, "filter", "add", "dev", "eth0", "parent", "ffff:", "pref", "7", "protocol", "ip", "u32",
                "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev", "lo",
            ],
        );
        teardown(&ns.path(0), TAP).unwrap();
        assert!(has_ingress(c, "eth0"));
        assert!(redirect_targets(c, "eth0").is_empty());
        let left = json("tc", &["-n", c, "-j", "filter", "show", "dev", "eth0", "ingress"]);
        assert!(left.as_array().unwrap().iter().any(|f| f["pref"] == 7), "{left}");

        let err = teardown(&ns.path(0), "eth0").unwrap_err();
        assert!(matches!(err, NetworkError::NotATap { ref kind, .. } if kind == "veth"), "{err}");
        assert!(link(c, "eth0").is_some());
    }

    #[test]
    fn network_prepare_refuses_namespaces_it_cannot_serve() {
        let ns = Namespaces::new(2);
        let c = ns.name(0);
        let err = prepare(&ns.path(0), TAP).unwrap_err();
        assert!(matches!(err, NetworkError::NoInterface { .. }), "{err}");

        sh("ip", &["-n", c, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]);
        let err = prepare(&ns.path(0), TAP).unwrap_err();
        assert!(
            matches!(err, NetworkError::SeveralInterfaces { ref names, .. } if names == &["eth0", "eth1"]),
            "{err}"
        );

        sh("ip", &["-n", c, "link", "set", "eth1", "netns", ns.name(1)]);
        let err = prepare(&ns.path(0), "eth0").unwrap_err();
        assert!(matches!(err, NetworkError::TapExists { .. }), "{err}");

        sh("tc", &["-n", c, "qdisc", "add", "dev", "eth0", "ingress"]);
        let err = prepare(&ns.path(0), TAP).unwrap_err();
        assert!(matches!(err, NetworkError::IngressInUse { .. }), "{err}");
        assert!(link(c, TAP).is_none());

        let err = prepare(Path::new("/run/netns/husk-test-does-not-exist"), TAP).unwrap_err();
        assert!(matches!(err, NetworkError::OpenNetns { .. }), "{err}");
    }
}

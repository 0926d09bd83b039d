//! The boundary between the API server thread and the VMM: requests the API
//! turns HTTP into, and what the VMM answers. The HTTP layer knows nothing of
//! KVM; the VMM knows nothing of HTTP.

use husk_api::devices::{FsConfig, NetworkInterfaceConfig, VsockConfig};
use husk_api::vmm::{
    BootSourceConfig, FullVmConfig, InstanceInfo, LoggerConfig, MachineConfig, MachineConfigUpdate, MetricsConfig,
    VmState,
};

/// One request from the API to the VMM.
#[derive(Clone, Debug, PartialEq)]
pub enum VmmAction {
    /// `GET /`
    GetInstanceInfo,
    /// `GET /machine-config`
    GetMachineConfig,
    /// `GET /vm/config`
    GetVmConfig,
    /// `PUT /boot-source` (pre-boot only)
    PutBootSource(BootSourceConfig),
    /// `PUT /machine-config` (pre-boot only)
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config` (pre-boot only)
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /logger` (pre-boot only)
    PutLogger(LoggerConfig),
    /// `PUT /metrics` (pre-boot only)
    PutMetrics(MetricsConfig),
    /// `PUT /vsock` (pre-boot only): sets the vsock device, replacing any.
    PutVsock(VsockConfig),
    /// `PUT /network-interfaces/{iface_id}` (pre-boot only): adds a network
    /// interface, or replaces the one with the same `iface_id`.
    PutNetworkInterface(NetworkInterfaceConfig),
    /// `PUT /fs/{fs_id}` (pre-boot only, husk's extension): adds a virtio-fs
    /// share, or replaces the one with the same `fs_id`.
    PutFs(FsConfig),
    /// `PUT /actions` `InstanceStart` (pre-boot only)
    InstanceStart,
    /// `PUT /actions` `SendCtrlAltDel` (post-boot only)
    SendCtrlAltDel,
    /// `PUT /actions` `FlushMetrics`
    FlushMetrics,
    /// `PATCH /vm` (post-boot only)
    PatchVm(VmState),
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq)]
pub enum VmmData {
    /// 204 No Content.
    Empty,
    /// 200 with the body.
    InstanceInfo(InstanceInfo),
    MachineConfig(MachineConfig),
    VmConfig(FullVmConfig),
}

/// A refused or failed request: 400 with `{"fault_message": …}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VmmActionError(pub String);

pub type VmmResponse = Result<VmmData, VmmActionError>;

#!/usr/bin/env python3
"""Writes the seed corpus (vmm/fuzz/seeds/<target>/): one or a few inputs
per target that get past the first checks (a device activated, a connection
established, a FUSE session started), in the input formats the drivers in
vmm/src/fuzz/ read. Re-run after changing a driver's format; `cargo test -p
husk-vmm` replays every seed."""

import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def u8(v): return struct.pack("<B", v)
def u16(v): return struct.pack("<H", v)
def u32(v): return struct.pack("<I", v)
def u64(v): return struct.pack("<Q", v)


def data(b):
    """Input::data: a u16 length, then the bytes."""
    return u16(len(b)) + b


def write(target, name, content):
    os.makedirs(os.path.join(ROOT, target), exist_ok=True)
    with open(os.path.join(ROOT, target, name), "wb") as f:
        f.write(content)


# -- virtqueue driver (driver.rs) --------------------------------------------

BUFFERS = 0x2_0000


def addr(offset):
    """buffer_addr, mode 0: BUFFERS + offset."""
    return u8(0) + u32(offset)


def length(n):
    """Input::len, mode 1: a u16."""
    return u8(1) + u16(n)


def chain(descs):
    """Ring::hostile_op 3: a linked chain of (offset, len, content, writable)."""
    out = u8(3) + u8(len(descs) - 1)
    for offset, n, content, writable in descs:
        out += addr(offset) + length(n) + data(content) + u8(1 if writable else 0)
    return out


# -- virtio_net (net.rs) -----------------------------------------------------

VERSION_1 = 1 << 32
MRG_RXBUF = 1 << 15
CSUM = 1 << 0
GUEST_CSUM = 1 << 1
frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + bytes(range(46))
net = u64(VERSION_1 | MRG_RXBUF | CSUM | GUEST_CSUM) + u8(8)
net += u8(1) + chain([(0, 12, bytes(12), False), (0x1000, len(frame), frame, False)])
net += u8(4) + u8(5) + u8(6)
net += u8(0) + chain([(0x8000, 4096, b"", True)]) + u8(0) + chain([(0x9000, 100, b"", True)])
net += u8(2) + u16(200) + u8(0) + data(bytes(12) + frame) + u8(3) + u8(5)
net += u8(7) + u64(VERSION_1) + u8(4) + u8(0) + chain([(0x8000, 4096, b"", True)]) + u8(2) + u16(80) + u8(0) + data(
    bytes(12) + frame) + u8(3) + u8(5)
write("virtio_net", "tx-rx-reset", net)

# -- virtio_vsock, vsock_muxer (vsock.rs) -------------------------------------


def port(kind, value=0):
    """vsock.rs port(): 0/1 services, 2 host-initiated (+value), 3 small."""
    if kind in (0, 1, 4):
        return u8(kind)
    return u8(kind) + u8(value)


def packet(src, dst, op, payload=b"", flags=0):
    # src cid, dst cid right; ports; op selector; stream type; flags;
    # buf_alloc 256 KiB; fwd_cnt; payload; truthful len; no cuts.
    op_selector = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6}[op]
    return (u8(0) + u8(1) + u8(1) + src + dst + u8(op_selector) + u8(1) + u8(1) + u8(flags) + u8(0) + u32(0)
            + data(payload) + u8(1) + u8(0))


def rx_buffers(count):
    return u8(1) + u8(count - 1) + (u8(0) + u8(0)) * count


guest_conn = (rx_buffers(8) + packet(port(3, 50), port(0), 1) + u8(5) + u8(4)
              + packet(port(3, 50), port(0), 5, b"hello from the guest") + u8(5)
              + u8(3) + u8(1) + u8(0)  # host reads
              + u8(3) + u8(0) + u8(0) + data(b"hello from the host") + u8(5) + u8(6)
              + rx_buffers(8) + packet(port(3, 50), port(0), 4, flags=3) + u8(5)
              + packet(port(3, 50), port(0), 3) + u8(5))
host_conn = (rx_buffers(8) + u8(2) + u8(1) + port(3, 77) + u8(5)
             + packet(port(3, 77), port(2, 0), 2) + u8(5)
             + u8(3) + u8(0) + u8(0) + data(b"data for the guest") + u8(5) + u8(6)
             + packet(port(3, 77), port(2, 0), 5, b"reply") + u8(5)
             + packet(port(3, 77), port(2, 0), 7) + u8(5) + u8(7) + u8(8) + rx_buffers(2) + u8(5))
for target in ("virtio_vsock", "vsock_muxer"):
    write(target, "guest-connection", u8(8) + guest_conn)
    write(target, "host-connection", u8(8) + host_conn)

# -- fuse, virtio_fs (fs.rs) --------------------------------------------------


def fuse_request(opcode, nodeid, body):
    # opcode selector, node selector, body; then in request(): truthful
    # length, uid 0, a 128 KiB reply buffer, no split, request queue.
    return u8(1) + u8(opcode) + u8(1) + u8(nodeid) + data(body) + u8(1) + u8(1) + u8(2) + u8(1) + u8(1)


LOOKUP, GETATTR, SYMLINK, MKDIR, OPEN, READ, WRITE, OPENDIR, READDIR, CREATE = 1, 3, 6, 9, 14, 15, 16, 27, 28, 35


def read_in(fh, size):
    return u64(fh) + u64(0) + u32(size) + u32(0) + u64(0) + u32(0) + u32(0)


session = b"".join([
    fuse_request(LOOKUP, 1, b"file\0"),
    fuse_request(GETATTR, 2, u32(0) + u32(0) + u64(0)),
    fuse_request(OPEN, 2, u32(2) + u32(0)),
    fuse_request(READ, 2, read_in(0, 4096)),
    fuse_request(READ, 2, read_in(1, 4096)),
    fuse_request(WRITE, 2, u64(1) + u64(10) + u32(5) + u32(0) + u64(0) + u32(0) + u32(0) + b"hello"),
    fuse_request(MKDIR, 1, u32(0o755) + u32(0o022) + b"newdir\0"),
    fuse_request(CREATE, 1, u32(0o102) + u32(0o644) + u32(0o022) + u32(0) + b"new\0"),
    fuse_request(SYMLINK, 1, b"newlink\0file\0"),
    fuse_request(OPENDIR, 1, u32(0) + u32(0)),
    fuse_request(READDIR, 1, read_in(3, 4096)),
    fuse_request(LOOKUP, 1, b"dir\0"),
    fuse_request(LOOKUP, 6, b"inner\0"),
])
write("fuse", "session", u8(0) + u32(0) + session)
write("fuse", "read-only-session", u8(1) + u32(0) + session)
write("virtio_fs", "session", u8(0) + u8(8) + u8(5) + u8(8) + u32(0)
      + b"".join(u8(4) + fuse_request(op, node, body) for op, node, body in [
          (LOOKUP, 1, b"file\0"), (OPEN, 2, u32(0) + u32(0)), (READ, 2, read_in(1, 100))]))

# -- virtio_mmio (mmio.rs) ----------------------------------------------------


def reg_write(offset, value):
    return u8(0) + u8(offset // 4) + u8(3) + u32(value)


STATUS, FEATURES_SEL, FEATURES, QUEUE_SEL, QUEUE_NUM, QUEUE_READY = 0x70, 0x24, 0x20, 0x30, 0x38, 0x44
DESC, DRIVER, DEVICE = 0x80, 0x90, 0xa0
for kind, name, queues in [(0, "net", 2), (1, "vsock", 3), (2, "fs", 2)]:
    seed = u8(kind) + reg_write(STATUS, 1) + reg_write(STATUS, 3)
    seed += reg_write(FEATURES_SEL, 1) + reg_write(FEATURES, 1) + reg_write(STATUS, 11)
    for q in range(queues):
        base = q * 0x4000
        seed += reg_write(QUEUE_SEL, q) + reg_write(QUEUE_NUM, 256) + reg_write(DESC, base)
        seed += reg_write(DRIVER, base + 0x1000) + reg_write(DEVICE, base + 0x1800) + reg_write(QUEUE_READY, 1)
    seed += reg_write(STATUS, 15) + u8(5)
    seed += u8(3) + u8(1) + u8(0) + u8(3) + u8(0)  # an 8-byte config read
    seed += u8(2) + u8(0x70 // 4) + reg_write(STATUS, 0) + u8(5)
    write("virtio_mmio", name, seed)

# -- agent_protocol (api.rs) --------------------------------------------------


def frame_of(message):
    body = json.dumps(message).encode()
    return b"HK" + u16(1) + u32(len(body)) + body


write("agent_protocol", "responses", b"".join(frame_of(m) for m in [
    {"result": "pong", "agent_version": "0.1.0", "uptime_us": 12345},
    {"result": "created", "pid": 7, "received_us": 1},
    {"result": "exited", "code": 137, "signal": 9, "oom_killed": True},
    {"result": "stats", "memory_current_bytes": 1, "memory_max_bytes": None, "memory_oom_kills": 0,
     "cpu_usage_us": 2, "cpu_user_us": 1, "cpu_system_us": 1, "pids_current": 1, "pids_max": 32},
    {"result": "error", "kind": "not_found", "message": "no container c1"},
    {"result": "done"},
]))
write("agent_protocol", "requests", b"".join(frame_of(m) for m in [
    {"op": "ping"},
    {"op": "start", "container_id": "c1"},
    {"op": "signal", "container_id": "c1", "signal": 15, "all": True},
    {"op": "resize_pty", "container_id": "c1", "exec_id": "e1", "rows": 24, "cols": 80},
    {"op": "update", "container_id": "c1", "resources": {"memory": {"limit": 1048576}, "pids": {"limit": 10}}},
    {"op": "set_hostname", "hostname": "box"},
    {"op": "delete", "container_id": "c1", "force": True},
]))

# -- api_request, api_http (api.rs) -------------------------------------------

API = [
    ("PUT", "/boot-source", {"kernel_image_path": "/vmlinux", "boot_args": "console=ttyS0"}),
    ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256}),
    ("PATCH", "/machine-config", {"vcpu_count": 1}),
    ("PUT", "/network-interfaces/eth0", {"iface_id": "eth0", "host_dev_name": "tap0",
                                         "guest_mac": "06:00:ac:10:00:02"}),
    ("PUT", "/vsock", {"guest_cid": 3, "uds_path": "/tmp/v.sock"}),
    ("PUT", "/fs/root", {"fs_id": "root", "tag": "root", "shared_dir": "/tmp", "read_only": True}),
    ("PUT", "/logger", {"log_path": "/tmp/log", "level": "Info"}),
    ("PUT", "/metrics", {"metrics_path": "/tmp/metrics"}),
    ("PUT", "/actions", {"action_type": "InstanceStart"}),
    ("PATCH", "/vm", {"state": "Paused"}),
    ("GET", "/", None),
    ("GET", "/vm/config", None),
]
METHODS = {"GET": 0, "PUT": 1, "PATCH": 3}
for i, (method, path, body) in enumerate(API):
    encoded = json.dumps(body).encode() if body is not None else b""
    name = f"{i:02}-{method.lower()}-{path.strip('/').replace('/', '-') or 'root'}"
    write("api_request", name, u8(METHODS[method]) + path.encode() + b"\n" + encoded)
http = b""
for method, path, body in API:
    encoded = json.dumps(body).encode() if body is not None else b""
    http += f"{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(encoded)}\r\n\r\n".encode()
    http += encoded
write("api_http", "keep-alive", http)
write("api_http", "expect-continue",
      b"PUT /vsock HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 40\r\n\r\n"
      b'{"guest_cid": 3, "uds_path": "/tmp/v.s"}'
      b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /machine-config HTTP/1.1\r\nConnection: close\r\n\r\n")

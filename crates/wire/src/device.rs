//! The frame boundary: a [`FrameDevice`] moves whole Ethernet frames between the sandbox and
//! the engine. The TAP is one; an in-memory pair serves unit tests; a VM's socket will be
//! another. smoltcp sees frames only through [`StackDevice`], one frame at a time, after the
//! engine has classified and judged them.

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::offload::{self, TcpOffload, UdpSegments, VNET_HDR_LEN};

/// Ethernet header length.
pub const ETH_HEADER: usize = 14;

/// Moves Ethernet frames to and from the sandbox.
pub trait FrameDevice {
    /// Reads one frame into `buf`; `Ok(None)` when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
    /// Writes one frame, checksums complete. A full queue drops it (the guest's stack
    /// retransmits).
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// The descriptor to wait on for readability, if the device has one.
    fn raw_fd(&self) -> Option<RawFd>;
    /// Whether the device offloads TCP (see the `offload` module): it takes TCP segments of
    /// up to 64 KiB with the checksum left to the sandbox's kernel, through
    /// [`FrameDevice::send_tcp`]. `false` (the default) for devices that carry plain frames.
    fn offloads_tcp(&self) -> bool {
        false
    }
    /// Writes a TCP frame whose checksum field holds the pseudo-header sum, as the
    /// `offload` module prepares it. Only called when [`FrameDevice::offloads_tcp`].
    fn send_tcp(&mut self, frame: &[u8], offload: &TcpOffload) -> io::Result<()> {
        let _ = (frame, offload);
        Err(not_offered("offload TCP"))
    }
    /// Whether the device takes one UDP frame carrying several datagrams for the sandbox's
    /// kernel to split ([`FrameDevice::send_udp_segments`]). `false` by default.
    fn segments_udp(&self) -> bool {
        false
    }
    /// Writes a UDP frame of several datagrams, its checksum field holding the pseudo-header
    /// sum, as [`UdpSegments`] describes it. `ErrorKind::Unsupported` when the device (or the
    /// kernel under it) cannot: the caller sends the datagrams one by one instead, and
    /// [`FrameDevice::segments_udp`] says `false` from then on.
    fn send_udp_segments(&mut self, frame: &[u8], segments: &UdpSegments) -> io::Result<()> {
        let _ = (frame, segments);
        Err(not_offered("split UDP frames"))
    }
}

/// The error of an offload a device does not have.
fn not_offered(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        format!("this device does not {what}"),
    )
}

/// A TAP interface opened without packet information (`IFF_TAP | IFF_NO_PI`), non-blocking;
/// with [`TapDevice::with_offloads`], one opened with a virtio-net header and TCP offloads.
#[derive(Debug)]
pub struct TapDevice {
    fd: OwnedFd,
    /// Frames carry a virtio-net header and TCP is offloaded.
    offloads: bool,
    /// UDP frames of several datagrams are split by the kernel: with the virtio-net header,
    /// until the kernel refuses one (before Linux 6.2).
    udp_segments: bool,
}

impl TapDevice {
    /// Wraps a plain TAP descriptor (made non-blocking here).
    pub fn new(fd: OwnedFd) -> io::Result<TapDevice> {
        let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(TapDevice {
            fd,
            offloads: false,
            udp_segments: false,
        })
    }

    /// Wraps a TAP descriptor opened with `IFF_VNET_HDR`, a [`VNET_HDR_LEN`]-byte header and
    /// `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`, as `moat_sandbox` opens it.
    pub fn with_offloads(fd: OwnedFd) -> io::Result<TapDevice> {
        let mut dev = TapDevice::new(fd)?;
        dev.offloads = true;
        dev.udp_segments = true;
        Ok(dev)
    }

    fn write_with(&mut self, header: &[u8], frame: &[u8]) -> io::Result<()> {
        loop {
            let wrote = if self.offloads {
                nix::sys::uio::writev(&self.fd, &[IoSlice::new(header), IoSlice::new(frame)])
            } else {
                nix::unistd::write(&self.fd, frame)
            };
            match wrote {
                Ok(_) => return Ok(()),
                // The TAP's queue is full: drop, as a wire would; TCP recovers.
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl FrameDevice for TapDevice {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let mut header = [0u8; VNET_HDR_LEN];
        loop {
            // Whatever the header says (checksum partial, a 64 KiB segment), the frame is
            // complete as it is: its IP length covers it, and TCP checksums are not checked
            // on this link.
            let got = if self.offloads {
                nix::sys::uio::readv(
                    &self.fd,
                    &mut [IoSliceMut::new(&mut header), IoSliceMut::new(buf)],
                )
                // A read shorter than the header is an empty frame, dropped as malformed.
                .map(|n| n.saturating_sub(VNET_HDR_LEN))
            } else {
                nix::unistd::read(&self.fd, buf)
            };
            match got {
                Ok(n) => return Ok(Some(n)),
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.write_with(&offload::PLAIN_HEADER, frame)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    fn offloads_tcp(&self) -> bool {
        self.offloads
    }

    fn send_tcp(&mut self, frame: &[u8], offload: &TcpOffload) -> io::Result<()> {
        self.write_with(&offload.header(), frame)
    }

    fn segments_udp(&self) -> bool {
        self.udp_segments
    }

    fn send_udp_segments(&mut self, frame: &[u8], segments: &UdpSegments) -> io::Result<()> {
        if !self.udp_segments {
            return Err(io::ErrorKind::Unsupported.into());
        }
        match self.write_with(&segments.header(), frame) {
            // A kernel without UDP segmentation offload rejects the header's GSO type.
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINVAL as i32) => {
                self.udp_segments = false;
                Err(io::ErrorKind::Unsupported.into())
            }
            r => r,
        }
    }
}

/// An in-memory device for tests: frames pushed to `inbound` are what the sandbox sent;
/// frames the engine sends land in `outbound`.
#[derive(Debug, Default)]
pub struct MemoryDevice {
    /// Frames from the sandbox, oldest first.
    pub inbound: VecDeque<Vec<u8>>,
    /// Frames to the sandbox, oldest first.
    pub outbound: VecDeque<Vec<u8>>,
}

impl FrameDevice for MemoryDevice {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        Ok(self.inbound.pop_front().map(|f| {
            let n = f.len().min(buf.len());
            buf[..n].copy_from_slice(&f[..n]);
            n
        }))
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.outbound.push_back(frame.to_vec());
        Ok(())
    }

    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
}

/// A [`MemoryDevice`] shared between a test and the engine's thread.
#[derive(Debug, Clone, Default)]
pub struct SharedMemoryDevice(pub std::sync::Arc<std::sync::Mutex<MemoryDevice>>);

impl FrameDevice for SharedMemoryDevice {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .recv(buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.0
            .lock()
            .map_err(|_| io::Error::other("poisoned"))?
            .send(frame)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
}

/// smoltcp's view of the device: at most one frame handed in by the engine, and transmits
/// that go straight to the [`FrameDevice`] through one reused buffer.
pub struct StackDevice<'a> {
    /// The frame smoltcp may receive next.
    pub rx: Option<&'a [u8]>,
    /// Where smoltcp's frames go.
    pub dev: &'a mut dyn FrameDevice,
    /// Reused transmit buffer.
    pub tx_buf: &'a mut Vec<u8>,
    /// Largest frame, Ethernet header included.
    pub max_frame: usize,
    /// Frames the device failed to take.
    pub tx_errors: &'a mut u64,
}

/// A received frame.
pub struct Rx<'a>(&'a [u8]);

/// A frame to transmit.
pub struct Tx<'a, 'b> {
    dev: &'a mut dyn FrameDevice,
    buf: &'a mut Vec<u8>,
    errors: &'a mut u64,
    /// The payload size smoltcp asked this segment to be split into.
    segment: Option<u16>,
    _frame: std::marker::PhantomData<&'b ()>,
}

impl phy::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

impl phy::TxToken for Tx<'_, '_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.buf.resize(len, 0);
        let r = f(&mut self.buf[..len]);
        let frame = &mut self.buf[..len];
        let sent = if self.dev.offloads_tcp() {
            // smoltcp left the TCP checksum out (see `capabilities`).
            match offload::prepare_tcp(frame, self.segment) {
                Some(o) => self.dev.send_tcp(frame, &o),
                None => self.dev.send(frame),
            }
        } else {
            self.dev.send(frame)
        };
        if sent.is_err() {
            *self.errors += 1;
        }
        r
    }

    fn set_meta(&mut self, meta: phy::PacketMeta) {
        self.segment = meta.segmentation_offload_size.map(|s| s.get());
    }
}

impl<'a> phy::Device for StackDevice<'a> {
    type RxToken<'b>
        = Rx<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b, 'a>
    where
        Self: 'b;

    fn receive(&mut self, _now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.rx.take()?;
        Some((
            Rx(frame),
            Tx {
                dev: &mut *self.dev,
                buf: &mut *self.tx_buf,
                errors: &mut *self.tx_errors,
                segment: None,
                _frame: std::marker::PhantomData,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        Some(Tx {
            dev: &mut *self.dev,
            buf: &mut *self.tx_buf,
            errors: &mut *self.tx_errors,
            segment: None,
            _frame: std::marker::PhantomData,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.max_frame;
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Both;
        if self.dev.offloads_tcp() {
            // The sandbox's kernel fills TCP checksums of what moat sends, and leaves its
            // own unfilled; nothing on this link can corrupt a frame.
            checksum.tcp = Checksum::None;
            // One 64 KiB IP packet per segment, split by the sandbox's kernel at the MSS
            // it announced. The MTU is raised to match because smoltcp 0.14 drops IPv6
            // packets over the MTU even when it asked for them to be segmented; the
            // segment size still comes from the sandbox's MSS, which its link sets.
            let most = ETH_HEADER + offload::MAX_IP_PACKET;
            caps.max_transmission_unit = most;
            caps.segmentation.tcpv4 = NonZeroUsize::new(most);
            caps.segmentation.tcpv6 = NonZeroUsize::new(most);
        } else {
            checksum.tcp = Checksum::Both;
        }
        caps.checksum = checksum;
        caps
    }
}

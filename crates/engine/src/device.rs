//! The frame boundary: a [`FrameDevice`] moves whole Ethernet frames between the sandbox and
//! the engine. The TAP is one; an in-memory pair serves unit tests; a VM's socket will be
//! another. smoltcp sees frames only through [`StackDevice`], one frame at a time, after the
//! engine has classified and judged them.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Ethernet header length.
pub const ETH_HEADER: usize = 14;

/// Moves Ethernet frames to and from the sandbox.
pub trait FrameDevice {
    /// Reads one frame into `buf`; `Ok(None)` when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
    /// Writes one frame. A full queue drops it (the guest's stack retransmits).
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// The descriptor to wait on for readability, if the device has one.
    fn raw_fd(&self) -> Option<RawFd>;
}

/// A TAP interface opened without packet information (`IFF_TAP | IFF_NO_PI`), non-blocking.
#[derive(Debug)]
pub struct TapDevice {
    fd: OwnedFd,
}

impl TapDevice {
    /// Wraps a TAP descriptor (made non-blocking here).
    pub fn new(fd: OwnedFd) -> io::Result<TapDevice> {
        let flags = nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(TapDevice { fd })
    }
}

impl FrameDevice for TapDevice {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match nix::unistd::read(&self.fd, buf) {
                Ok(n) => return Ok(Some(n)),
                Err(nix::errno::Errno::EAGAIN) => return Ok(None),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        loop {
            match nix::unistd::write(&self.fd, frame) {
                Ok(_) => return Ok(()),
                // The TAP's queue is full: drop, as a wire would; TCP recovers.
                Err(nix::errno::Errno::EAGAIN) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
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
        if self.dev.send(&self.buf[..len]).is_err() {
            *self.errors += 1;
        }
        r
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
                _frame: std::marker::PhantomData,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Self::TxToken<'_>> {
        Some(Tx {
            dev: &mut *self.dev,
            buf: &mut *self.tx_buf,
            errors: &mut *self.tx_errors,
            _frame: std::marker::PhantomData,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.max_frame;
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Both;
        checksum.tcp = Checksum::Both;
        caps.checksum = checksum;
        caps
    }
}

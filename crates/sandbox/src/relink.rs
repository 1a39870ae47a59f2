//! A pod's interface lent to moat and given back (the CNI plugin, `moat-cni`): the
//! interface a cluster's network plugin gave the pod moves into a namespace of moat's own,
//! keeps its addresses and routes there, and moat's TAP takes its place in the pod
//! (`netns::attach`); on delete it moves back, so the plugin that made it finds it.
//!
//! Each step runs on a thread of its own that enters the namespace concerned (setns moves
//! only the calling thread) and ends with the step: moat itself never leaves its namespace.
//! Moving an interface drops its addresses and routes and leaves it down; [`lend`] puts
//! them back in the new namespace from what the plugin's result said, in the order the
//! kernel needs (addresses, up, routes on the link, then routes through a gateway).

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

use crate::{rtnl, sys};

/// A route: to `dst/prefix`, through `gateway` or on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Where it leads (`0.0.0.0`/`::` with prefix 0: the default route).
    pub dst: IpAddr,
    /// The destination's prefix length.
    pub prefix: u8,
    /// The next hop; `None`: on the link.
    pub gateway: Option<IpAddr>,
}

/// What an interface carries that a move drops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addressing {
    /// Its addresses, with their prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
    /// Its routes.
    pub routes: Vec<Route>,
}

/// Runs `step` on a thread inside the network namespace at `ns`.
fn within<T: Send>(ns: &Path, step: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let file = File::open(ns)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET)?;
            drop(file);
            step()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the thread in the namespace panicked")))
    })
}

/// Whether the namespace at `ns` has an interface called `name`.
pub fn has_interface(ns: &Path, name: &str) -> io::Result<bool> {
    let name = name.to_owned();
    within(ns, move || match sys::if_index(&name) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
        Err(e) => Err(e),
    })
}

/// The interfaces of the namespace at `ns`, `lo` among them.
pub fn interfaces(ns: &Path) -> io::Result<Vec<String>> {
    within(ns, crate::netns::interfaces)
}

/// Deletes interface `name` of the namespace at `ns` (a veth takes its peer with it; a
/// physical interface cannot be deleted, and says so).
pub fn delete_interface(ns: &Path, name: &str) -> io::Result<()> {
    let name = name.to_owned();
    within(ns, move || rtnl::delete_link(sys::if_index(&name)?))
}

/// The hardware address of interface `name` in the namespace at `ns`.
pub fn mac(ns: &Path, name: &str) -> io::Result<[u8; 6]> {
    let name = name.to_owned();
    within(ns, move || rtnl::mac(sys::if_index(&name)?))
}

/// Moves interface `name` from the namespace at `from` to the one at `to`.
pub fn move_interface(name: &str, from: &Path, to: &Path) -> io::Result<()> {
    let target = File::open(to)?;
    let name = name.to_owned();
    within(from, move || {
        rtnl::move_link(sys::if_index(&name)?, target.as_fd())
    })
}

/// Moves interface `name` from `from` into `to` and gives it there what the move dropped:
/// `addressing`, `lo` and the interface up. When a step after the move fails, the
/// interface is moved back before the error returns.
pub fn lend(name: &str, from: &Path, to: &Path, addressing: &Addressing) -> io::Result<()> {
    move_interface(name, from, to)?;
    let owned = (name.to_owned(), addressing.clone());
    let set = within(to, move || {
        let (name, addressing) = owned;
        sys::set_up("lo")?;
        let index = sys::if_index(&name)?;
        for &(ip, prefix) in &addressing.addresses {
            exists_ok(rtnl::add_address(index, ip, prefix))?;
        }
        rtnl::set_up(index)?;
        // A gateway outside every address's prefix (a pod given a /32 with a gateway such
        // as 169.254.1.1) is on the link: a route to it first, as the plugin that made
        // the interface had.
        for r in &addressing.routes {
            if let Some(gw) = r.gateway {
                let covered = addressing
                    .addresses
                    .iter()
                    .any(|&(ip, prefix)| crate::tap::within(ip, prefix, gw));
                if !covered {
                    let host = if gw.is_ipv4() { 32 } else { 128 };
                    exists_ok(rtnl::add_route(index, gw, host, None))?;
                }
            }
        }
        // On the link first: a route through a gateway needs the gateway reachable.
        let (on_link, via): (Vec<Route>, Vec<Route>) =
            addressing.routes.iter().partition(|r| r.gateway.is_none());
        for r in on_link.iter().chain(&via) {
            exists_ok(rtnl::add_route(index, r.dst, r.prefix, r.gateway))?;
        }
        Ok(())
    });
    if let Err(e) = set {
        let _ = move_interface(name, to, from);
        return Err(e);
    }
    Ok(())
}

/// A route or address the kernel made already (the prefix route of an address) is there.
fn exists_ok(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// Moves interface `name` back from `from` to `to`, waiting (up to `wait`) while `to` still
/// has an interface of that name (moat's TAP, which goes with the engine that held it).
/// `Ok(false)`: `from` has no such interface (moved back already, or gone with its
/// namespace, whose path then names no namespace).
pub fn give_back(name: &str, from: &Path, to: &Path, wait: Duration) -> io::Result<bool> {
    match has_interface(from, name) {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        // No longer a namespace (its last process gone, the file left behind): the
        // interface went with it.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(false),
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + wait;
    while has_interface(to, name)? {
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} still has an interface named {name}", to.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    move_interface(name, from, to)?;
    Ok(true)
}

//! ADD, DEL and CHECK for one pod (see `mod.rs` for what each does), and what moat keeps
//! of a pod between them: `/run/moat/cni/ID/` holds `state.json` (the pod's namespace,
//! its interface, moat's namespace), `pid` ("PID START" of the engine, written once it
//! serves) and `engine.log` (what the engine said, its summary at the end).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use moat_sandbox::netns::{self, NsId};
use moat_sandbox::relink::{self, Addressing, Route};
use serde_json::{Value, json};

use super::config::{Conf, Env};

mod delegate;
use super::{CniError, code};
use crate::Netns;
use crate::attach::{PodAddress, PodAddresses};
use crate::cli::attach::{AttachOptions, attach};

/// Where moat keeps what it did for each pod.
const STATE_ROOT: &str = "/run/moat/cni";

/// How long ADD waits for the engine to serve, and DEL for it to stop.
const WAIT: Duration = Duration::from_secs(15);

fn state_dir(id: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(id)
}

/// moat's namespace for the pod (a name `ip netns` shows): the id whole when it fits,
/// else its first 40 characters and a hash of the whole, so that two ids alike in their
/// first 40 never share a namespace.
fn moat_ns(id: &str) -> String {
    if id.len() <= 58 {
        return format!("moat-{id}");
    }
    // FNV-1a, 64 bits: stable across builds (the name is kept in files between calls).
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    format!("moat-{}-{hash:016x}", &id[..40])
}

fn setup(what: &str) -> impl FnOnce(std::io::Error) -> CniError + '_ {
    move |e| CniError::new(code::SETUP, format!("{what}: {e}"))
}

/// What the previous plugin gave the pod, read from its result.
struct Given {
    /// The interface's place in the result's `interfaces`.
    index: usize,
    /// Its addresses and routes (what moat's namespace gives it back).
    addressing: Addressing,
    /// The pod's addresses on moat's link.
    pod: PodAddresses,
}

fn prefixed(text: &str) -> Option<(IpAddr, u8)> {
    let (ip, len) = text.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    (len <= if ip.is_ipv4() { 32 } else { 128 }).then_some((ip, len))
}

/// The first host of `ip/prefix` other than `ip` (a gateway when the result names none).
fn first_host(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            let first = (u32::from(a) & mask).wrapping_add(1);
            let gw = if first == u32::from(a) {
                first.wrapping_add(1)
            } else {
                first
            };
            IpAddr::V4(Ipv4Addr::from(gw))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            let first = (u128::from(a) & mask).wrapping_add(1);
            let gw = if first == u128::from(a) {
                first.wrapping_add(1)
            } else {
                first
            };
            IpAddr::V6(Ipv6Addr::from(gw))
        }
    }
}

/// Reads the previous result: the pod's interface `ifname`, its addresses and routes.
fn given(prev: &Value, ifname: &str, pod_ns: NsId) -> Result<Given, CniError> {
    let bad = |msg: String| CniError::new(code::INVALID_CONFIG, msg);
    let index = prev["interfaces"]
        .as_array()
        .and_then(|list| {
            list.iter().position(|i| {
                i["name"] == ifname
                    && i["sandbox"]
                        .as_str()
                        .is_some_and(|s| NsId::of(Path::new(s)).ok() == Some(pod_ns))
            })
        })
        .ok_or_else(|| {
            bad(format!(
                "the previous plugin's result has no interface {ifname} in the pod's namespace (CNI_NETNS) (moat-cni goes after the plugin that makes it)"
            ))
        })?;
    let mut addressing = Addressing::default();
    let mut pod = PodAddresses::default();
    for ip in prev["ips"].as_array().into_iter().flatten() {
        if ip["interface"]
            .as_u64()
            .is_some_and(|i| i as usize != index)
        {
            continue;
        }
        let text = ip["address"].as_str().unwrap_or("");
        let (addr, prefix) =
            prefixed(text).ok_or_else(|| bad(format!("ips: address {text:?} is not IP/PREFIX")))?;
        let host_only = prefix == if addr.is_ipv4() { 32 } else { 128 };
        let gateway = match ip["gateway"].as_str() {
            Some(g) => g
                .parse::<IpAddr>()
                .map_err(|_| bad(format!("ips: gateway {g:?} is not an IP address")))?,
            // A host address has no network to take a gateway from (the next address is
            // another pod's).
            None if host_only => {
                return Err(bad(format!(
                    "ips: {text} is a host address with no gateway; moat-cni needs the gateway the pod's routes go through"
                )));
            }
            None => first_host(addr, prefix),
        };
        if gateway == addr {
            return Err(bad(format!(
                "ips: {text}'s gateway is the pod's own address"
            )));
        }
        addressing.addresses.push((addr, prefix));
        match (addr, gateway) {
            (IpAddr::V4(address), IpAddr::V4(gateway)) if pod.v4.is_none() => {
                pod.v4 = Some(PodAddress {
                    address,
                    prefix,
                    gateway,
                });
            }
            (IpAddr::V6(address), IpAddr::V6(gateway)) if pod.v6.is_none() => {
                pod.v6 = Some(PodAddress {
                    address,
                    prefix,
                    gateway,
                });
            }
            _ => {}
        }
    }
    if pod.v4.is_none() && pod.v6.is_none() {
        return Err(bad(format!(
            "the previous plugin's result gives {ifname} no address"
        )));
    }
    for r in prev["routes"].as_array().into_iter().flatten() {
        let text = r["dst"].as_str().unwrap_or("");
        let (dst, prefix) =
            prefixed(text).ok_or_else(|| bad(format!("routes: dst {text:?} is not IP/PREFIX")))?;
        let gateway = match r["gw"].as_str() {
            Some(g) => Some(
                g.parse::<IpAddr>()
                    .map_err(|_| bad(format!("routes: gw {g:?} is not an IP address")))?,
            ),
            None => match dst {
                IpAddr::V4(_) => pod.v4.map(|p| IpAddr::V4(p.gateway)),
                IpAddr::V6(_) => pod.v6.map(|p| IpAddr::V6(p.gateway)),
            },
        };
        addressing.routes.push(Route {
            dst,
            prefix,
            gateway,
        });
    }
    Ok(Given {
        index,
        addressing,
        pod,
    })
}

/// What moat keeps of a pod.
struct State {
    netns: PathBuf,
    /// The pod's namespace as it was at ADD: a path naming another one later (a process
    /// id reused) is not the pod's.
    pod_id: NsId,
    ifname: String,
    moat_ns: String,
    /// moat's namespace, once made.
    moat_id: Option<NsId>,
    /// Whether the interface was made by moat-cni's delegate in moat's namespace (given
    /// back to the delegate's DEL) rather than lent by the pod.
    delegated: bool,
}

impl State {
    fn write(&self, dir: &Path) -> std::io::Result<()> {
        let text = json!({
            "netns": self.netns.to_string_lossy(),
            "netnsId": self.pod_id.to_pair(),
            "ifname": self.ifname,
            "moatNetns": self.moat_ns,
            "moatNetnsId": self.moat_id.map(NsId::to_pair),
            "delegated": self.delegated,
        });
        let tmp = dir.join(".state.json");
        std::fs::write(&tmp, text.to_string())?;
        std::fs::rename(tmp, dir.join("state.json"))
    }

    fn read(dir: &Path) -> Option<State> {
        let text = std::fs::read(dir.join("state.json")).ok()?;
        let v: Value = serde_json::from_slice(&text).ok()?;
        let moat_ns = v["moatNetns"].as_str()?.to_owned();
        netns::valid_named(&moat_ns).then_some(())?;
        let pair = |v: &Value| Some((v[0].as_u64()?, v[1].as_u64()?));
        Some(State {
            netns: PathBuf::from(v["netns"].as_str()?),
            pod_id: NsId::from_pair(pair(&v["netnsId"])?),
            ifname: v["ifname"].as_str()?.to_owned(),
            moat_ns,
            moat_id: pair(&v["moatNetnsId"]).map(NsId::from_pair),
            delegated: v["delegated"].as_bool().unwrap_or(false),
        })
    }

    fn moat_path(&self) -> PathBuf {
        Path::new(netns::NAMED_DIR).join(&self.moat_ns)
    }

    /// The pod's namespace, when its path still names the one of ADD.
    fn pod(&self) -> Option<&Path> {
        (NsId::of(&self.netns).ok() == Some(self.pod_id)).then_some(self.netns.as_path())
    }

    /// moat's namespace, when its path still names the one ADD made.
    fn moat(&self) -> Option<PathBuf> {
        let path = self.moat_path();
        (self.moat_id.is_some() && NsId::of(&path).ok() == self.moat_id).then_some(path)
    }
}

/// ADD: the pod served; the previous result, with the interface as the pod sees it.
pub(super) fn add(env: &Env, conf: &Conf) -> Result<Value, CniError> {
    let id = env.container_id()?;
    let ifname = env.interface()?;
    let pod_ns = env
        .netns
        .clone()
        .ok_or_else(|| CniError::new(code::ENV, "CNI_NETNS is not set"))?;
    // The namespace given, checked before anything is moved out of it: never the one
    // moat-cni runs in (the node's), whose interfaces are not a pod's to lend.
    let pod_id = NsId::of(&pod_ns)
        .map_err(|e| CniError::new(code::ENV, format!("CNI_NETNS {}: {e}", pod_ns.display())))?;
    if NsId::own().ok() == Some(pod_id) {
        return Err(CniError::new(
            code::ENV,
            format!(
                "CNI_NETNS {} is the network namespace moat-cni runs in (the node's), not a pod's",
                pod_ns.display()
            ),
        ));
    }
    let delegating = delegate::configured(conf)?;
    let prev = &conf.raw["prevResult"];
    // Following the plugin that made the interface, its result says what to lend; when
    // delegating, the delegate's result will.
    let chained = if delegating {
        None
    } else {
        if prev.is_null() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "there is no prevResult: moat-cni goes in a conflist after the plugin that gives the pod its interface (bridge, the cluster's own), or names that plugin as its \"delegate\"",
            ));
        }
        Some(given(prev, ifname, pod_id)?)
    };
    let opts = conf.options(env)?;
    if let Some(dir) = opts.audit.as_deref().map(Path::new).and_then(Path::parent) {
        std::fs::create_dir_all(dir).map_err(setup("make the audit directory"))?;
    }
    // Every option checked (the policy read, the secrets' files too) before anything is made.
    crate::cli::run::builder(&opts)
        .map_err(|e| CniError::new(code::INVALID_CONFIG, crate::cli::describe(&e)))?;
    std::fs::create_dir_all(STATE_ROOT).map_err(setup("make /run/moat/cni"))?;
    let dir = state_dir(id);
    std::fs::create_dir(&dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => CniError::new(
            code::ALREADY,
            format!("container {id} is served already (a second ADD; DEL it first)"),
        ),
        _ => setup("make the pod's state directory")(e),
    })?;
    let mut state = State {
        netns: pod_ns,
        pod_id,
        ifname: ifname.to_owned(),
        moat_ns: moat_ns(id),
        moat_id: None,
        delegated: delegating,
    };
    let served = match &chained {
        Some(given) => published(conf, opts, given)
            .and_then(|opts| serve(&mut state, &dir, given, opts))
            .map(|mac| {
                let mut result = prev.clone();
                result["interfaces"][given.index]["mac"] = Value::from(mac);
                result
            }),
        None => delegate::serve(&mut state, &dir, conf, env, opts),
    };
    match served {
        Ok(mut result) => {
            result["cniVersion"] = Value::from(conf.version.clone());
            Ok(result)
        }
        Err(e) => {
            undo(&state, &dir, conf, env);
            Err(e)
        }
    }
}

/// `opts` with the conflist's published ports at the pod's address: traffic to it
/// arrives in moat's namespace, where that address now is, and is carried on to the pod.
fn published(
    conf: &Conf,
    mut opts: crate::cli::run::RunOptions,
    given: &Given,
) -> Result<crate::cli::run::RunOptions, CniError> {
    let at = given
        .pod
        .v4
        .map(|a| IpAddr::V4(a.address))
        .or(given.pod.v6.map(|a| IpAddr::V6(a.address)));
    if let Some(at) = at {
        opts.publish = conf.published(at)?;
    }
    Ok(opts)
}

/// The steps of ADD that change something; on an error the caller undoes them all.
fn serve(
    state: &mut State,
    dir: &Path,
    given: &Given,
    opts: crate::cli::run::RunOptions,
) -> Result<String, CniError> {
    let moat_path = make_ns(state, dir)?;
    relink::lend(&state.ifname, &state.netns, &moat_path, &given.addressing)
        .map_err(setup("move the pod's interface into moat's namespace"))?;
    start_engine(state, dir, given.pod, opts)
}

/// Makes moat's namespace for the pod, recorded in its state; its path.
fn make_ns(state: &mut State, dir: &Path) -> Result<PathBuf, CniError> {
    state.write(dir).map_err(setup("write the pod's state"))?;
    // A namespace of that name already (a DEL that could not finish) is left alone: ADD
    // fails rather than take it.
    let moat_path = netns::create_named(&state.moat_ns).map_err(|e| {
        let code = if e.kind() == std::io::ErrorKind::AlreadyExists {
            code::ALREADY
        } else {
            code::SETUP
        };
        CniError::new(code, format!("make moat's namespace for the pod: {e}"))
    })?;
    state.moat_id = Some(NsId::of(&moat_path).map_err(setup("read moat's namespace"))?);
    state.write(dir).map_err(setup("write the pod's state"))?;
    Ok(moat_path)
}

/// Starts the pod's engine in moat's namespace (made, holding the pod's interface) with
/// its TAP in the pod carrying `pod`'s addresses; the TAP's MAC once it serves.
fn start_engine(
    state: &State,
    dir: &Path,
    pod: PodAddresses,
    opts: crate::cli::run::RunOptions,
) -> Result<String, CniError> {
    let moat_path = state.moat_path();
    let log = moat_sandbox::HostFile::open(&dir.join("engine.log"))
        .and_then(|f| f.append(0o600))
        .map_err(|e| CniError::new(code::SETUP, format!("open the engine's log: {e}")))?;
    let child = netns::detach(log.into()).map_err(setup("start the pod's engine"))?;
    let Some(child) = child else {
        // The engine: in moat's namespace, serving the pod's until DEL. It runs for the
        // pod, so the node's out-of-memory killer weighs it as any process, not as the
        // runtime that started it (which may have made itself unkillable).
        let _ = std::fs::write("/proc/self/oom_score_adj", "0");
        let served = std::fs::File::open(&moat_path)
            .and_then(|f| Ok(nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?))
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                attach(
                    opts,
                    AttachOptions {
                        netns: Some(Netns::at(&state.netns).pod(&state.ifname, pod)),
                        keep: true,
                        detached: true,
                        ready_file: Some(dir.join("pid")),
                        ..AttachOptions::default()
                    },
                )
            });
        let code = served.unwrap_or_else(|e| {
            eprintln!("moat: {}", crate::cli::describe(&e));
            crate::cli::run::SETUP_FAILED
        });
        std::process::exit(code);
    };
    wait_served(child, dir)?;
    let mac =
        relink::mac(&state.netns, &state.ifname).map_err(setup("read the pod's interface"))?;
    Ok(mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":"))
}

/// Waits until the engine (`child`) serves (its pid file appears); when it ends first or
/// does not serve in time, the error says what it wrote.
fn wait_served(child: u32, dir: &Path) -> Result<(), CniError> {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let pid = nix::unistd::Pid::from_raw(child as i32);
    let deadline = Instant::now() + WAIT;
    while !dir.join("pid").exists() {
        let ended = match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => true,
            Ok(_) => false,
            // Not waitable (SIGCHLD ignored by whoever started us): look at it instead.
            Err(_) => !running(child),
        };
        if ended || Instant::now() > deadline {
            if !ended {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(pid, None);
            }
            let said = std::fs::read_to_string(dir.join("engine.log")).unwrap_or_default();
            return Err(CniError::new(
                code::SETUP,
                if ended {
                    "the pod's engine did not start"
                } else {
                    "the pod's engine did not serve within 15 s"
                },
            )
            .details(said.trim().to_owned()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// The engine's process, when the pid file names one that runs (the one ADD started: same
/// start time, root's, called moat-cni).
fn engine(dir: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dir.join("pid")).ok()?;
    let pid = netns::recorded_process(&text).filter(|&p| running(p))?;
    let root = netns::runs_as_root(pid);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|&b| b == 0).next()?;
    (root && argv0.ends_with(b"moat-cni")).then_some(pid)
}

/// Whether `pid` runs (a zombie has ended: its descriptors, the TAP's among them, are closed).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Stops the engine of the pod at `dir`, if one runs: SIGTERM (it writes its summary and
/// the audit log's end), SIGKILL when it has not ended in time.
fn stop_engine(dir: &Path) {
    let Some(pid) = engine(dir) else { return };
    let started = netns::start_time(pid);
    let gone = || netns::start_time(pid) != started || !running(pid);
    let target = nix::unistd::Pid::from_raw(pid as i32);
    for (signal, wait) in [
        (nix::sys::signal::Signal::SIGTERM, WAIT),
        (nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5)),
    ] {
        let _ = nix::sys::signal::kill(target, signal);
        let deadline = Instant::now() + wait;
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        if gone() {
            return;
        }
    }
}

/// Undoes whatever of ADD was done for `state` (each step skipped when there is nothing
/// to undo): the engine stopped, the interface returned, moat's namespace and the state
/// removed.
fn undo(state: &State, dir: &Path, conf: &Conf, env: &Env) {
    stop_engine(dir);
    let _ = release(state, conf, env);
    let _ = std::fs::remove_dir_all(dir);
}

/// The interface returned and moat's namespace removed, each only when its path still
/// names what ADD recorded (never another pod's namespace, nor one reused by another).
/// The interface goes back to the pod when nothing runs there any more; while something
/// does (a runtime that DELs a live sandbox), it is deleted instead (a veth with its peer,
/// which the previous plugin's DEL tolerates), so that nothing inside can take the way out
/// over. One that cannot be deleted (a physical device) goes back.
fn release(state: &State, conf: &Conf, env: &Env) -> Result<(), CniError> {
    if state.delegated && delegate::configured(conf).unwrap_or(false) {
        // The delegate made the interface in moat's namespace: its DEL removes it (and
        // gives its address back), whether or not that namespace is still there. (A DEL
        // given no delegate cannot run its DEL; moat's namespace still goes, and the
        // interface with it.)
        delegate::call(conf, env, "DEL", state.moat().as_deref(), None)?;
    }
    let Some(moat_path) = state.moat() else {
        return Ok(());
    };
    if let (Some(pod), false) = (state.pod(), state.delegated) {
        let busy = !netns::processes_in(state.pod_id).is_empty();
        let deleted = busy && relink::delete_interface(&moat_path, &state.ifname).is_ok();
        if !deleted {
            relink::give_back(&state.ifname, &moat_path, pod, Duration::from_secs(5)).map_err(
                |e| {
                    CniError::new(
                        code::AGAIN,
                        format!("move {} back into the pod: {e}", state.ifname),
                    )
                },
            )?;
        }
    }
    match netns::remove_named(&state.moat_ns) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CniError::new(
            code::AGAIN,
            format!("remove moat's namespace {}: {e}", state.moat_ns),
        )),
    }
}

/// DEL: nothing of the pod's left; what is missing already is skipped.
pub(super) fn del(env: &Env, conf: &Conf) -> Result<(), CniError> {
    let id = env.container_id()?;
    let dir = state_dir(id);
    let Some(state) = State::read(&dir) else {
        // Never added, deleted already, or an ADD that had not written its state (and so
        // had made nothing of moat's). A delegate's DEL still runs: it may hold an address
        // for the container (DEL is idempotent for it too).
        if delegate::configured(conf)? {
            delegate::call(conf, env, "DEL", None, None)?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        return Ok(());
    };
    stop_engine(&dir);
    release(&state, conf, env)?;
    std::fs::remove_dir_all(&dir)
        .or_else(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Ok(()),
            _ => Err(e),
        })
        .map_err(|e| CniError::new(code::AGAIN, format!("remove {}: {e}", dir.display())))
}

/// CHECK: the engine runs and the pod has moat's interface.
pub(super) fn check(env: &Env, _conf: &Conf) -> Result<(), CniError> {
    let id = env.container_id()?;
    let dir = state_dir(id);
    let not = |why: String| CniError::new(code::NOT_SERVED, why);
    let state = State::read(&dir).ok_or_else(|| {
        not(format!(
            "container {id} is not served by moat (no {})",
            dir.display()
        ))
    })?;
    if engine(&dir).is_none() {
        return Err(not(format!(
            "the engine serving container {id} is not running (see {})",
            dir.join("engine.log").display()
        )));
    }
    let pod = state.pod().ok_or_else(|| {
        not(format!(
            "the pod's namespace {} is gone (or names another now)",
            state.netns.display()
        ))
    })?;
    let names = relink::interfaces(pod)
        .map_err(|e| not(format!("enter the pod's namespace {}: {e}", pod.display())))?;
    if !names.contains(&state.ifname) {
        return Err(not(format!("the pod has no interface {}", state.ifname)));
    }
    // moat must be the pod's one way out: another network's plugin (a second network, a
    // multi-network plugin) may have added an interface after moat's ADD.
    let others: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| *n != "lo" && *n != state.ifname && !netns::fallback_tunnel(n))
        .collect();
    if !others.is_empty() {
        return Err(not(format!(
            "the pod has a way out that is not moat's: {} (moat-cni must be the last plugin of the pod's only network)",
            others.join(", ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bridge_result_gives_the_pods_addresses_and_routes() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "veth1", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "cc:cc:cc:cc:cc:cc", "sandbox": "/proc/self/ns/net"}
            ],
            "ips": [
                {"address": "10.89.0.5/24", "gateway": "10.89.0.1", "interface": 2},
                {"address": "fd89::5/64", "interface": 2}
            ],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.0.2.0/24", "gw": "10.89.0.254"}]
        });
        let own = NsId::own().unwrap();
        let g = given(&prev, "eth0", own).unwrap();
        assert_eq!(g.index, 2);
        let v4 = g.pod.v4.unwrap();
        assert_eq!(
            (v4.address, v4.prefix, v4.gateway),
            (
                "10.89.0.5".parse().unwrap(),
                24,
                "10.89.0.1".parse().unwrap()
            )
        );
        // No gateway given: the network's first host.
        assert_eq!(
            g.pod.v6.unwrap().gateway,
            "fd89::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(g.addressing.addresses.len(), 2);
        assert_eq!(
            g.addressing.routes[0].gateway,
            Some("10.89.0.1".parse().unwrap())
        );
        assert_eq!(
            g.addressing.routes[1].gateway,
            Some("10.89.0.254".parse().unwrap())
        );
        // The interface must be the pod's (in a sandbox), and carry an address.
        assert!(given(&prev, "veth1", own).is_err());
        // The interface must be in the namespace given (CNI_NETNS), not merely in one.
        let other = NsId::from_pair((0, 1));
        assert!(given(&prev, "eth0", other).is_err());
        // A host address needs its gateway named; a gateway that is the pod is refused.
        let mut host = prev.clone();
        host["ips"] = json!([{"address": "10.89.0.5/32", "interface": 2}]);
        assert!(given(&host, "eth0", own).is_err());
        host["ips"][0]["gateway"] = json!("10.89.0.5");
        assert!(given(&host, "eth0", own).is_err());
        host["ips"][0]["gateway"] = json!("169.254.1.1");
        assert_eq!(
            given(&host, "eth0", own).unwrap().pod.v4.unwrap().gateway,
            Ipv4Addr::new(169, 254, 1, 1)
        );
        let mut bare = prev.clone();
        bare["ips"] = json!([]);
        assert!(given(&bare, "eth0", own).is_err());
        let mut wrong = prev.clone();
        wrong["ips"][0]["address"] = json!("10.89.0.5");
        assert!(given(&wrong, "eth0", own).is_err());
    }

    #[test]
    fn a_gateway_when_none_is_given_is_the_first_host_but_the_pods_own() {
        let host = |ip: &str, p| first_host(ip.parse().unwrap(), p).to_string();
        assert_eq!(host("10.89.0.5", 24), "10.89.0.1");
        assert_eq!(host("10.89.0.1", 24), "10.89.0.2");
        assert_eq!(host("fd89::1", 64), "fd89::2");
        // The top of the space wraps instead of overflowing.
        assert_eq!(host("255.255.255.255", 32), "0.0.0.0");
    }

    #[test]
    fn any_shape_of_previous_result_is_an_error_or_a_reading_never_a_panic() {
        let own = NsId::own().unwrap();
        let sandbox = "/proc/self/ns/net";
        let shapes = [
            json!(null),
            json!([]),
            json!("x"),
            json!({"interfaces": "eth0"}),
            json!({"interfaces": [{"name": 5, "sandbox": sandbox}]}),
            json!({"interfaces": [{"name": "eth0", "sandbox": 7}]}),
            json!({"interfaces": [{"name": "eth0", "sandbox": sandbox}], "ips": "10.0.0.1/8"}),
            json!({"interfaces": [{"name": "eth0", "sandbox": sandbox}], "ips": [{"address": 1}]}),
            json!({"interfaces": [{"name": "eth0", "sandbox": sandbox}], "ips": [{"address": "10.0.0.1/99"}]}),
            json!({"interfaces": [{"name": "eth0", "sandbox": sandbox}], "ips": [{"address": "10.0.0.1/8", "interface": -1}]}),
            json!({"interfaces": [{"name": "eth0", "sandbox": sandbox}], "ips": [{"address": "10.0.0.1/8", "interface": 1u64 << 60}]}),
            json!({"interfaces": [{"name": "eth0", "sandbox": sandbox}], "ips": [{"address": "10.0.0.1/8", "gateway": "::1"}]}),
            json!({"interfaces": [{"name": "eth0", "sandbox": sandbox}], "ips": [{"address": "10.0.0.1/8"}], "routes": [{"dst": 5}]}),
            json!({"interfaces": [{"name": "eth0", "sandbox": sandbox}], "ips": [{"address": "10.0.0.1/8"}], "routes": [{"dst": "0.0.0.0/0", "gw": "nope"}]}),
            json!({"interfaces": [{"name": "eth0", "sandbox": sandbox}], "ips": [{"address": "::/0"}]}),
            json!({"interfaces": [{"name": "eth0", "sandbox": sandbox}], "ips": [{"address": "255.255.255.255/0"}]}),
        ];
        for prev in &shapes {
            // An error or a reading; the test fails only by a panic.
            let _ = given(prev, "eth0", own);
        }
        // The IPv4 /8 without a gateway reads with the network's first host.
        let ok = json!({"interfaces": [{"name": "eth0", "sandbox": sandbox}], "ips": [{"address": "10.0.0.9/8"}]});
        assert_eq!(
            given(&ok, "eth0", own).unwrap().pod.v4.unwrap().gateway,
            Ipv4Addr::new(10, 0, 0, 1)
        );
    }

    #[test]
    fn a_namespace_name_is_whole_or_cut_with_a_hash_of_the_whole() {
        assert_eq!(moat_ns("abc"), "moat-abc");
        let a = format!("{}{}", "a".repeat(40), "x".repeat(24));
        let b = format!("{}{}", "a".repeat(40), "y".repeat(24));
        assert_ne!(moat_ns(&a), moat_ns(&b));
        assert!(netns::valid_named(&moat_ns(&a)), "{}", moat_ns(&a));
        assert!(netns::valid_named(&moat_ns(&"f".repeat(128))));
    }
}

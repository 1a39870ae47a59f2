//! moat-cni driven by the CNI protocol, as a runtime drives it, chained after Debian's
//! reference `bridge` (with `host-local`) and `loopback`: each pod keeps the address the
//! bridge gave it, reaches what its policy allows and nothing else, and the world sees the
//! pod's own address; DEL gives the interface back and leaves nothing of moat's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: a panic is the failure report.

use std::path::{Path, PathBuf};
use std::time::Duration;

use moat_e2e::cni::{Runtime, conflist, delegating, engine_pid, moat_entry, runs, state_dir};
use moat_e2e::{World, stderr, stdout};
use serde_json::{Value, json};

/// Runs `script` (sh) in the pod's namespace, bounded.
fn in_pod(pod: &Path, script: &str) -> (String, String) {
    let mut c = std::process::Command::new("nsenter");
    c.arg(format!("--net={}", pod.display()))
        .args(["sh", "-c", script]);
    let out = moat_e2e::run_with_timeout(c, Duration::from_secs(60));
    (stdout(&out), stderr(&out))
}

/// `curl`'s status for `url` from the pod ("000" when nothing answered).
fn fetch(pod: &Path, url: &str) -> String {
    in_pod(
        pod,
        &format!("curl -s -o /dev/null -w '%{{http_code}}' --max-time 3 {url}"),
    )
    .0
}

/// The pod's interface: its MAC and IPv4 addresses.
fn interface(pod: &Path) -> (String, Vec<String>) {
    let (out, _) = in_pod(pod, "ip -j addr show dev eth0");
    let v: Value = serde_json::from_str(&out).unwrap_or(json!([]));
    let mac = v[0]["address"].as_str().unwrap_or("").to_owned();
    let v4 = v[0]["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect();
    (mac, v4)
}

/// The pod's address in a result (its first, without the prefix).
fn pod_ip(result: &Value) -> String {
    let address = result["ips"][0]["address"].as_str().unwrap();
    address.split('/').next().unwrap().to_owned()
}

fn id(w: &World, n: &str) -> String {
    format!("{}{n}", w.host)
}

/// ADD, CHECK, traffic, DEL, DEL again: the pod is served by its policy from its own
/// address, and after DEL it has the bridge's interface back, and moat nothing left.
#[test]
fn add_check_and_del_serve_a_pod_from_its_own_address() {
    let w = World::new();
    let mut rt = Runtime::new(&w);
    let pod = rt.pod(&format!("{}p1", w.host));
    let list = conflist(&w, moat_entry(&w, json!({"dns": [moat_e2e::WORLD_DNS]})));
    let id = id(&w, "c1");
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=agent-7;K8S_POD_INFRA_CONTAINER_ID=x";
    let added = rt.run("ADD", &id, &pod, args, &list, None);
    assert!(added.ok, "{added:?}");
    // The result passes through, with the interface as the pod sees it: moat's TAP.
    let result = &added.out;
    let address = result["ips"][0]["address"].as_str().unwrap().to_owned();
    let ip = address.split('/').next().unwrap().to_owned();
    assert!(ip.starts_with("10.89.0."), "{result}");
    let (mac, v4) = interface(&pod);
    let index = result["ips"][0]["interface"].as_u64().unwrap() as usize;
    assert_eq!(result["interfaces"][index]["mac"], mac, "{result}");
    assert_eq!(result["interfaces"][index]["name"], "eth0");
    // The pod keeps the address it was given, as a host address: everything it sends,
    // to its network's other pods too, goes through moat.
    assert_eq!(v4, [format!("{ip}/32")]);
    // One engine, in a namespace of moat's, where the bridge's interface now is.
    let pid = engine_pid(&id).expect("the engine's pid file");
    assert!(runs(pid));
    let moat_ns = format!("/run/netns/moat-{id}");
    assert!(Path::new(&moat_ns).exists());
    let check = rt.moat("CHECK", &id, &pod, args, &list, Some(result));
    assert!(check.ok, "{check:?}");

    // Allowed (public) and denied (private) destinations, by the default policy.
    assert_eq!(fetch(&pod, "http://203.0.113.10/cni-allowed"), "200");
    assert_eq!(fetch(&pod, "http://10.1.0.10/cni-denied"), "000");
    let log = w.log();
    let seen: Vec<&Value> = log
        .iter()
        .filter(|l| l["server"] == "http" && l["path"] == "/cni-allowed")
        .collect();
    assert_eq!(seen.len(), 1, "{log:?}");
    assert!(
        seen[0]["client"].as_str().unwrap().ends_with(&ip),
        "the world sees the pod's own address: {seen:?}"
    );
    assert!(!log.iter().any(|l| l["path"] == "/cni-denied"), "{log:?}");
    // DNS to the gateway (and any other server) is moat's, sent on to the conflist's
    // resolver.
    let (dns, err) = in_pod(&pod, "dig +short +time=2 +tries=1 @10.89.0.1 example.com");
    assert!(dns.contains("203.0.113.20"), "{dns}{err}");

    // The audit log, one file per pod, names the pod.
    let audit =
        std::fs::read_to_string(w.dir.join(format!("audit/team-a_agent-7_{id}.jsonl"))).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines.iter().all(|l| l["sandbox"] == "team-a_agent-7"),
        "{audit}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["decision"] == "deny"
                && l["dst"].as_str().unwrap_or("").starts_with("10.1.0.10")),
        "{audit}"
    );

    // DEL: the engine ends, the bridge's interface is back (its MAC), moat's namespace and
    // state are gone; then the bridge's own DEL finds its interface.
    let moat_del = rt.moat("DEL", &id, &pod, args, &list, None);
    assert!(moat_del.ok, "{moat_del:?}");
    assert!(!runs(pid));
    let bridge_mac = result["interfaces"][index]["mac"].clone();
    let (back, _) = interface(&pod);
    assert!(
        !back.is_empty() && back != mac,
        "the bridge's veth is back in the pod: {back}"
    );
    assert_ne!(Value::from(back), bridge_mac);
    assert!(!Path::new(&moat_ns).exists());
    assert!(!state_dir(&id).exists());
    let del = rt.run("DEL", &id, &pod, args, &list, None);
    assert!(del.ok, "{del:?}");
    let (gone, _) = interface(&pod);
    assert!(gone.is_empty(), "the bridge deleted its veth: {gone}");
    // A second DEL is no error.
    let again = rt.run("DEL", &id, &pod, args, &list, None);
    assert!(again.ok, "{again:?}");
    // The audit log ended.
    let audit =
        std::fs::read_to_string(w.dir.join(format!("audit/team-a_agent-7_{id}.jsonl"))).unwrap();
    assert!(
        audit
            .lines()
            .last()
            .unwrap_or("")
            .contains("\"event\":\"end\""),
        "{audit}"
    );
}

/// An engine that died: CHECK says so, DEL still gives everything back.
#[test]
fn check_finds_a_killed_engine_and_del_still_cleans_up() {
    let w = World::new();
    let mut rt = Runtime::new(&w);
    let pod = rt.pod(&format!("{}p2", w.host));
    let list = conflist(&w, moat_entry(&w, json!({})));
    let id = id(&w, "c2");
    let added = rt.run("ADD", &id, &pod, "", &list, None);
    assert!(added.ok, "{added:?}");
    assert_eq!(fetch(&pod, "http://203.0.113.10/"), "200");
    let pid = engine_pid(&id).unwrap();
    std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    for _ in 0..100 {
        if !runs(pid) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let check = rt.moat("CHECK", &id, &pod, "", &list, Some(&added.out));
    assert!(!check.ok);
    assert_eq!(check.out["code"], 103, "{check:?}");
    assert!(
        check.out["msg"].as_str().unwrap().contains("not running"),
        "{check:?}"
    );
    let del = rt.run("DEL", &id, &pod, "", &list, None);
    assert!(del.ok, "{del:?}");
    assert!(!state_dir(&id).exists());
    assert!(!Path::new(&format!("/run/netns/moat-{id}")).exists());
    let (mac, _) = interface(&pod);
    assert!(
        mac.is_empty(),
        "nothing of the pod's network is left: {mac}"
    );
}

/// A policy per pod, by name from the runtime's arguments or the pod's annotation; an
/// unknown name, a malformed configuration and a second ADD are refused with their code,
/// and leave nothing half done.
#[test]
fn a_policy_per_pod_and_bad_input_refused_whole() {
    let w = World::new();
    let mut rt = Runtime::new(&w);
    let policies = w.dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    // "only-11": one host, nothing else.
    std::fs::write(
        policies.join("only-11.toml"),
        "default_action = \"deny\"\n[[rules]]\naction = \"allow\"\ndestination = \"203.0.113.11\"\n",
    )
    .unwrap();
    let list = conflist(
        &w,
        moat_entry(
            &w,
            json!({"policy": "public-only", "policyDir": policies.to_string_lossy()}),
        ),
    );
    // By CNI_ARGS.
    let a = rt.pod(&format!("{}pa", w.host));
    let id_a = id(&w, "ca");
    let added = rt.run(
        "ADD",
        &id_a,
        &a,
        "IgnoreUnknown=1;MOAT_POLICY=only-11",
        &list,
        None,
    );
    assert!(added.ok, "{added:?}");
    assert_eq!(fetch(&a, "http://203.0.113.11/"), "200");
    assert_eq!(fetch(&a, "http://203.0.113.10/"), "000");
    // By the pod's annotation (runtimeConfig, as containerd and CRI-O pass it).
    let mut annotated = list.clone();
    annotated["plugins"][2]["runtimeConfig"] =
        json!({"io.kubernetes.cri.pod-annotations": {"moat.dev/policy": "only-11"}});
    let b = rt.pod(&format!("{}pb", w.host));
    let id_b = id(&w, "cb");
    let added_b = rt.run("ADD", &id_b, &b, "", &annotated, None);
    assert!(added_b.ok, "{added_b:?}");
    assert_eq!(fetch(&b, "http://203.0.113.10/"), "000");
    assert_eq!(fetch(&b, "http://203.0.113.11/"), "200");
    // The conflist's default for a pod that names none.
    let c = rt.pod(&format!("{}pc", w.host));
    let id_c = id(&w, "cc");
    let added_c = rt.run("ADD", &id_c, &c, "", &list, None);
    assert!(added_c.ok, "{added_c:?}");
    assert_eq!(fetch(&c, "http://203.0.113.10/"), "200");

    // A second ADD for a container served: refused, the first still served.
    let second = rt.moat("ADD", &id_a, &a, "", &list, Some(&added.out));
    assert!(!second.ok);
    assert_eq!(second.out["code"], 100, "{second:?}");
    assert_eq!(fetch(&a, "http://203.0.113.11/"), "200");

    // An unknown policy: refused before anything is changed; the bridge's interface stays.
    let d = rt.pod(&format!("{}pd", w.host));
    let id_d = id(&w, "cd");
    // The bridge first, as the runtime runs it, then moat-cni with its result.
    let mut bridge_only = list.clone();
    bridge_only["plugins"].as_array_mut().unwrap().pop();
    let bridged = rt.run("ADD", &id_d, &d, "", &bridge_only, None);
    assert!(bridged.ok, "{bridged:?}");
    let unknown = rt.moat(
        "ADD",
        &id_d,
        &d,
        "IgnoreUnknown=1;MOAT_POLICY=nope",
        &list,
        Some(&bridged.out),
    );
    assert!(!unknown.ok);
    assert_eq!(unknown.out["code"], 101, "{unknown:?}");
    assert!(
        unknown.out["msg"].as_str().unwrap().contains("nope"),
        "{unknown:?}"
    );
    assert!(!state_dir(&id_d).exists());
    assert!(!Path::new(&format!("/run/netns/moat-{id_d}")).exists());
    let (_, v4) = interface(&d);
    assert_eq!(v4.len(), 1, "the bridge's interface is untouched");
    // A path, not a name, is no policy name.
    let path = rt.moat(
        "ADD",
        &id_d,
        &d,
        "IgnoreUnknown=1;MOAT_POLICY=../only-11",
        &list,
        Some(&bridged.out),
    );
    assert_eq!(path.out["code"], 7, "{path:?}");

    // Malformed input, each with its code.
    let moat_conf = |raw: &str| -> (bool, Value) {
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", w.host))
            .arg(w.dir.join("cni-bin/moat-cni"))
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &id_d)
            .env("CNI_NETNS", &d)
            .env("CNI_IFNAME", "eth0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(raw.as_bytes())
            .unwrap();
        let out = moat_e2e::wait_output(child, Duration::from_secs(30));
        (
            out.status.success(),
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null),
        )
    };
    let (ok, out) = moat_conf("{not json");
    assert!(!ok);
    assert_eq!(out["code"], 6, "{out}");
    let (_, out) = moat_conf(r#"{"cniVersion": "9.9.9", "name": "x", "type": "moat-cni"}"#);
    assert_eq!(out["code"], 1, "{out}");
    let (_, out) = moat_conf(r#"{"cniVersion": "1.0.0", "name": "x", "type": "moat-cni"}"#);
    assert_eq!(out["code"], 7, "no prevResult: {out}");
    assert!(out["msg"].as_str().unwrap().contains("prevResult"), "{out}");
    let (_, out) = moat_conf(
        r#"{"cniVersion": "1.0.0", "name": "x", "type": "moat-cni", "dns": 5, "prevResult": {"interfaces": [{"name": "eth0", "sandbox": "/x"}], "ips": [{"address": "10.89.0.9/24", "interface": 0}]}}"#,
    );
    assert_eq!(out["code"], 7, "{out}");
    assert!(!state_dir(&id_d).exists());

    for (id, pod) in [(&id_a, &a), (&id_b, &b), (&id_c, &c), (&id_d, &d)] {
        let del = rt.run("DEL", id, pod, "", &list, None);
        assert!(del.ok, "{del:?}");
        assert!(!state_dir(id).exists());
    }
}

/// Fifty pods added and deleted one after another: every one served, and after the last
/// DEL no namespace, process or file of moat's is left.
#[test]
fn fifty_pods_added_and_deleted_leave_nothing() {
    let w = World::new();
    let mut rt = Runtime::new(&w);
    let list = conflist(&w, moat_entry(&w, json!({})));
    let mut pods = Vec::new();
    let mut pids = Vec::new();
    for n in 0..50 {
        let pod = rt.pod(&format!("{}q{n}", w.host));
        let id = id(&w, &format!("f{n}"));
        let added = rt.run("ADD", &id, &pod, "", &list, None);
        assert!(added.ok, "pod {n}: {added:?}");
        pids.push(engine_pid(&id).unwrap());
        pods.push((id, pod));
    }
    assert!(pids.iter().all(|&p| runs(p)));
    // Every pod is served (the first and the last reach the world).
    assert_eq!(fetch(&pods[0].1, "http://203.0.113.10/"), "200");
    assert_eq!(fetch(&pods[49].1, "http://203.0.113.10/"), "200");
    for (id, pod) in &pods {
        let del = rt.run("DEL", id, pod, "", &list, None);
        assert!(del.ok, "{del:?}");
    }
    assert!(pids.iter().all(|&p| !runs(p)), "an engine outlived its DEL");
    let prefix = format!("moat-{}", w.host);
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    for (id, _) in &pods {
        assert!(!state_dir(id).exists(), "{id}");
    }
}

/// What moat-cni refuses to touch and what it reports: the node's own namespace as
/// CNI_NETNS (nothing moved), a way out added to the pod after ADD (CHECK fails), and DEL
/// of a pod whose workload still runs (the interface is deleted, not handed back to it).
#[test]
fn the_nodes_namespace_a_second_way_out_and_a_live_pod_at_del() {
    let w = World::new();
    let mut rt = Runtime::new(&w);
    let list = conflist(&w, moat_entry(&w, json!({})));
    let pod = rt.pod(&format!("{}pl", w.host));
    let other = id(&w, "cx");
    let id = id(&w, "cl");
    let added = rt.run("ADD", &id, &pod, "", &list, None);
    assert!(added.ok, "{added:?}");
    // The host namespace as CNI_NETNS, with a result that names it: refused, code 4, and
    // the host keeps its interfaces.
    let host_ns = PathBuf::from(format!("/run/netns/{}", w.host));
    let mut forged = added.out.clone();
    forged["interfaces"][2]["sandbox"] = json!(host_ns.to_string_lossy());
    forged["interfaces"][2]["name"] = json!(format!("vh{}", &w.host["moath".len()..]));
    let own = rt.moat("ADD", &other, &host_ns, "", &list, Some(&forged));
    assert_eq!(own.out["code"], 4, "{own:?}");
    assert!(
        own.out["msg"].as_str().unwrap().contains("runs in"),
        "{own:?}"
    );
    assert!(!state_dir(&other).exists());
    // A second way out appears in the pod: CHECK says so.
    let check = rt.moat("CHECK", &id, &pod, "", &list, Some(&added.out));
    assert!(check.ok, "{check:?}");
    moat_e2e::sh(&[
        "ip",
        "link",
        "add",
        "extra0",
        "netns",
        pod.to_str().unwrap(),
        "type",
        "veth",
        "peer",
        "name",
        &format!("x{}", &w.host["moath".len()..]),
    ]);
    let check = rt.moat("CHECK", &id, &pod, "", &list, Some(&added.out));
    assert_eq!(check.out["code"], 103, "{check:?}");
    assert!(
        check.out["msg"].as_str().unwrap().contains("extra0"),
        "{check:?}"
    );
    // DEL while a process still runs in the pod: the bridge's veth is deleted, never
    // handed to what runs there.
    let mut sleeper = std::process::Command::new("nsenter")
        .arg(format!("--net={}", pod.display()))
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    let del = rt.moat("DEL", &id, &pod, "", &list, None);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(del.ok, "{del:?}");
    let (out, _) = in_pod(&pod, "ip -o link show");
    assert!(
        !out.contains("eth0"),
        "the interface went back to a live pod: {out}"
    );
    assert!(!state_dir(&id).exists());
    // The bridge's own DEL copes with its veth gone.
    let bridge_del = rt.run("DEL", &id, &pod, "", &list, None);
    assert!(bridge_del.ok, "{bridge_del:?}");
}

/// A pod given a host address whose gateway lies outside it (as Calico gives: a /32 and
/// 169.254.1.1): in moat's namespace the interface gets the on-link route to that gateway
/// before the default route through it, as the plugin that made it had.
#[test]
fn a_host_address_with_a_gateway_outside_it_is_routed_on_the_link() {
    let w = World::new();
    let mut rt = Runtime::new(&w);
    let list = conflist(&w, moat_entry(&w, json!({})));
    let mut bridge_only = list.clone();
    bridge_only["plugins"].as_array_mut().unwrap().pop();
    let pod = rt.pod(&format!("{}ph", w.host));
    let id = id(&w, "ch");
    let bridged = rt.run("ADD", &id, &pod, "", &bridge_only, None);
    assert!(bridged.ok, "{bridged:?}");
    let mut prev = bridged.out.clone();
    let address = prev["ips"][0]["address"].as_str().unwrap().to_owned();
    let ip = address.split('/').next().unwrap().to_owned();
    prev["ips"][0]["address"] = json!(format!("{ip}/32"));
    prev["ips"][0]["gateway"] = json!("169.254.1.1");
    let added = rt.moat("ADD", &id, &pod, "", &list, Some(&prev));
    assert!(added.ok, "{added:?}");
    let moat_ns = format!("/run/netns/moat-{id}");
    let routes = moat_e2e::run_with_timeout(
        {
            let mut c = std::process::Command::new("ip");
            c.args([
                "-n",
                moat_ns.trim_start_matches("/run/netns/"),
                "-4",
                "route",
            ]);
            c
        },
        Duration::from_secs(10),
    );
    let text = stdout(&routes);
    assert!(text.contains("169.254.1.1 dev eth0"), "{text}");
    assert!(text.contains("default via 169.254.1.1 dev eth0"), "{text}");
    // The pod sees the same: its address, the gateway on moat's link.
    let (pod_routes, _) = in_pod(&pod, "ip -4 route");
    assert!(
        pod_routes.contains("default via 169.254.1.1"),
        "{pod_routes}"
    );
    let del = rt.run("DEL", &id, &pod, "", &list, None);
    assert!(del.ok, "{del:?}");
    assert!(!state_dir(&id).exists());
}

/// Traffic to the pod's own address (a Service's, the kubelet's probes) reaches the ports
/// the conflist publishes, through moat, judged as inbound; any other port is not served.
#[test]
fn published_ports_reach_the_pod_at_its_own_address() {
    let w = World::new();
    let mut rt = Runtime::new(&w);
    let list = conflist(&w, moat_entry(&w, json!({"publish": ["8080"]})));
    let pod = rt.pod(&format!("{}pp", w.host));
    let second = id(&w, "cq");
    let id = id(&w, "cp");
    let added = rt.run("ADD", &id, &pod, "", &list, None);
    assert!(added.ok, "{added:?}");
    let ip = pod_ip(&added.out);
    let server = std::process::Command::new("nsenter")
        .arg(format!("--net={}", pod.display()))
        .args(["python3", "-m", "http.server", "--bind", "0.0.0.0"])
        .args(["8080", "--directory"])
        .arg(&w.dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _server = moat_e2e::Background::from_child(server);
    // From the node (the host namespace): the published port answers, once it listens.
    let node = |url: &str| {
        let mut c = std::process::Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", w.host)).args([
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "3",
            url,
        ]);
        stdout(&moat_e2e::run_with_timeout(c, Duration::from_secs(10)))
    };
    let mut answered = String::new();
    for _ in 0..50 {
        answered = node(&format!("http://{ip}:8080/"));
        if answered == "200" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(answered, "200");
    assert_eq!(node(&format!("http://{ip}:8081/")), "000");
    let audit = std::fs::read_to_string(w.dir.join(format!("audit/{id}.jsonl"))).unwrap();
    assert!(audit.contains("\"direction\":\"inbound\""), "{audit}");
    let del = rt.run("DEL", &id, &pod, "", &list, None);
    assert!(del.ok, "{del:?}");
    // A port spec that is not one: refused with the configuration's code.
    let bad = conflist(&w, moat_entry(&w, json!({"publish": ["http"]})));
    let pod2 = rt.pod(&format!("{}pq", w.host));
    let refused = rt.run("ADD", &second, &pod2, "", &bad, None);
    assert_eq!(refused.out["code"], 7, "{refused:?}");
    let _ = rt.run("DEL", &second, &pod2, "", &bad, None);
}

/// moat-cni delegating: it runs the bridge itself with moat's namespace as CNI_NETNS, so
/// the interface is made where moat serves from and nothing moves. The pod gets the
/// bridge's address on moat's TAP, the world sees it, the policy holds, the result places
/// the interface in the pod; DEL runs the bridge's DEL there, and the address is free again.
#[test]
fn a_delegating_moat_cni_makes_the_interface_where_it_serves() {
    let w = World::new();
    let mut rt = Runtime::new(&w);
    let list = delegating(&w, json!({"dns": [moat_e2e::WORLD_DNS]}));
    let pod = rt.pod(&format!("{}pg", w.host));
    let refused_id = id(&w, "cz");
    let loud_id = id(&w, "cl2");
    let id = id(&w, "cg");
    let added = rt.run("ADD", &id, &pod, "", &list, None);
    assert!(added.ok, "{added:?}");
    let result = &added.out;
    let index = result["ips"][0]["interface"].as_u64().unwrap() as usize;
    assert_eq!(
        result["interfaces"][index]["sandbox"],
        json!(pod.to_string_lossy()),
        "{result}"
    );
    let (mac, v4) = interface(&pod);
    assert_eq!(result["interfaces"][index]["mac"], mac);
    let ip = pod_ip(result);
    assert_eq!(v4, [format!("{ip}/32")]);
    // The bridge's interface is in moat's namespace, made there.
    let moat_ns = format!("moat-{id}");
    let out = moat_e2e::run_with_timeout(
        {
            let mut c = std::process::Command::new("ip");
            c.args(["-n", &moat_ns, "-4", "-o", "addr", "show", "dev", "eth0"]);
            c
        },
        Duration::from_secs(10),
    );
    assert!(
        stdout(&out).contains(&format!("{ip}/24")),
        "{}",
        stdout(&out)
    );
    assert_eq!(fetch(&pod, "http://203.0.113.10/delegated"), "200");
    assert_eq!(fetch(&pod, "http://10.1.0.10/delegated-private"), "000");
    let seen: Vec<Value> = w
        .log()
        .into_iter()
        .filter(|l| l["path"] == "/delegated")
        .collect();
    assert!(
        seen.len() == 1 && seen[0]["client"].as_str().unwrap().ends_with(&ip),
        "{seen:?}"
    );
    assert!(w.dir.join(format!("ipam/moat-e2e/{ip}")).exists());
    let check = rt.moat("CHECK", &id, &pod, "", &list, Some(result));
    assert!(check.ok, "{check:?}");
    let del = rt.run("DEL", &id, &pod, "", &list, None);
    assert!(del.ok, "{del:?}");
    assert!(!state_dir(&id).exists());
    assert!(!Path::new(&format!("/run/netns/{moat_ns}")).exists());
    let (gone, _) = interface(&pod);
    assert!(gone.is_empty(), "{gone}");
    // The bridge's address management let the address go (host-local keeps a file per
    // address held), and a second DEL is no error.
    assert!(!w.dir.join(format!("ipam/moat-e2e/{ip}")).exists());
    let again = rt.run("DEL", &id, &pod, "", &list, None);
    assert!(again.ok, "{again:?}");
    let pod2 = rt.pod(&format!("{}pg2", w.host));
    // A delegate that writes much (300 kB on stderr, past a pipe's buffer) before it
    // answers: moat-cni still gets its result, at once.
    rt.plugin(
        "noisy-bridge",
        "#!/bin/sh\nhead -c 300000 /dev/zero | tr '\\0' x >&2\nexec /usr/lib/cni/bridge\n",
    );
    let mut noisy = list.clone();
    noisy["plugins"][1]["delegate"]["type"] = json!("noisy-bridge");
    let started = std::time::Instant::now();
    let loud = rt.run("ADD", &loud_id, &pod2, "", &noisy, None);
    assert!(loud.ok, "{loud:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let del_loud = rt.run("DEL", &loud_id, &pod2, "", &noisy, None);
    assert!(del_loud.ok, "{del_loud:?}");
    // A delegate that is not a plugin's configuration: refused before anything is made.
    let mut bad = list.clone();
    bad["plugins"][1]["delegate"] = json!({"type": "../bridge"});
    let refused = rt.run("ADD", &refused_id, &pod2, "", &bad, None);
    assert_eq!(refused.out["code"], 7, "{refused:?}");
}

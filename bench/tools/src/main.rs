//! Load tools for `bench/run`, in one small binary (std, and rustls for the HTTPS client):
//!
//! ```text
//! moat-bench serve ADDR                  answer each connection's request with 64 bytes, close
//! moat-bench connrate ADDR CONC SECS     connect + request + response + close in a loop,
//!                                        CONC at once, for SECS; prints JSON
//! moat-bench hold ADDR COUNT SECS        open COUNT connections, print "holding", keep them SECS
//! moat-bench park ADDR SECS              accept connections and keep them open, up to 10,000,
//!                                        for SECS
//! moat-bench flood ADDR SECS             accept connections (up to 10,000), write to each as
//!                                        fast as it takes, never read, for SECS
//! moat-bench stall ADDR COUNT SECS       open COUNT connections, write to each as fast as it
//!                                        takes, never read; print "stalled N" once every
//!                                        connection is blocked (or 20 s passed), keep going SECS
//! moat-bench dnsserve ADDR               answer every A query with 203.0.113.10, other
//!                                        types with no answer (UDP)
//! moat-bench dnsload SERVER CONC SECS    A queries over UDP, CONC at once, for SECS; prints
//!                                        JSON (queries/s, latency p50/p99)
//! moat-bench udpserve ADDR              UDP goodput peer: "up" counts what a client sends
//!                                        until "end" and answers the count; "down R S"
//!                                        sends 1,400-byte datagrams at R Mbit/s for S s, then
//!                                        "done N" (N sent)
//! moat-bench udp ADDR up|down MBPS SECS  the client: prints JSON (goodput Mbit/s, loss %)
//! moat-bench https ADDR NAME CA rate SECS
//!                                        HTTPS requests, each on a new TLS connection to ADDR
//!                                        (an address or a name, resolved once) with server
//!                                        name NAME, one at a time, for SECS, each with an
//!                                        `X-Api-Key` header ($API_KEY, else a 37-character
//!                                        stand-in); prints JSON (requests/s, latency p50/p99)
//! moat-bench https ADDR NAME CA bulk SECS
//!                                        GET /big over one TLS connection, read for at most
//!                                        SECS; prints JSON (Gbit/s)
//! ```
//! CA is a PEM file of the roots to trust, or `env` for `$SSL_CERT_FILE` (what moat sets in
//! the sandbox when it intercepts TLS).
//! Every loop is bounded by its duration; every socket call has a timeout.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz";

/// The UDP goodput tests' datagram size.
const DATAGRAM: usize = 1400;

/// Sends `DATAGRAM`-byte datagrams on `sock` (connected, or to `to`) at `mbps` for `secs`;
/// returns how many were sent.
fn blast(sock: &std::net::UdpSocket, to: Option<SocketAddr>, mbps: f64, secs: f64) -> u64 {
    let payload = vec![0x5au8; DATAGRAM];
    let per_sec = mbps * 1e6 / (DATAGRAM as f64 * 8.0);
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        // Paced: never ahead of the offered rate.
        let due = (started.elapsed().as_secs_f64() * per_sec) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        let r = match to {
            Some(a) => sock.send_to(&payload, a),
            None => sock.send(&payload),
        };
        if r.is_ok() {
            sent += 1;
        }
    }
    sent
}

fn udpserve(addr: SocketAddr) {
    let sock = std::net::UdpSocket::bind(addr).unwrap_or_else(|e| {
        eprintln!("bind {addr}: {e}");
        std::process::exit(1)
    });
    println!("udp on {addr}");
    let mut buf = vec![0u8; 65536];
    let mut counts: std::collections::HashMap<SocketAddr, u64> = std::collections::HashMap::new();
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let msg = &buf[..n];
        if n == DATAGRAM {
            *counts.entry(peer).or_default() += 1;
        } else if msg == b"up" {
            counts.insert(peer, 0);
        } else if msg == b"end" {
            let got = counts.remove(&peer).unwrap_or(0);
            let _ = sock.send_to(format!("got {got}").as_bytes(), peer);
        } else if let Some(rest) = msg.strip_prefix(b"down ") {
            let text = String::from_utf8_lossy(rest).into_owned();
            let mut it = text
                .split_whitespace()
                .filter_map(|x| x.parse::<f64>().ok());
            let (Some(mbps), Some(secs)) = (it.next(), it.next()) else {
                continue;
            };
            let Ok(out) = sock.try_clone() else { continue };
            std::thread::spawn(move || {
                let sent = blast(&out, Some(peer), mbps, secs.min(60.0));
                std::thread::sleep(Duration::from_millis(200));
                for _ in 0..5 {
                    let _ = out.send_to(format!("done {sent}").as_bytes(), peer);
                }
            });
        }
    }
}

fn udp(addr: SocketAddr, dir: String, mbps: f64, secs: f64) {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .unwrap_or(addr);
    let sock = std::net::UdpSocket::bind(bind).unwrap_or_else(|_| std::process::exit(1));
    let _ = sock.connect(addr);
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = vec![0u8; 65536];
    let (sent, got) = match dir.as_str() {
        "up" => {
            let _ = sock.send(b"up");
            std::thread::sleep(Duration::from_millis(100));
            let sent = blast(&sock, None, mbps, secs);
            std::thread::sleep(Duration::from_millis(300));
            let mut got = 0;
            for _ in 0..5 {
                let _ = sock.send(b"end");
                if let Ok(n) = sock.recv(&mut buf)
                    && let Some(rest) = buf[..n].strip_prefix(b"got ")
                {
                    got = String::from_utf8_lossy(rest).trim().parse().unwrap_or(0);
                    break;
                }
            }
            (sent, got)
        }
        "down" => {
            let _ = sock.send(format!("down {mbps} {secs}").as_bytes());
            let (mut got, mut sent) = (0u64, 0u64);
            let deadline = Instant::now() + Duration::from_secs_f64(secs + 5.0);
            while Instant::now() < deadline {
                match sock.recv(&mut buf) {
                    Ok(n) if n == DATAGRAM => got += 1,
                    Ok(n) => {
                        if let Some(rest) = buf[..n].strip_prefix(b"done ") {
                            sent = String::from_utf8_lossy(rest).trim().parse().unwrap_or(0);
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
            (sent, got)
        }
        _ => usage(),
    };
    let goodput = got as f64 * DATAGRAM as f64 * 8.0 / secs / 1e6;
    let lost = if sent > 0 {
        (sent.saturating_sub(got)) as f64 * 100.0 / sent as f64
    } else {
        100.0
    };
    println!(
        "{}",
        serde_json::json!({"goodput_mbps": goodput, "lost_percent": lost, "sent": sent, "received": got})
    );
}

fn usage() -> ! {
    eprintln!(
        "usage: moat-bench serve ADDR | connrate ADDR CONC SECS | hold ADDR COUNT SECS | park ADDR SECS | flood ADDR SECS | stall ADDR COUNT SECS | dnsserve ADDR | dnsload SERVER CONC SECS | udpserve ADDR | udp ADDR up|down MBPS SECS | https ADDR NAME CA rate|bulk SECS"
    );
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| usage())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(arg(&args, 2)),
        Some("connrate") => connrate(arg(&args, 2), arg(&args, 3), arg(&args, 4)),
        Some("hold") => hold(arg(&args, 2), arg(&args, 3), arg(&args, 4)),
        Some("park") => park(arg(&args, 2), arg(&args, 3)),
        Some("flood") => flood(arg(&args, 2), arg(&args, 3)),
        Some("stall") => stall(arg(&args, 2), arg(&args, 3), arg(&args, 4)),
        Some("dnsserve") => dnsserve(arg(&args, 2)),
        Some("dnsload") => dnsload(arg(&args, 2), arg(&args, 3), arg(&args, 4)),
        Some("udpserve") => udpserve(arg(&args, 2)),
        Some("udp") => udp(arg(&args, 2), arg(&args, 3), arg(&args, 4), arg(&args, 5)),
        Some("https") => https(
            resolve(&arg::<String>(&args, 2)),
            arg(&args, 3),
            arg(&args, 4),
            arg(&args, 5),
            arg(&args, 6),
        ),
        _ => usage(),
    }
}

fn serve(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| {
        eprintln!("bind {addr}: {e}");
        std::process::exit(1)
    });
    println!("serving {addr}");
    // A fixed pool: each thread accepts and answers one connection at a time.
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let l = listener
                .try_clone()
                .unwrap_or_else(|_| std::process::exit(1));
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                for conn in l.incoming().flatten() {
                    let mut conn = conn;
                    let _ = conn.set_nodelay(true);
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    if conn.read(&mut buf).is_ok() {
                        let _ = conn.write_all(RESPONSE);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

fn one(addr: SocketAddr, buf: &mut [u8]) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(REQUEST)?;
    let mut got = 0;
    while got < RESPONSE.len() {
        match s.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    if got == RESPONSE.len() {
        Ok(())
    } else {
        Err(std::io::Error::other("short response"))
    }
}

fn connrate(addr: SocketAddr, conc: usize, secs: f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..conc.max(1))
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    match one(addr, &mut buf) {
                        Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        if let Ok((lat, e)) = w.join() {
            all.extend(lat);
            errors += e;
        }
    }
    print_report("connections", &mut all, errors, elapsed);
}

/// Prints one JSON line: count, errors, rate, latency p50/p99 (µs).
fn print_report(count_key: &str, latencies: &mut [u64], errors: u64, elapsed: f64) {
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).copied().unwrap_or(0)
    };
    let mut out = serde_json::json!({
        "errors": errors,
        "per_sec": latencies.len() as f64 / elapsed,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
    });
    out[count_key] = serde_json::Value::from(latencies.len());
    println!("{out}");
}

fn hold(addr: SocketAddr, count: usize, secs: f64) {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => held.push(s),
            Err(e) => {
                eprintln!("connect {addr}: {e}");
                break;
            }
        }
    }
    println!("holding {}", held.len());
    let _ = std::io::stdout().flush();
    std::thread::sleep(Duration::from_secs_f64(secs));
}

fn park(addr: SocketAddr, secs: f64) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| {
        eprintln!("bind {addr}: {e}");
        std::process::exit(1)
    });
    println!("parking on {addr}");
    std::thread::spawn(move || {
        let mut parked = Vec::new();
        for conn in listener.incoming().flatten() {
            if parked.len() < 10_000 {
                parked.push(conn);
            }
        }
    });
    std::thread::sleep(Duration::from_secs_f64(secs));
}

/// Writes to every stream until each would block; returns the bytes written. Streams
/// that fail are dropped.
fn write_all_until_blocked(streams: &mut Vec<TcpStream>, chunk: &[u8]) -> usize {
    let mut total = 0;
    streams.retain_mut(|s| {
        // Bounded: a stream takes at most its buffers' worth before it blocks.
        for _ in 0..4096 {
            match s.write(chunk) {
                Ok(0) => return false,
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    });
    total
}

fn flood(addr: SocketAddr, secs: f64) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| {
        eprintln!("bind {addr}: {e}");
        std::process::exit(1)
    });
    let _ = listener.set_nonblocking(true);
    println!("flooding on {addr}");
    let chunk = vec![0x5a; 64 * 1024];
    let mut streams = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        while let Ok((s, _)) = listener.accept() {
            if streams.len() < 10_000 && s.set_nonblocking(true).is_ok() {
                streams.push(s);
            }
        }
        write_all_until_blocked(&mut streams, &chunk);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stall(addr: SocketAddr, count: usize, secs: f64) {
    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) if s.set_nonblocking(true).is_ok() => streams.push(s),
            Ok(_) => {}
            Err(e) => {
                eprintln!("connect {addr}: {e}");
                break;
            }
        }
    }
    let chunk = vec![0xa5; 64 * 1024];
    let start = Instant::now();
    let mut quiet = 0;
    // Until every connection is blocked both ways for a second, or 20 s.
    while quiet < 50 && start.elapsed() < Duration::from_secs(20) {
        let n = write_all_until_blocked(&mut streams, &chunk);
        quiet = if n == 0 { quiet + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("stalled {}", streams.len());
    let _ = std::io::stdout().flush();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        write_all_until_blocked(&mut streams, &chunk);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A query for `bench.example.test` type A with id `id`.
fn dns_query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["bench", "example", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn dnsserve(addr: SocketAddr) {
    let sock = std::net::UdpSocket::bind(addr).unwrap_or_else(|e| {
        eprintln!("bind {addr}: {e}");
        std::process::exit(1)
    });
    println!("dns on {addr}");
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, peer)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let q = &buf[..n];
        if n < 17 || q[2] & 0x80 != 0 {
            continue;
        }
        let mut a = q.to_vec();
        a[2] = 0x81;
        a[3] = 0x80;
        a[8..12].fill(0);
        // The question's type follows its name: an A query gets the address, any other
        // type an empty answer.
        let qtype = q[12..]
            .iter()
            .position(|&b| b == 0)
            .and_then(|end| q.get(12 + end + 1..12 + end + 3));
        if qtype == Some(&[0, 1]) {
            a[6..8].copy_from_slice(&[0, 1]); // one answer
            a.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 203, 0, 113, 10]);
        } else {
            a[6..8].fill(0);
        }
        let _ = sock.send_to(&a, peer);
    }
}

fn dnsload(server: SocketAddr, conc: usize, secs: f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..conc.max(1))
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut errors = 0u64;
                let bind: SocketAddr = if server.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                }
                .parse()
                .unwrap_or(server);
                let Ok(sock) = std::net::UdpSocket::bind(bind) else {
                    return (lat, 1);
                };
                if sock.connect(server).is_err()
                    || sock.set_read_timeout(Some(Duration::from_secs(2))).is_err()
                {
                    return (lat, 1);
                }
                let mut buf = [0u8; 1500];
                let mut id = (w as u16).wrapping_mul(7919);
                while !stop.load(Ordering::Relaxed) {
                    id = id.wrapping_add(1);
                    let t = Instant::now();
                    if sock.send(&dns_query(id)).is_err() {
                        errors += 1;
                        continue;
                    }
                    loop {
                        match sock.recv(&mut buf) {
                            Ok(n) if n >= 2 && buf[..2] == id.to_be_bytes() => {
                                lat.push(t.elapsed().as_micros() as u64);
                                break;
                            }
                            Ok(_) => continue,
                            Err(_) => {
                                errors += 1;
                                break;
                            }
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = Vec::new();
    let mut errors = 0;
    for w in workers {
        if let Ok((lat, e)) = w.join() {
            all.extend(lat);
            errors += e;
        }
    }
    print_report("queries", &mut all, errors, elapsed);
}

/// The client configuration trusting the roots in `ca` (`env`: `$SSL_CERT_FILE`).
fn tls_client(ca: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = if ca == "env" {
        std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| usage())
    } else {
        ca.to_owned()
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&path)
        .unwrap_or_else(|_| usage())
        .flatten()
    {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| usage())
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// A TLS connection to `addr` for `name`, handshake done.
fn tls_connect(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
    tcp.set_nodelay(true)?;
    let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let conn = rustls::ClientConnection::new(config.clone(), server_name)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// An address, or `name:port` resolved once (through the system's resolver: inside moat,
/// moat's DNS, so the address is the name's).
fn resolve(text: &str) -> SocketAddr {
    use std::net::ToSocketAddrs;
    text.parse().ok().unwrap_or_else(|| {
        text.to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| {
                eprintln!("cannot resolve {text}");
                std::process::exit(1)
            })
    })
}

/// `https ADDR NAME CA rate|bulk SECS`.
fn https(addr: SocketAddr, name: String, ca: String, mode: String, secs: f64) {
    let config = tls_client(&ca);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    match mode.as_str() {
        "rate" => {
            let key = std::env::var("API_KEY")
                .unwrap_or_else(|_| "stand_in_0123456789abcdef0123456789ab".to_owned());
            let request = format!(
                "GET / HTTP/1.1\r\nHost: {name}\r\nX-Api-Key: {key}\r\nConnection: close\r\n\r\n"
            );
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            let started = Instant::now();
            let mut buf = [0u8; 4096];
            while Instant::now() < deadline {
                let t = Instant::now();
                let done = tls_connect(&config, addr, &name).and_then(|mut s| {
                    s.write_all(request.as_bytes())?;
                    let mut got = 0;
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => got += n,
                            // A server that closes without close_notify has still answered.
                            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                            Err(e) => return Err(e),
                        }
                    }
                    if got == 0 {
                        return Err(std::io::Error::other("empty response"));
                    }
                    Ok(())
                });
                match done {
                    Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            print_report(
                "requests",
                &mut lat,
                errors,
                started.elapsed().as_secs_f64(),
            );
        }
        "bulk" => {
            let request = format!("GET /big HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
            let started = Instant::now();
            let mut total = 0u64;
            let mut buf = vec![0u8; 256 * 1024];
            let result = tls_connect(&config, addr, &name).and_then(|mut s| {
                s.write_all(request.as_bytes())?;
                while Instant::now() < deadline {
                    match s.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            });
            let elapsed = started.elapsed().as_secs_f64();
            let gbps = if result.is_ok() {
                total as f64 * 8.0 / elapsed / 1e9
            } else {
                0.0
            };
            println!("{}", serde_json::json!({ "bytes": total, "gbps": gbps }));
        }
        _ => usage(),
    }
}

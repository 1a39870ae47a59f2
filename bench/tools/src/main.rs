//! Load tools for `bench/run`, in one small binary with no dependencies beyond std:
//!
//! ```text
//! moat-bench serve ADDR                  answer each connection's request with 64 bytes, close
//! moat-bench connrate ADDR CONC SECS     connect + request + response + close in a loop,
//!                                        CONC at once, for SECS; prints JSON
//! moat-bench hold ADDR COUNT SECS        open COUNT connections, print "holding", keep them SECS
//! moat-bench park ADDR SECS              accept connections and keep them open, up to 10,000,
//!                                        for SECS
//! ```
//! Every loop is bounded by its duration; every socket call has a timeout.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const REQUEST: &[u8] = b"GET / HTTP/1.0\r\n\r\n";
const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 26\r\n\r\nabcdefghijklmnopqrstuvwxyz";

fn usage() -> ! {
    eprintln!(
        "usage: moat-bench serve ADDR | connrate ADDR CONC SECS | hold ADDR COUNT SECS | park ADDR SECS"
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
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let out = serde_json::json!({
        "connections": all.len(),
        "errors": errors,
        "per_sec": all.len() as f64 / elapsed,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
    });
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

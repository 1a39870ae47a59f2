#!/usr/bin/env python3
"""The test world's servers, run inside the world network namespace.

Every server listens on all addresses (IPv4 and IPv6) of the namespace and appends one JSON
line per request to the log file given on the command line, so tests can assert what
arrived where. Bounded: request bodies are streamed, never stored.

  HTTP echo      tcp 80, 8080   answers JSON: method, path, host, client, server address
  TCP sink       tcp 9000       reads to EOF, answers the SHA-256 of what arrived
  TCP source     tcp 9001       reads "N\\n", sends N bytes of a fixed pattern, closes
  TCP flood      tcp 9002       sends as fast as it is taken (64 MiB at most), never reads
  TCP answer+RST tcp 9003       reads "N\n", sends N bytes of the fixed pattern, waits until
                                the peer's TCP acknowledged them all, and resets (SO_LINGER 0):
                                a server that closes abortively right after answering
  TCP banner     tcp 2222, 443, 853  sends "BANNER\\n" on connect (a server-first protocol);
                                on 203.0.113.20 (README_HTTPS) 443 is the HTTPS echo instead
  UDP echo       udp 7777       echoes each datagram (on each address given after the log)
  UDP burst      udp 7778       on "N SIZE TAIL", sends N datagrams of SIZE bytes and one of
                                TAIL bytes back in one system call (UDP_SEGMENT), so they all
                                wait together in moat's socket; each starts with its 4-byte index
  UDP GRO sink   udp 7779       takes datagrams coalesced (UDP_GRO) and logs each read: its
                                bytes, segment size, how many datagrams, whether each is
                                "index (4 bytes) + index % 251 repeated", and the first index
  DNS            udp+tcp 53     answers *.example.test from a table (and the README's
                                example.com and api.example.com: 203.0.113.20)
  HTTPS echo     tcp 8443       the HTTP echo over TLS, certificate from the world's own test CA
                                (world-ca.pem beside the log; *.example.test, 203.0.113.10,
                                and the README's example.com, *.example.com, 203.0.113.20);
                                logs the server name and ALPN it saw
  HTTPS untrusted tcp 9443      the same with a self-signed certificate no CA signed
  (h2echo.py, when the system's python3 has the h2 module: HTTP/2 echo on tcp 8445)

Under /simple/ (a PEP 503 index) and /npm/ (an npm registry) the echo serves one package,
demo-pkg, for the package-tool tests.

The echo shows what arrived: every header, and the body (Content-Length or chunked; up to
64 KiB as text). Under /echo-header it also answers with the request's Authorization and X-Key
as X-Echo-* headers; under /chunked-answer its answer is chunked. Hosts that hand a request's
X-Key back in another form: under /gzip-echo the answer is gzip-compressed when the request
accepts gzip; under /encoded-echo the answer is X-Key in base64 (standard and URL-safe, after
0, 1 and 2 bytes), hexadecimal (both cases) and percent-encoded; under /range-echo the answer is
"key=X-KEY\n", and a Range of bytes gets 206 with that piece.
"""
import base64
import gzip
import fcntl
import hashlib
import os
import ssl
import subprocess
import json
import re
import socket
import socketserver
import struct
import sys
import termios
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOG = open(sys.argv[1], "a", buffering=1)
LOCK = threading.Lock()

def log(**fields):
    with LOCK:
        LOG.write(json.dumps(fields) + "\n")

PATTERN = bytes(range(256)) * 256  # 64 KiB

# name -> list of (qtype, rdata-bytes), or ("cname", target)
A, AAAA, CNAME, HTTPS = 1, 28, 5, 65
def a(ip): return (A, socket.inet_pton(socket.AF_INET, ip))
def aaaa(ip): return (AAAA, socket.inet_pton(socket.AF_INET6, ip))
def enc(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".") if l) + b"\0"
TABLE = {
    "api.example.test": [a("203.0.113.10"), aaaa("2001:db8::10")],
    "www.example.test": [a("203.0.113.10"), aaaa("2001:db8::10")],
    "other.example.test": [a("203.0.113.11")],
    "private.example.test": [a("10.1.0.10")],
    "loopback.example.test": [a("127.0.0.1")],
    "metadata.example.test": [a("169.254.169.254")],
    "mixed.example.test": [a("10.1.0.10"), a("203.0.113.10")],
    "alias.example.test": [("cname", "x.tracking.example.test")],
    "clean-alias.example.test": [("cname", "api.example.test")],
    # An HTTPS record with an ECH configuration (RFC 9460: priority 1, target ".", alpn h2,
    # ech): moat removes the ech parameter while it intercepts TLS.
    "ech.example.test": [a("203.0.113.10"),
                         (HTTPS, struct.pack(">HB", 1, 0) + struct.pack(">HH", 1, 3) + b"\x02h2"
                          + struct.pack(">HH", 5, 8) + b"ECHCONFG")],
    # 40 addresses: more than a 512-byte UDP answer holds.
    "big.example.test": [a("203.0.113.%d" % i) for i in range(100, 140)],
    # The names the README's command lines use (tests/readme.rs): HTTPS on 443 there.
    "example.com": [a("203.0.113.20")],
    "api.example.com": [a("203.0.113.20")],
}
README_HTTPS = "203.0.113.20"
ROTATE = ["203.0.113.10", "203.0.113.11"]
rotation = [0]

def records_for(name):
    if name == "rotate.example.test":
        with LOCK:
            rotation[0] += 1
            return [a(ROTATE[rotation[0] % 2])]
    records = TABLE.get(name)
    if records is None and name.endswith(".example.test"):
        records = [a("203.0.113.10"), aaaa("2001:db8::10")]
    return records

def lookup(name, qtype, depth=0):
    """(answers, exists): answers as (owner, type, rdata)."""
    records = records_for(name)
    if records is None:
        return [], False
    for r in records:
        if r[0] == "cname" and depth < 8:
            rest, exists = lookup(r[1], qtype, depth + 1)
            return [(name, CNAME, enc(r[1]))] + rest, exists
    return [(name, t, d) for t, d in records if t == qtype], True

def dns_answer(query):
    if len(query) < 12:
        return None
    qid, flags, qd = struct.unpack(">HHH", query[:6])
    if flags & 0x8000 or qd < 1:
        return None
    i, labels = 12, []
    while i < len(query) and query[i] != 0:
        n = query[i]
        labels.append(query[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    qend = i + 5
    if qend > len(query):
        return None
    qtype = struct.unpack(">H", query[i + 1:i + 3])[0]
    name = ".".join(labels).lower()
    log(server="dns", name=name, qtype=qtype)
    answers, exists = lookup(name, qtype)
    rcode = 0 if exists else 3
    out = struct.pack(">HHHHHH", qid, 0x8180 | (flags & 0x0100) | rcode, 1, len(answers), 0, 0)
    out += query[12:qend]
    for owner, rtype, rdata in answers:
        out += enc(owner) + struct.pack(">HHIH", rtype, 1, 30, len(rdata)) + rdata
    return out

def log_raw_query(transport, local, data):
    """What a query carried: its size, its section counts, and whether the test marker
    EXFIL rode along anywhere in it."""
    counts = list(struct.unpack(">HHHH", data[4:12])) if len(data) >= 12 else []
    log(server="dns-raw", transport=transport, local=local, bytes=len(data),
        counts=counts, marker=b"EXFIL" in data)

class DnsUdp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        log_raw_query("udp", self.server.server_address[0], data)
        answer = dns_answer(data)
        if answer:
            sock.sendto(answer, self.client_address)

class DnsTcp(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            head = self.request.recv(2)
            if len(head) < 2:
                return
            n = struct.unpack(">H", head)[0]
            data = b""
            while len(data) < n:
                chunk = self.request.recv(n - len(data))
                if not chunk:
                    return
                data += chunk
            log_raw_query("tcp", self.server.server_address[0], data)
            answer = dns_answer(data)
            if answer:
                self.request.sendall(struct.pack(">H", len(answer)) + answer)

def package_files():
    """A tiny Python wheel and npm tarball for the package-tool tests, made in memory."""
    import base64, io, tarfile, zipfile
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as z:
        files = {
            "demo_pkg/__init__.py": b"VALUE = 42\n",
            "demo_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
            "demo_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: world\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        }
        record = ""
        for name, data in files.items():
            z.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record += "%s,sha256=%s,%d\n" % (name, digest, len(data))
        record += "demo_pkg-1.0.dist-info/RECORD,,\n"
        z.writestr("demo_pkg-1.0.dist-info/RECORD", record)
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as t:
        for name, data in {
            "package/package.json": b'{"name": "demo-pkg", "version": "1.0.0", "main": "index.js"}',
            "package/index.js": b"module.exports = 42;\n",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
    return wheel.getvalue(), tgz.getvalue()

WHEEL, TARBALL = package_files()

class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *args):
        pass
    def packages(self):
        """A PEP 503 index under /simple/ and an npm registry under /npm/ (one package each)."""
        import base64
        host = self.headers.get("Host")
        path = self.path.split("?")[0]
        if path in ("/simple/demo-pkg/", "/simple/demo-pkg"):
            digest = hashlib.sha256(WHEEL).hexdigest()
            body = ('<html><body><a href="/packages/demo_pkg-1.0-py3-none-any.whl#sha256=%s">'
                    'demo_pkg-1.0-py3-none-any.whl</a></body></html>' % digest).encode()
            kind = "text/html"
        elif path == "/packages/demo_pkg-1.0-py3-none-any.whl":
            body, kind = WHEEL, "application/octet-stream"
        elif path == "/npm/demo-pkg":
            integrity = "sha512-" + base64.b64encode(hashlib.sha512(TARBALL).digest()).decode()
            body = json.dumps({"name": "demo-pkg", "dist-tags": {"latest": "1.0.0"},
                "versions": {"1.0.0": {"name": "demo-pkg", "version": "1.0.0", "dist": {
                    "tarball": "http://%s/npm/demo-pkg/-/demo-pkg-1.0.0.tgz" % host,
                    "shasum": hashlib.sha1(TARBALL).hexdigest(), "integrity": integrity}}}}).encode()
            kind = "application/json"
        elif path == "/npm/demo-pkg/-/demo-pkg-1.0.0.tgz":
            body, kind = TARBALL, "application/octet-stream"
        else:
            return False
        log(server="packages", path=self.path, host=host, client=self.client_address[0])
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return True
    def handle_any(self):
        if self.command == "GET" and self.packages():
            return
        # The body, Content-Length or chunked; up to 64 KiB of it is shown as text.
        digest, length, shown = hashlib.sha256(), 0, b""
        def took(chunk):
            nonlocal length, shown
            digest.update(chunk)
            length += len(chunk)
            if len(shown) < 65536:
                shown += chunk[:65536 - len(shown)]
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size = int(self.rfile.readline(4096).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(4096) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                took(self.rfile.read(size))
                self.rfile.readline(16)
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left > 0:
                chunk = self.rfile.read(min(left, 65536))
                if not chunk:
                    break
                took(chunk)
                left -= len(chunk)
        local = self.connection.getsockname()
        tls = isinstance(self.connection, ssl.SSLSocket)
        info = {
            "server": "https" if tls else "http", "method": self.command, "path": self.path,
            "host": self.headers.get("Host"), "client": self.client_address[0],
            "local": local[0], "port": local[1], "body_len": length,
            "body_sha256": digest.hexdigest(),
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": shown.decode("utf-8", "replace"),
        }
        if tls:
            info["sni"] = getattr(self.connection, "sni", None)
            info["alpn"] = self.connection.selected_alpn_protocol()
        log(**info)
        body = (json.dumps(info) + "\n").encode()
        key = (self.headers.get("X-Key") or "").encode()
        status, extra = 200, []
        if self.path.startswith("/encoded-echo"):
            body = (json.dumps(encoded(key)) + "\n").encode()
        elif self.path.startswith("/range-echo"):
            body = b"key=" + key + b"\n"
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
            if m:
                first = int(m.group(1))
                last = min(int(m.group(2) or len(body) - 1), len(body) - 1)
                extra.append(("Content-Range", "bytes %d-%d/%d" % (first, last, len(body))))
                body, status = body[first:last + 1], 206
        elif self.path.startswith("/gzip-echo") and "gzip" in (self.headers.get("Accept-Encoding") or ""):
            body = gzip.compress(body)
            extra.append(("Content-Encoding", "gzip"))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for name, value in extra:
            self.send_header(name, value)
        # /echo-header/...: the request's Authorization and X-Key come back as headers too.
        if self.path.startswith("/echo-header"):
            for name in ("Authorization", "X-Key"):
                if self.headers.get(name):
                    self.send_header("X-Echo-" + name, self.headers.get(name))
        if self.path.startswith("/chunked-answer"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 7):
                part = body[i:i + 7]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = handle_any

def encoded(key):
    """X-Key handed back encoded: base64 after 0, 1 and 2 bytes (standard, and URL-safe
    without padding), hexadecimal in both cases, and its length (what arrived)."""
    pads = (b"", b"a", b"ab")
    return {"b64": [base64.b64encode(p + key).decode() for p in pads],
            "b64url": [base64.urlsafe_b64encode(p + key).decode().rstrip("=") for p in pads],
            "hex": key.hex(), "HEX": key.hex().upper(),
            "pct": "".join("%%%02X" % b for b in key), "arrived": len(key)}

class Sink(socketserver.BaseRequestHandler):
    def handle(self):
        digest, total = hashlib.sha256(), 0
        while True:
            chunk = self.request.recv(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            total += len(chunk)
        log(server="sink", client=self.client_address[0], bytes=total)
        self.request.sendall((digest.hexdigest() + "\n").encode())

class Source(socketserver.BaseRequestHandler):
    def handle(self):
        line = b""
        while not line.endswith(b"\n") and len(line) < 32:
            c = self.request.recv(1)
            if not c:
                return
            line += c
        n = int(line)
        log(server="source", client=self.client_address[0], bytes=n)
        while n > 0:
            k = min(n, len(PATTERN))
            self.request.sendall(PATTERN[:k])
            n -= k

class Flood(socketserver.BaseRequestHandler):
    def handle(self):
        chunk, sent = bytes(65536), 0
        self.request.settimeout(120)
        try:
            while sent < (64 << 20):
                sent += self.request.send(chunk)
        except OSError:
            pass
        log(server="flood", client=self.client_address[0], bytes=sent)

class AnswerReset(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(5)
        try:
            n = min(int(self.request.recv(64)), 1 << 20)
            self.request.sendall((PATTERN * (n // len(PATTERN) + 1))[:n])
            # Everything acknowledged (nothing left in the send queue), at most 5 s.
            for _ in range(500):
                left = struct.unpack("i", fcntl.ioctl(self.request, termios.TIOCOUTQ, b"\0" * 4))[0]
                if left == 0:
                    break
                threading.Event().wait(0.01)
        except (OSError, ValueError):
            return
        log(server="answer-reset", client=self.client_address[0], bytes=n)
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.request.close()

NAME_RE = re.compile(rb"[a-z0-9-]+(?:\.[a-z0-9-]+)*\.example\.test")

class Banner(socketserver.BaseRequestHandler):
    def handle(self):
        port = self.server.server_address[1]
        local = self.request.getsockname()[0]
        if port == 443 and local.removeprefix("::ffff:") == README_HTTPS:
            return https_on(self.request, self.client_address, self.server)
        log(server="banner", client=self.client_address[0], port=self.server.server_address[1])
        self.request.sendall(b"BANNER\n")
        # What arrived, until the client stops sending (bounded): its length and every
        # test name in it (a ClientHello's server name), so tests can tell what got through.
        self.request.settimeout(1.0)
        data = b""
        try:
            while len(data) < 65536:
                b = self.request.recv(4096)
                if not b:
                    break
                data += b
        except OSError:
            pass
        log(server="banner-data", client=self.client_address[0],
            port=self.server.server_address[1], bytes=len(data),
            names=sorted(set(n.decode() for n in NAME_RE.findall(data + b" " + tls_payload(data)))))

def tls_payload(data):
    """The payloads of the TLS records at the start of `data`, joined (a name split over
    records is whole again)."""
    out, pos = b"", 0
    while pos + 5 <= len(data) and data[pos] in (20, 21, 22, 23):
        n = int.from_bytes(data[pos + 3:pos + 5], "big")
        out += data[pos + 5:pos + 5 + n]
        pos += 5 + n
    return out

class UdpEcho(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        log(server="udp", client=self.client_address[0], local=self.server.server_address[0],
            bytes=len(data))
        sock.sendto(data, self.client_address)

class UdpBurst(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        try:
            n, size, tail = (int(x) for x in data.split())
        except ValueError:
            return
        if not (1 <= n <= 64 and 4 <= tail <= size <= 1400):
            return
        body = b"".join(i.to_bytes(4, "big") + bytes([i % 251]) * (size - 4) for i in range(n))
        body += n.to_bytes(4, "big") + b"t" * (tail - 4)
        log(server="udp-burst", client=self.client_address[0], datagrams=n + 1)
        # UDP_SEGMENT (103): the kernel sends the body as datagrams of SIZE bytes.
        sock.sendmsg([body], [(socket.SOL_UDP, 103, size.to_bytes(2, sys.byteorder))], 0,
                     self.client_address)

def gro_socket(addr):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_UDP, 104, 1)  # UDP_GRO: a run sent as one arrives as one read
    s.bind((addr, 7779))
    return s

def gro_sink(s):
    while True:
        data, anc, _, peer = s.recvmsg(65536, 64)
        size = next((int.from_bytes(d[:4], sys.byteorder) for lvl, t, d in anc
                     if lvl == socket.SOL_UDP and t == 104), len(data)) or 1
        parts = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
        def well_formed(p):
            i = int.from_bytes(p[:4], "big")
            return len(p) >= 4 and p[4:] == bytes([i % 251]) * (len(p) - 4)
        log(server="udp-gro", client=peer[0], bytes=len(data), segment=size,
            datagrams=len(parts), well_formed=all(well_formed(p) for p in parts),
            first=int.from_bytes(data[:4], "big"))

class Dual:
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

class TcpServer(Dual, socketserver.ThreadingTCPServer):
    request_queue_size = 1024
class UdpServer(Dual, socketserver.ThreadingUDPServer):
    pass
class HttpServer(Dual, ThreadingHTTPServer):
    request_queue_size = 1024
    def handle_error(self, request, client_address):
        pass  # failed TLS handshakes are what some tests expect; they are not the world's errors

class Udp4(socketserver.ThreadingUDPServer):
    allow_reuse_address = True
    daemon_threads = True
class Udp6(socketserver.ThreadingUDPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True

def make_certs(d):
    """The world's test CA, a server certificate it signs, and a self-signed one."""
    def openssl(*args):
        subprocess.run(("openssl",) + args, check=True, capture_output=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    path = lambda name: os.path.join(d, name)
    openssl("req", "-x509", *ec, "-keyout", path("world-ca.key"), "-out", path("world-ca.pem"),
            "-days", "2", "-subj", "/CN=moat test world CA")
    openssl("req", *ec, "-keyout", path("server.key"), "-out", path("server.csr"),
            "-subj", "/CN=example.test")
    with open(path("server.ext"), "w") as f:
        f.write("subjectAltName=DNS:example.test,DNS:*.example.test,IP:203.0.113.10,IP:2001:db8::10,"
                "DNS:example.com,DNS:*.example.com,IP:203.0.113.20\n"
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", path("server.csr"), "-CA", path("world-ca.pem"),
            "-CAkey", path("world-ca.key"), "-CAcreateserial", "-out", path("server.pem"),
            "-days", "2", "-extfile", path("server.ext"))
    openssl("req", "-x509", *ec, "-keyout", path("untrusted.key"), "-out", path("untrusted.pem"),
            "-days", "2", "-subj", "/CN=untrusted.example.test",
            "-addext", "subjectAltName=DNS:*.example.test,IP:203.0.113.10")

def remember_sni(sock, name, _ctx):
    sock.sni = name

def https_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.sni_callback = remember_sni
    return ctx

def https_server(port, cert, key):
    ctx = https_context(cert, key)
    server = HttpServer(("::", port), Echo)
    # The handshake happens in the request's own thread, on its first read.
    server.socket = ctx.wrap_socket(server.socket, server_side=True,
                                    do_handshake_on_connect=False)
    return server

CERTS = os.path.dirname(os.path.abspath(sys.argv[1]))
make_certs(CERTS)
SERVER_CTX = https_context(os.path.join(CERTS, "server.pem"), os.path.join(CERTS, "server.key"))

def https_on(sock, client, server):
    """The HTTPS echo on an accepted connection (the README's names on 443), bounded."""
    sock.settimeout(10)
    try:
        conn = SERVER_CTX.wrap_socket(sock, server_side=True)
    except (OSError, ssl.SSLError):
        return
    try:
        Echo(conn, client, server)
    except OSError:
        pass
    finally:
        conn.close()

servers = [HttpServer(("::", 80), Echo), HttpServer(("::", 8080), Echo),
           TcpServer(("::", 9000), Sink), TcpServer(("::", 9001), Source),
           TcpServer(("::", 9002), Flood), TcpServer(("::", 9003), AnswerReset),
           TcpServer(("::", 2222), Banner), TcpServer(("::", 443), Banner),
           TcpServer(("::", 853), Banner), TcpServer(("::", 53), DnsTcp),
           https_server(8443, os.path.join(CERTS, "server.pem"), os.path.join(CERTS, "server.key")),
           https_server(9443, os.path.join(CERTS, "untrusted.pem"),
                        os.path.join(CERTS, "untrusted.key"))]
# UDP answers must come from the address that was asked: one socket per address.
for addr in sys.argv[2:]:
    cls = Udp6 if ":" in addr else Udp4
    servers += [cls((addr, 7777), UdpEcho), cls((addr, 7778), UdpBurst), cls((addr, 53), DnsUdp)]
for s in servers:
    threading.Thread(target=s.serve_forever, daemon=True).start()
# Bound before "ready", so a run sent at once finds its socket.
for sink in [gro_socket(addr) for addr in sys.argv[2:]]:
    threading.Thread(target=gro_sink, args=(sink,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()  # runs until the harness closes our stdin (or kills us)

#!/usr/bin/env python3
"""The test world's HTTP/2 echo (tcp 8445), run inside the world network namespace.

TLS with the world's test certificate (server.pem beside the log), ALPN h2 only. Each request
is answered with JSON showing what arrived — every header field and the body as text — and
appended as one line to the log given on the command line ("server": "h2"; the answer shows
the body's first 4 KiB, the log its first 64 KiB). The request's
x-key comes back as an x-echo-x-key header too. Under /encoded-echo the answer is x-key
encoded as the HTTP/1.1 echo's is (world.py), in DATA frames of 7 bytes each, so every form
is cut across frames. Uses the h2 library (python3-h2).
"""
import base64
import json
import os
import socket
import ssl
import sys
import threading

import h2.config
import h2.connection
import h2.events

LOG = open(sys.argv[1], "a", buffering=1)
LOCK = threading.Lock()
CERTS = os.path.dirname(os.path.abspath(sys.argv[1]))


def log(**fields):
    with LOCK:
        LOG.write(json.dumps(fields) + "\n")


def encoded(key):
    """As world.py's: base64 (both alphabets, three alignments), hex, percent, the length."""
    pads = (b"", b"a", b"ab")
    return {"b64": [base64.b64encode(p + key).decode() for p in pads],
            "b64url": [base64.urlsafe_b64encode(p + key).decode().rstrip("=") for p in pads],
            "hex": key.hex(), "HEX": key.hex().upper(),
            "pct": "".join("%%%02X" % b for b in key), "arrived": len(key)}


def serve(sock):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    heads, bodies = {}, {}
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    heads[event.stream_id] = [[k.decode(), v.decode()] for k, v in event.headers]
                    bodies[event.stream_id] = b""
                elif isinstance(event, h2.events.DataReceived):
                    if len(bodies.get(event.stream_id, b"")) < 65536:
                        bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    sid = event.stream_id
                    fields = heads.pop(sid, [])
                    info = {"server": "h2", "headers": fields,
                            "path": dict(fields).get(":path"),
                            "body": bodies.pop(sid, b"").decode("utf-8", "replace")}
                    log(**info)
                    # The answer shows the first 4 KiB of the body: one frame.
                    info["body"] = info["body"][:4096]
                    answer = (json.dumps(info) + "\n").encode()
                    out = [(":status", "200"), ("content-type", "application/json"),
                           ("content-length", str(len(answer)))]
                    key = dict(fields).get("x-key")
                    if key:
                        out.append(("x-echo-x-key", key))
                    if (info["path"] or "").startswith("/encoded-echo"):
                        answer = (json.dumps(encoded((key or "").encode())) + "\n").encode()
                        out[2] = ("content-length", str(len(answer)))
                        conn.send_headers(sid, out)
                        for i in range(0, len(answer), 7):
                            conn.send_data(sid, answer[i:i + 7], end_stream=i + 7 >= len(answer))
                        continue
                    conn.send_headers(sid, out)
                    conn.send_data(sid, answer, end_stream=True)
            sock.sendall(conn.data_to_send())
    except OSError:
        return
    except h2.exceptions.ProtocolError as e:
        # What a client (moat) got wrong is worth seeing in the test's output.
        print("h2echo: protocol error:", repr(e), file=sys.stderr, flush=True)
        try:
            sock.sendall(conn.data_to_send())
        except OSError:
            pass
    finally:
        sock.close()


def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(CERTS, "server.pem"), os.path.join(CERTS, "server.key"))
    ctx.set_alpn_protocols(["h2"])
    listener = socket.create_server(("::", 8445), family=socket.AF_INET6, dualstack_ipv6=True)
    print("ready", flush=True)
    while True:
        raw, _ = listener.accept()
        raw.settimeout(30)

        def handle(raw=raw):
            try:
                sock = ctx.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                raw.close()
                return
            serve(sock)

        threading.Thread(target=handle, daemon=True).start()


main()

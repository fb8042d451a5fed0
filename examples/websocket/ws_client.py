#!/usr/bin/env python3
"""A tiny stdlib-only WebSocket client for trying authgate's WebSocket routes.

  python3 ws_client.py 'ws://127.0.0.1:PORT/ws?access_token=TOKEN' [message ...]
  python3 ws_client.py --cafile gateway.crt 'wss://localhost:PORT/ws?access_token=TOKEN'

Performs the RFC 6455 handshake, prints the status line, the greeting the demo
backend sends (it shows the identity headers it received), sends each message
and prints the echo, then waits for server frames (e.g. the 1008 close that
`close_on_expiry` sends when the token expires) until --wait seconds pass.
"""
import argparse
import base64
import os
import socket
import ssl
import struct
import sys
from urllib.parse import urlsplit


def frame(opcode, payload):
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
    return buf


def read_frame(sock):
    b0, b1 = read_exact(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(sock, 8))[0]
    return b0 & 0x0F, read_exact(sock, n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("messages", nargs="*", default=["hello from the chat widget"])
    ap.add_argument("--cafile")
    ap.add_argument("--header", action="append", default=[], help="extra 'Name: value'")
    ap.add_argument("--wait", type=float, default=2.0)
    a = ap.parse_args()
    u = urlsplit(a.url)
    port = u.port or (443 if u.scheme == "wss" else 80)
    sock = socket.create_connection((u.hostname, port), timeout=10)
    if u.scheme == "wss":
        ctx = ssl.create_default_context(cafile=a.cafile)
        ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(sock, server_hostname=u.hostname)
    key = base64.b64encode(os.urandom(16)).decode()
    target = u.path + ("?" + u.query if u.query else "")
    extra = "".join(h + "\r\n" for h in a.header)
    sock.sendall(
        (f"GET {target} HTTP/1.1\r\nHost: {u.netloc}\r\nUpgrade: websocket\r\n"
         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
         f"{extra}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    text, _, rest = head.partition(b"\r\n\r\n")
    print(text.decode(errors="replace").splitlines()[0] if text else "(no response)")
    if b" 101 " not in text.split(b"\r\n")[0]:
        print((text + b"\r\n\r\n" + rest).decode(errors="replace"))
        return 1
    sock = _Prefixed(sock, rest)
    op, payload = read_frame(sock)
    print("server:", payload.decode(errors="replace"))
    for m in a.messages:
        sock.sendall(frame(1, m.encode()))
        op, payload = read_frame(sock)
        print("echo:  ", payload.decode(errors="replace"))
    sock.settimeout(a.wait)
    try:
        while True:
            op, payload = read_frame(sock)
            if op == 8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                print(f"server closed the socket: code {code}")
                return 0
            print("server:", payload.decode(errors="replace"))
    except (socket.timeout, TimeoutError):
        sock.sendall(frame(8, struct.pack("!H", 1000)))
        print("closed by client")
    except EOFError:
        print("connection closed")
    return 0


class _Prefixed:
    """A socket whose first reads return bytes already received."""

    def __init__(self, sock, prefix):
        self.sock, self.prefix = sock, prefix

    def recv(self, n):
        if self.prefix:
            out, self.prefix = self.prefix[:n], self.prefix[n:]
            return out
        return self.sock.recv(n)

    def sendall(self, data):
        self.sock.sendall(data)

    def settimeout(self, t):
        self.sock.settimeout(t)


if __name__ == "__main__":
    sys.exit(main())

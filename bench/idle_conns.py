#!/usr/bin/env python3
"""Open many keep-alive connections to a proxy, send one authenticated request on
each, keep them all open and idle, and read the proxy's resident memory.

  idle_conns.py --port P --path /hs/x --token JWT --pid PROXY_PID [--count 10000]

Prints one JSON object: rss_before_kib, rss_kib, hwm_kib, opened, ok (200s),
alive (connections still open when RSS was read), errors.
"""
import argparse
import asyncio
import json
import resource
import sys
import time


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


async def one(host, port, request, conns, stats, sem):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
        except Exception as e:  # noqa: BLE001
            stats["errors"] += 1
            stats["last_error"] = f"connect: {e!r}"
            return
        stats["opened"] += 1
        conns.append((reader, writer))
        if request is None:
            return
        try:
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            status = int(head.split(b" ", 2)[1])
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value.strip())
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            if chunked:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            elif length:
                await reader.readexactly(length)
            if status == 200:
                stats["ok"] += 1
            else:
                stats["bad_status"] = status
        except Exception as e:  # noqa: BLE001
            stats["errors"] += 1
            stats["last_error"] = f"request: {e!r}"


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/none/x")
    p.add_argument("--token", default="")
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--no-request", action="store_true",
                   help="only connect (diagnostics: memory per bare connection)")
    a = p.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.count + 256
    if soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(max(want, 65536), hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        print(f"idle_conns.py: open-files limit {soft} < {want}", file=sys.stderr)
        sys.exit(1)

    auth = f"Authorization: Bearer {a.token}\r\n" if a.token else ""
    request = (
        f"GET {a.path} HTTP/1.1\r\nHost: {a.host}:{a.port}\r\n{auth}"
        "User-Agent: authgate-bench-idle\r\nAccept: */*\r\n\r\n"
    ).encode()

    if a.no_request:
        request = None
    rss_before = status_kib(a.pid, "VmRSS")
    stats = {"opened": 0, "ok": 0, "errors": 0}
    conns = []
    sem = asyncio.Semaphore(a.concurrency)
    t0 = time.monotonic()
    await asyncio.gather(*(one(a.host, a.port, request, conns, stats, sem) for _ in range(a.count)))
    elapsed = time.monotonic() - t0
    await asyncio.sleep(a.settle)  # let the proxy go idle; closures show up as EOF
    alive = sum(1 for r, _ in conns if not r.at_eof())
    result = {
        "rss_before_kib": rss_before,
        "rss_kib": status_kib(a.pid, "VmRSS"),
        "hwm_kib": status_kib(a.pid, "VmHWM"),
        "alive": alive,
        "open_seconds": round(elapsed, 2),
        **stats,
    }
    for _, w in conns:
        w.close()
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())

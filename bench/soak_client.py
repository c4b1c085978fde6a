#!/usr/bin/env python3
"""Load for bench/soak.sh: short connections (connect, PING, +PONG, close) and
long ones (one connection, a PING every 50 ms) through a redis listener, plus
idle connections that send nothing. Every 5 s it prints one JSON line with the
running totals; a failure is any PING without its +PONG.

    soak_client.py HOST:PORT SECONDS [SHORT_WORKERS LONG_CONNS IDLE_CONNS]
"""

import json
import socket
import sys
import threading
import time

host, port = sys.argv[1].rsplit(":", 1)
addr = (host, int(port))
seconds = float(sys.argv[2])
short_workers, long_conns, idle_conns = (int(a) for a in (sys.argv[3:] + ["4", "16", "200"])[:3])

deadline = time.monotonic() + seconds
lock = threading.Lock()
totals = {"short_ok": 0, "short_failed": 0, "long_ok": 0, "long_failed": 0, "idle_open": 0}
last_errors = []


def count(key, error=None):
    with lock:
        totals[key] += 1
        if error is not None:
            last_errors.append(error)
            del last_errors[:-5]


def ping(sock):
    sock.sendall(b"PING\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        chunk = sock.recv(64)
        if not chunk:
            raise ConnectionError("closed before +PONG")
        reply += chunk
    if reply != b"+PONG\r\n":
        raise ConnectionError(f"unexpected reply {reply!r}")


def short_worker():
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(addr, timeout=5) as sock:
                ping(sock)
            count("short_ok")
        except OSError as e:
            count("short_failed", f"short: {e}")


def long_worker():
    sock = None
    while time.monotonic() < deadline:
        try:
            if sock is None:
                sock = socket.create_connection(addr, timeout=5)
            ping(sock)
            count("long_ok")
            time.sleep(0.05)
        except OSError as e:
            count("long_failed", f"long: {e}")
            if sock is not None:
                sock.close()
            sock = None
    if sock is not None:
        sock.close()


def idle_holder():
    held = []
    for _ in range(idle_conns):
        try:
            held.append(socket.create_connection(addr, timeout=5))
        except OSError as e:
            count("short_failed", f"idle: {e}")
    with lock:
        totals["idle_open"] = len(held)
    while time.monotonic() < deadline:
        time.sleep(1)
    for sock in held:
        sock.close()


threads = [threading.Thread(target=idle_holder)]
threads += [threading.Thread(target=short_worker) for _ in range(short_workers)]
threads += [threading.Thread(target=long_worker) for _ in range(long_conns)]
for t in threads:
    t.daemon = True
    t.start()


def report():
    with lock:
        print(json.dumps(dict(totals, errors=list(last_errors))), flush=True)


while time.monotonic() < deadline:
    time.sleep(min(5, max(0, deadline - time.monotonic())))
    report()
for t in threads:
    t.join(timeout=10)
report()

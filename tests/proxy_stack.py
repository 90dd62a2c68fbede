"""The reference deployment on loopback: nginx running the shipped deploy/nginx/activedaemon.conf
(TLS with a throw-away certificate) in front of `activedaemon serve --workers N`, and the floods
of a hostile crowd, each from its own loopback address (127.0.0.x: the proxy sees each as a
client of its own). Used by ``tests/test_deploy_proxy.py`` (correctness) and
``benchmarks/serve_crowd.py`` (timings). Every loop is bounded by a deadline."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
NGINX_CONF = REPO / "deploy" / "nginx" / "activedaemon.conf"
PROXY_HEADER = "x-refused-by"


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if Path("/usr/sbin/nginx").is_file() else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render_site(https_port: int, http_port: int, upstream_port: int, cert: Path, key: Path) -> str:
    """The shipped site configuration with loopback ports and a test certificate (every
    replaced line must be there: a changed shipped file fails loudly)."""
    text = NGINX_CONF.read_text()
    swaps = {
        "server 127.0.0.1:8000;": f"server 127.0.0.1:{upstream_port};",
        "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
        "listen [::]:443 ssl;": "",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen [::]:80;": "",
        "/etc/ssl/activedaemon/fullchain.pem": str(cert),
        "/etc/ssl/activedaemon/privkey.pem": str(key),
    }
    for old, new in swaps.items():
        if old not in text:
            raise ValueError(f"{NGINX_CONF} no longer holds {old!r}")
        text = text.replace(old, new)
    return text


def self_signed(tmp: Path) -> tuple[Path, Path]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@dataclass
class Stack:
    """nginx + `activedaemon serve --workers N` on loopback; ``url``: the proxy's https URL."""

    run: Path
    db_url: str
    tmp: Path
    workers: int = 2
    extra: list[str] = field(default_factory=list)
    key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    direct: bool = False  # clients talk to the service itself (plain HTTP), no proxy

    def __post_init__(self) -> None:
        self.service_port, self.https_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.https_port}"
        if self.direct:
            self.url = f"http://127.0.0.1:{self.service_port}"
        self.service: subprocess.Popen | None = None
        self.nginx: subprocess.Popen | None = None

    # -- processes -----------------------------------------------------------------------------
    def start_service(self, timeout: float = 240) -> None:
        env = {**os.environ, "ACTIVEDAEMON_ADMIN_KEY": self.key, "ACTIVEDAEMON_DB_URL": self.db_url,
               "OMP_NUM_THREADS": "1"}  # fmt: skip
        cmd = [sys.executable, "-m", "activedaemon.cli", "serve", "--model", str(self.run),
               "--workers", str(self.workers), "--host", "127.0.0.1",
               "--port", str(self.service_port), *self.extra]  # fmt: skip
        log = open(self.tmp / "service.log", "ab")  # noqa: SIM115 - the child holds it
        self.service = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        direct = f"http://127.0.0.1:{self.service_port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.service.poll() is not None:
                raise RuntimeError(f"the service exited with {self.service.returncode}")
            try:
                if httpx.get(direct, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.3)
        raise RuntimeError(f"the service did not answer within {timeout} s")

    def stop_service(self) -> None:
        if self.service is not None and self.service.poll() is None:
            self.service.terminate()
            try:
                self.service.wait(30)
            except subprocess.TimeoutExpired:
                self.service.kill()
                self.service.wait(10)
        self.service = None

    def start_nginx(self) -> None:
        if self.direct:
            return
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed")
        cert, key = self_signed(self.tmp)
        site = self.tmp / "activedaemon.conf"
        site.write_text(render_site(self.https_port, free_port(), self.service_port, cert, key))
        temp = self.tmp / "nginx-temp"
        temp.mkdir(exist_ok=True)
        user = "user root;\n" if os.geteuid() == 0 else ""
        mime = "include /etc/nginx/mime.types;" if Path("/etc/nginx/mime.types").is_file() else ""
        conf = self.tmp / "nginx.conf"
        conf.write_text(
            f"{user}daemon off;\nworker_processes 1;\nworker_rlimit_nofile 8192;\n"
            f"pid {self.tmp}/nginx.pid;\nerror_log {self.tmp}/nginx-error.log warn;\n"
            "events { worker_connections 4096; }\n"
            f"http {{\n  {mime}\n  access_log {self.tmp}/nginx-access.log;\n"
            + "".join(f"  {k}_temp_path {temp}/{k};\n"
                      for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
            + f"  include {site};\n}}\n"
        )  # fmt: skip
        check = subprocess.run([binary, "-t", "-p", str(self.tmp), "-c", str(conf)],
                               capture_output=True, text=True)  # fmt: skip
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t failed: {check.stderr}")
        log = open(self.tmp / "nginx.out", "ab")  # noqa: SIM115 - the child holds it
        self.nginx = subprocess.Popen([binary, "-p", str(self.tmp), "-c", str(conf)], stdout=log,
                                      stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with self.client("127.0.0.200") as c:
                    if c.get("/healthz").status_code == 200:
                        return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("nginx did not answer within 30 s")

    def stop(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.terminate()
            try:
                self.nginx.wait(10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
        self.stop_service()

    # -- clients -------------------------------------------------------------------------------
    def client(self, address: str, timeout: float = 30, **kw) -> httpx.Client:
        """An https client whose connections come from ``address`` (any 127.0.0.x)."""
        transport = httpx.HTTPTransport(local_address=address, verify=False)
        return httpx.Client(base_url=self.url, transport=transport, timeout=timeout, **kw)

    def raw_socket(self, address: str, tls: bool = True) -> socket.socket:
        sock = socket.socket()
        sock.bind((address, 0))
        sock.settimeout(15)
        sock.connect(("127.0.0.1", self.service_port if self.direct else self.https_port))
        if not tls or self.direct:
            return sock
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        return ctx.wrap_socket(sock, server_hostname="localhost")


# -- who sent what, and what came back ------------------------------------------------------------
@dataclass
class Tally:
    """Answers by status, split into the proxy's own refusals and the service's answers."""

    service: Counter = field(default_factory=Counter)
    proxy: Counter = field(default_factory=Counter)
    failures: int = 0  # connections that ended without an answer
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, response: httpx.Response, seconds: float | None = None) -> None:
        with self.lock:
            by = self.proxy if response.headers.get(PROXY_HEADER) == "proxy" else self.service
            by[response.status_code] += 1
            if seconds is not None:
                self.latencies.append(seconds)

    def statuses(self) -> Counter:
        return self.service + self.proxy


def threads(target, n: int) -> list[threading.Thread]:
    started = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for t in started:
        t.start()
    return started


def raw_answer(data: bytes) -> httpx.Response | None:
    """The status (and whether the proxy made it) of an HTTP answer read from a raw socket."""
    parts = data.split(b" ")
    if len(parts) < 2 or not parts[1].isdigit():
        return None
    by_proxy = b"x-refused-by: proxy" in data.lower()
    return httpx.Response(int(parts[1]), headers={PROXY_HEADER: "proxy"} if by_proxy else {})


def user_loop(stack: Stack, address: str, files: list, deadline: float, tally: Tally,
              rate: float = 50.0) -> None:  # fmt: skip
    """A registered user: one authorized image per request, at most ``rate`` requests a second
    (within the service's and the proxy's 100 a second), until the deadline."""
    with stack.client(address) as c:
        while time.monotonic() < deadline:
            t = time.perf_counter()
            r = c.post("/v1/predict", files=files)
            took = time.perf_counter() - t
            tally.add(r, took)
            time.sleep(max(0.0, 1 / rate - took))


def multipart_parts(n: int) -> tuple[bytes, str]:
    one = b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\nx\r\n'
    return one * n + b"--b--\r\n", "multipart/form-data; boundary=b"


def early_refusal_flood(stack: Stack, address: str, deadline: float, tally: Tally,
                        conns: int = 4, parts: int = 65) -> None:  # fmt: skip
    """Requests refused before the gate: too many images (65 tiny parts), back to back."""
    body, ctype = multipart_parts(parts)

    def loop(_i):
        with stack.client(address) as c:
            while time.monotonic() < deadline:
                try:
                    tally.add(c.post("/v1/predict", content=body, headers={"content-type": ctype}))
                except httpx.TransportError:
                    tally.failures += 1

    for t in threads(loop, conns):
        t.join()


def stalled_bodies(stack: Stack, address: str, deadline: float, tally: Tally, n: int = 32) -> None:
    """Uploads that send their headers and a little of the body, then stall until the deadline."""
    socks = []
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
        b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + b"x" * 1000
    )
    for _ in range(n):
        try:
            sock = stack.raw_socket(address)
            sock.sendall(head)
            socks.append(sock)
        except OSError:
            tally.failures += 1
    time.sleep(max(0.0, deadline - time.monotonic()))
    for sock in socks:
        sock.settimeout(0.2)
        try:
            answer = raw_answer(sock.recv(4096))
            if answer is not None:
                tally.add(answer)  # an answer before the deadline (the proxy's 429)
        except OSError:
            pass
        sock.close()


def large_owner_bodies(stack: Stack, address: str, deadline: float, tally: Tally,
                       conns: int = 2, size: int = 60_000_000) -> None:  # fmt: skip
    """Unauthenticated owner calls that declare a 60 MB JSON body and start sending it."""
    head = (
        (
            f"POST /v1/users HTTP/1.1\r\nHost: localhost\r\nContent-Length: {size}\r\n"
            "Content-Type: application/json\r\n\r\n"
        ).encode()
        + b'{"name": "'
        + b"x" * 65536
    )

    def loop(_i):
        while time.monotonic() < deadline:
            try:
                sock = stack.raw_socket(address)
                with contextlib.suppress(OSError):  # the proxy may answer and close first
                    sock.sendall(head)
                answer = raw_answer(sock.recv(4096))
                sock.close()
                if answer is not None:
                    tally.add(answer)
                else:
                    tally.failures += 1
            except OSError:
                tally.failures += 1

    for t in threads(loop, conns):
        t.join()


def idle_connections(stack: Stack, address: str, deadline: float, tally: Tally,
                     n: int = 500) -> None:  # fmt: skip
    """Connections that never send a byte, held until the deadline (or the proxy closes them)."""
    socks = []
    for _ in range(n):
        try:
            socks.append(stack.raw_socket(address, tls=False))
        except OSError:
            tally.failures += 1
    time.sleep(max(0.0, deadline - time.monotonic()))
    for sock in socks:
        sock.close()


def key_guessing(stack: Stack, address: str, deadline: float, tally: Tally,
                 conns: int = 4) -> None:  # fmt: skip
    """Wrong admin keys on the API, back to back."""

    def loop(i):
        with stack.client(address) as c:
            n = 0
            while time.monotonic() < deadline:
                n += 1
                tally.add(c.get("/v1/users", headers={"X-Admin-Key": f"guess-{i}-{n}"}))

    for t in threads(loop, conns):
        t.join()


def start_flood(flood, stack: Stack, address: str, deadline: float, nice: int = 0):
    """Start ``flood`` in a forked child process (call it while this process runs no other
    thread), so that the flood's threads do not compete with the measuring client for this
    interpreter's lock; ``nice``: its scheduling niceness (on a real network the attacker's
    CPU is not the server's). :func:`finish_flood` collects its answers."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def child():
        os.nice(nice)
        mine = Tally()
        flood(stack, address, deadline, mine)
        queue.put((mine.service, mine.proxy, mine.failures))

    proc = context.Process(target=child, daemon=True)
    proc.start()
    return proc, queue, deadline


def finish_flood(handle, tally: Tally) -> None:
    proc, queue, deadline = handle
    try:
        service, proxy, failures = queue.get(timeout=max(1.0, deadline - time.monotonic()) + 90)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    tally.service.update(service)
    tally.proxy.update(proxy)
    tally.failures += failures


FLOODS = {
    "early refusals": early_refusal_flood,
    "stalled bodies": stalled_bodies,
    "large owner bodies": large_owner_bodies,
    "idle connections": idle_connections,
    "admin-key guessing": key_guessing,
}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

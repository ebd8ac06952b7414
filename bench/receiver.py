"""Benchmark the webhook receiver against a bare endpoint of the same server stack.

Starts real servers on loopback, each in its own process:
- ours, landing files: `clarus-pipelines receiver` (verify HMAC, parse, dedupe, write,
  flush, rename, flush the folder, then 200) into a temporary folder, once with the group
  `syncfs` flush and once with an fsync per file (`--sync`);
- ours, PostgreSQL (with `--state-url postgresql://...`): the same receiver inserting into
  the webhook inbox through its inbox writer process, committed (synchronous_commit on)
  before the 200;
- ceiling: the same Starlette + uvicorn settings, worker count and bounded body read, with
  a handler that stores nothing and answers 200 at once.

Each is driven for a bounded time by `--concurrency` keep-alive connections posting
signed Shopify orders (our fixture in the real payload's shape, a new order id, name,
signature and webhook id per post, built from the order serialised once; `--serialise-each`
serialises it anew per post, as before), in alternating rounds so that other load on the
machine affects both alike. Prints
sustained accepted webhooks per second and p50/p99 latency for each, checks that every
accepted webhook is stored, prints each store's ratio to the ceiling (overall, and the
median and spread of its round-by-round ratios), and ends with
`ratio: X` for the production store (the PostgreSQL inbox when measured, else file
landing with the default flush) over the ceiling.

    .venv/bin/python bench/receiver.py [--duration 0.5] [--rounds 20] [--warmup 1] [--rewarm 0.25]
        [--concurrency 32] [--workers 1]
        [--sync syncfs|fsync|both|none] [--state-url postgresql://postgres@127.0.0.1:5432/scratch]
        [--serialise-each]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clarus_pipelines.receiver import auth  # noqa: E402
from clarus_pipelines.settings import SANDBOX_POLICIES  # noqa: E402

SECRET = "bench-shopify-webhook-secret"
FIXTURE = REPO / "tests" / "fixtures" / "shopify" / "orders" / "order_python_api.json"  # our sample, in the python_api shape


# ---------------------------------------------------------------------------- the bare endpoint


def bare_app():
    """The ceiling: same framework and body read; no verification, no storage."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from clarus_pipelines.receiver.app import DEFAULT_MAX_BODY_BYTES, read_body

    async def bare(request):
        await read_body(request, DEFAULT_MAX_BODY_BYTES)
        return JSONResponse({"status": "ok"})

    async def healthz(request):
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/webhooks/shopify", bare, methods=["POST"]), Route("/healthz", healthz)])


def serve_bare(host: str, port: int, workers: int = 1) -> None:
    """Serve the ceiling with the receiver's server settings and as many worker processes as it has."""
    import uvicorn

    from clarus_pipelines.receiver.server import uvicorn_options

    options = uvicorn_options(host, port, "warning")
    if workers > 1:  # worker processes import the factory by name, as the receiver's do
        uvicorn.run("receiver:bare_app", factory=True, workers=workers, app_dir=str(Path(__file__).resolve().parent),
                    **options)
    else:
        uvicorn.run(bare_app(), **options)


# ---------------------------------------------------------------------------- load


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not become healthy")


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    accepted: int = 0
    errors: int = 0
    elapsed: float = 0.0
    cpu_s: float = 0.0  # the server's CPU time (all its processes) over the rounds, warm-up included
    answered: int = 0  # every answer over the rounds, warm-up included

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


class Poster:
    """Builds signed posts: the fixture order with a fresh id and name, signed, under a fresh
    webhook id each time.

    The order is serialised once, as a template around its id and name, so that the load
    generator, which shares the machine's CPUs with the servers, spends them on sending rather
    than re-serialising the same order (json.dumps took about 40 of its 85 us per post).
    Each post is still a different body with its own signature."""

    _ID, _NAME = 1_234_567_890_123_456_789, "#BENCH-NAME-PLACEHOLDER"

    def __init__(self, order: dict, prefix: str, *, serialise_each: bool = False):
        self.prefix = prefix
        self.n = 0
        self.order = order
        self.serialise_each = serialise_each  # the generator before the template: json.dumps per post
        text = json.dumps({**order, "id": self._ID, "name": self._NAME}).encode()
        id_mark, name_mark = str(self._ID).encode(), json.dumps(self._NAME).encode()
        first, second = sorted((id_mark, name_mark), key=text.index)  # in the order's key order
        self._head, rest = text.split(first, 1)
        self._middle, self._tail = rest.split(second, 1)
        self._id_first = first == id_mark
        fixed = {k: v for k, v in auth.shopify_headers(b"", SECRET, topic="orders/create", webhook_id="").items()
                 if k not in ("X-Shopify-Hmac-Sha256", "X-Shopify-Webhook-Id")}  # those two change per post
        self._head_lines = "POST /webhooks/shopify HTTP/1.1\r\nHost: bench\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in fixed.items())

    def body(self, n: int) -> bytes:
        if self.serialise_each:
            return json.dumps({**self.order, "id": 9_000_000_000 + n, "name": f"#B{n}"}).encode()
        order_id, name = str(9_000_000_000 + n).encode(), f'"#B{n}"'.encode()
        first, second = (order_id, name) if self._id_first else (name, order_id)
        return b"".join((self._head, first, self._middle, second, self._tail))

    def next_request(self) -> bytes:
        self.n += 1
        body = self.body(self.n)
        signature = auth.shopify_signature(body, SECRET)
        return (f"{self._head_lines}X-Shopify-Hmac-Sha256: {signature}\r\nX-Shopify-Webhook-Id: {self.prefix}-{self.n}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


async def drive(port: int, poster: Poster, *, concurrency: int, warmup: float, duration: float) -> Result:
    result = Result()
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                request = poster.next_request()
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                writer.write(request)
                status = await read_response(reader)
                done = time.perf_counter()
                result.answered += 1
                if sent >= measure_from:
                    result.latencies.append(done - sent)
                    if 200 <= status < 300:
                        result.accepted += 1
                    else:
                        result.errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    result.elapsed = duration
    return result


def run_load(port: int, prefix: str, args: argparse.Namespace, *, first: bool) -> Result:
    order = json.loads(FIXTURE.read_text())["order"]
    poster = Poster(order, prefix, serialise_each=args.serialise_each)
    return asyncio.run(drive(port, poster, concurrency=args.concurrency, warmup=args.warmup if first else args.rewarm,
                             duration=args.duration))


def spread(ratios: list[float]) -> str:
    """Median, middle half and range of per-round ratios."""
    if not ratios:
        return "no rounds"
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return f"median {median:.3f}, middle half {q1:.3f}-{q3:.3f}, range {min(ratios):.3f}-{max(ratios):.3f}"


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants (Linux /proc; 0.0 elsewhere)."""
    total = 0.0
    todo = [pid]
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            continue
    return total


def report(name: str, result: Result) -> float:
    rate = result.accepted / result.elapsed if result.elapsed else 0.0
    print(f"{name:<34} {rate:9.1f} accepted/s   p50 {result.percentile(0.50):6.2f} ms   "
          f"p99 {result.percentile(0.99):6.2f} ms   (accepted {result.accepted}, errors {result.errors})", flush=True)
    return rate


# ---------------------------------------------------------------------------- main


def count_and_clear_inbox_rows(state_url: str, prefix: str) -> int:
    """The bench's rows in the inbox, which it then deletes: a table grown by earlier runs (more
    index to walk, more to vacuum and checkpoint) would slow the next run's PostgreSQL rounds."""
    import psycopg2

    with psycopg2.connect(state_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM webhook_inbox WHERE webhook_id LIKE %s", [prefix + "%"])
        stored = cur.fetchone()[0]
        cur.execute("DELETE FROM webhook_inbox WHERE webhook_id LIKE %s", [prefix + "%"])
    return stored


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=0.5, help="measured seconds per server and round (default 0.5)")
    # this machine's speed changes from one second to the next (the bare endpoint's CPU per request
    # has doubled between two 1 s rounds): many short alternating rounds let both servers sample it alike
    parser.add_argument("--rounds", type=int, default=20, help="alternating rounds per server (default 20)")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="unmeasured seconds before a server's first round (default 1)")
    parser.add_argument("--rewarm", type=float, default=0.25,
                        help="unmeasured seconds before each later round, on its new connections (default 0.25)")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections (default 32)")
    parser.add_argument("--workers", type=int, default=1, help="receiver worker processes (default 1)")
    parser.add_argument("--state-url", default=None,
                        help="also measure a receiver storing into the PostgreSQL webhook inbox at this postgresql:// "
                        "URL (use a scratch database; the bench deletes its rows once it has counted them)")
    parser.add_argument("--sync", choices=["syncfs", "fsync", "both", "none"], default="both",
                        help="file landing's flush: syncfs (group commit), fsync (per file), both side by side "
                        "(default both), or none: no file landing rounds (with --state-url: the PostgreSQL inbox "
                        "against the ceiling alone, undisturbed by syncfs flushing the whole file system)")
    parser.add_argument("--serialise-each", action="store_true",
                        help="the load generator serialises the order anew for every post (as before it used a "
                        "template): about 40 us more of the shared CPUs per post")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare("127.0.0.1", args.port, args.workers)
        return 0
    if not FIXTURE.exists():
        raise SystemExit(f"fixture not found: {FIXTURE}")
    if args.sync == "none" and not args.state_url:
        raise SystemExit("--sync none measures the PostgreSQL inbox alone: give --state-url")

    # where the benchmark's landing zones go: beside the repository (a real disk), never a tmpfs /tmp
    with tempfile.TemporaryDirectory(prefix="bench-receiver-", dir=os.environ.get("BENCH_TMPDIR")) as tmp:
        env = {**os.environ, "SHOPIFY_WEBHOOK_SECRET": SECRET, "CLARUS_PIPELINES_HOME": tmp, "PYTHONUNBUFFERED": "1",
               "CLARUS_PIPELINES_CONFIG": os.environ.get("CLARUS_PIPELINES_CONFIG") or str(SANDBOX_POLICIES)}
        env.pop("CLARUS_PIPELINES_STATE_URL", None)
        body_size = len(Poster(json.loads(FIXTURE.read_text())["order"], "x").next_request())
        print(f"loopback, {args.concurrency} connections, {args.rounds} alternating round(s) of {args.duration:g}s measured "
              f"per server ({args.warmup:g}s warm-up first, {args.rewarm:g}s before each later round); "
              f"request {body_size} bytes; {os.cpu_count()} CPUs; "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)

        def receiver(extra: list[str]) -> list[str]:
            return [sys.executable, "-m", "clarus_pipelines.cli", "receiver", "--host", "127.0.0.1", "--port", "{port}",
                    "--workers", str(args.workers), "--log-level", "warning", *extra]

        servers: dict[str, tuple[list[str], dict, str]] = {}  # name -> argv, env, label
        modes = {"both": ["syncfs", "fsync"], "none": []}.get(args.sync, [args.sync])
        for mode in modes:
            landing = Path(tmp) / f"landing-{mode}"
            servers[f"file-{mode}"] = (receiver(["--landing-dir", str(landing)]),
                                       {**env, "CLARUS_PIPELINES_LANDING_SYNC": mode},
                                       f"file landing, {'group syncfs' if mode == 'syncfs' else 'fsync per file'}")
        if args.state_url:
            servers["postgres"] = (receiver(["--state-url", args.state_url]), env, "PostgreSQL inbox insert")
        servers["ceiling"] = ([sys.executable, str(Path(__file__).resolve()), "--serve-bare", "--port", "{port}",
                               "--workers", str(args.workers)], env,
                              f"ceiling (bare endpoint, stores none, {args.workers} worker)")
        ports = {name: free_port() for name in servers}
        procs = {name: subprocess.Popen([a.replace("{port}", str(ports[name])) for a in argv], env=server_env, cwd=REPO,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, (argv, server_env, _) in servers.items()}
        results = {name: Result() for name in procs}
        round_rates: dict[str, list[float]] = {name: [] for name in procs}
        run_tag = f"{int(time.time())}"
        try:
            for name, proc in procs.items():
                wait_healthy(ports[name], proc)
            # alternate the servers so that load from elsewhere on the machine hits all alike
            for round_no in range(args.rounds):
                for name in servers:
                    cpu_before = tree_cpu_seconds(procs[name].pid)
                    part = run_load(ports[name], f"{name}-{run_tag}-{round_no}", args, first=round_no == 0)
                    results[name].cpu_s += tree_cpu_seconds(procs[name].pid) - cpu_before
                    results[name].answered += part.answered
                    total = results[name]
                    total.latencies += part.latencies
                    total.accepted += part.accepted
                    total.errors += part.errors
                    total.elapsed += part.elapsed
                    round_rates[name].append(part.accepted / part.elapsed if part.elapsed else 0.0)
        finally:
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
        rates = {name: report(f"{label} ({args.workers} worker)" if name != "ceiling" else label, results[name])
                 for name, (_, _, label) in servers.items()}
        ceiling = rates["ceiling"]
        # warm-up posts were stored too, so the store holds at least every measured acceptance
        for name in servers:
            if name.startswith("file-"):
                stored = sum(1 for _ in (Path(tmp) / f"landing-{name[5:]}" / "shopify").rglob("*.json"))
            elif name == "postgres":
                stored = count_and_clear_inbox_rows(args.state_url, f"{name}-{run_tag}-")
            else:
                continue
            accepted = results[name].accepted
            # each round against the ceiling's round just after it: the spread other load causes
            per_round = spread([ours / bare for ours, bare in zip(round_rates[name], round_rates["ceiling"]) if bare])
            print(f"{name}: stored {stored} (>= {accepted} accepted while measured: "
                  f"{'ok' if stored >= accepted else 'MISSING'}); ratio {rates[name] / ceiling if ceiling else 0.0:.3f}"
                  f" (by round: {per_round})", flush=True)
    # Throughput ratios depend on what else the machine runs (the load client shares its CPUs);
    # the receiver's own CPU time per answered request does not, as much.
    cpu_per_request = {name: results[name].cpu_s / results[name].answered * 1e6 if results[name].answered else 0.0
                       for name in servers}
    if cpu_per_request["ceiling"]:
        print("server CPU per request (its processes only; a PostgreSQL server's own CPU not counted): "
              + ", ".join(f"{name} {us:.0f} us" for name, us in cpu_per_request.items())
              + "; ceiling/ours: " + ", ".join(f"{name} {cpu_per_request['ceiling'] / us:.3f}"
                                               for name, us in cpu_per_request.items() if name != "ceiling" and us),
              flush=True)
    if "postgres" in rates:
        main_name = "postgres"
    else:
        main_name = "file-syncfs" if "file-syncfs" in rates else next(n for n in rates if n.startswith("file-"))
    print(f"ratio: {rates[main_name] / ceiling if ceiling else 0.0:.3f} ({main_name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

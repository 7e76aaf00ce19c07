"""Bounded load test of `idpatch serve` on loopback with the tiny set.

Starts a release server (a free port, warmed up on the bundled example), then at concurrency 1,
2, 4, 8 and 16 sends a fixed number of generations (the bundled example, 192x128, 3 people,
`--steps` denoising steps, a distinct seed each) from that many client threads, none retried, and
prints per level: throughput, latency p50/p95/p99 of accepted requests, accepted vs rejected
(429), and checks that every request got exactly one answer and every accepted one a distinct
generation id (0 lost, 0 duplicated). Then the server's overhead at concurrency 1 against
`idpatch bench --pipeline` doing the same generation in one process, measured alternately.

    cargo build --release --locked
    "$(scripts/pyserve.sh)" benches/serve_load.py   # python with `requests`

It stops by itself (about a minute on the tiny set) and stops the server with SIGTERM.
"""

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "models", "tiny", "examples")


def example_request(steps, seed):
    with open(os.path.join(EXAMPLES, "layout.json")) as f:
        layout = json.load(f)
    people = []
    for person in layout["people"]:
        person = dict(person)
        with open(os.path.join(EXAMPLES, person["face"]), "rb") as f:
            person["face"] = base64.b64encode(f.read()).decode()
        people.append(person)
    return {"prompt": "three friends in a park", "width": layout["width"],
            "height": layout["height"], "num_inference_steps": steps, "seed": seed,
            "people": people}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary, queue_capacity):
    port = free_port()
    server = subprocess.Popen(
        [binary, "serve", "--models", os.path.join(ROOT, "models", "tiny"),
         "--listen", f"127.0.0.1:{port}", "--queue-capacity", str(queue_capacity),
         "--warmup-layout", os.path.join(EXAMPLES, "layout.json")],
        cwd=ROOT, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if requests.get(base + "/readyz", timeout=5).status_code == 200:
                return server, base
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    server.kill()
    sys.exit("the server did not become ready")


def percentile(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def run_level(base, concurrency, total, steps, seed0):
    """`total` requests from `concurrency` threads; returns the level's results."""
    lock = threading.Lock()
    next_index = [0]
    results = []

    def client():
        session = requests.Session()
        while True:
            with lock:
                i = next_index[0]
                if i >= total:
                    return
                next_index[0] += 1
            body = example_request(steps, seed0 + i)
            started = time.perf_counter()
            try:
                r = session.post(base + "/v1/generations", json=body, timeout=600)
                outcome = (r.status_code, r.headers.get("x-generation-id"),
                           r.content[:8] == b"\x89PNG\r\n\x1a\n")
            except requests.RequestException as e:
                outcome = ("error: " + str(e), None, False)
            with lock:
                results.append((i, time.perf_counter() - started) + outcome)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    accepted = [r for r in results if r[2] == 200 and r[4]]
    rejected = [r for r in results if r[2] == 429]
    ids = [r[3] for r in accepted]
    return {
        "concurrency": concurrency, "sent": total, "answered": len(results),
        "accepted": len(accepted), "rejected": len(rejected),
        "other": len(results) - len(accepted) - len(rejected),
        "lost": total - len({r[0] for r in results}),
        "duplicated": len(ids) - len(set(ids)),
        "wall_s": wall, "throughput": len(accepted) / wall,
        "p50": percentile([r[1] for r in accepted], 0.50),
        "p95": percentile([r[1] for r in accepted], 0.95),
        "p99": percentile([r[1] for r in accepted], 0.99),
    }


def bench_pipeline(binary, steps, runs):
    """Median total seconds of the same generation in one process (graphs loaded once)."""
    out = subprocess.run(
        [binary, "bench", "--models", os.path.join(ROOT, "models", "tiny"), "--pipeline",
         "--layout", os.path.join(EXAMPLES, "layout.json"), "--steps", str(steps),
         "--warmup", "1", "--runs", str(runs), "--json"],
        cwd=ROOT, check=True, capture_output=True, text=True)
    line = json.loads(out.stdout.splitlines()[0])
    return line["total"]["median_ms"] / 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "idpatch"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--per-level", type=int, default=4,
                        help="requests per level = this x concurrency")
    parser.add_argument("--queue-capacity", type=int, default=8)
    parser.add_argument("--overhead-rounds", type=int, default=3)
    parser.add_argument("--overhead-runs", type=int, default=8)
    args = parser.parse_args()

    server, base = start_server(args.bin, args.queue_capacity)
    try:
        levels = [run_level(base, c, args.per_level * c, args.steps, 1000 * c)
                  for c in (1, 2, 4, 8, 16)]
        serve_medians, cli_medians = [], []
        for round_ in range(args.overhead_rounds):
            cli_medians.append(bench_pipeline(args.bin, args.steps, args.overhead_runs))
            level = run_level(base, 1, args.overhead_runs, args.steps, 100_000 * (round_ + 1))
            serve_medians.append(level["p50"])
    finally:
        server.terminate()
        code = server.wait(timeout=120)
    print(f"server exit status after SIGTERM: {code}")
    print(f"\n{args.steps} steps, bundled example (192x128, 3 people), queue capacity "
          f"{args.queue_capacity}, {args.per_level} x concurrency requests per level\n")
    print("| concurrency | sent | accepted | rejected (429) | other | lost | duplicated "
          "| throughput (img/s) | p50 (s) | p95 (s) | p99 (s) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in levels:
        print(f"| {r['concurrency']} | {r['sent']} | {r['accepted']} | {r['rejected']} "
              f"| {r['other']} | {r['lost']} | {r['duplicated']} | {r['throughput']:.2f} "
              f"| {r['p50']:.3f} | {r['p95']:.3f} | {r['p99']:.3f} |")
    serve = statistics.median(serve_medians)
    cli = statistics.median(cli_medians)
    print(f"\nconcurrency 1, {args.overhead_rounds} alternating rounds of "
          f"{args.overhead_runs}: server p50 {serve:.3f} s (rounds: "
          f"{', '.join(f'{m:.3f}' for m in serve_medians)}), `idpatch bench --pipeline` median "
          f"{cli:.3f} s (rounds: {', '.join(f'{m:.3f}' for m in cli_medians)}); "
          f"overhead {100 * (serve / cli - 1):+.1f}%")
    bad = [r for r in levels if r["lost"] or r["duplicated"] or r["other"]]
    sys.exit(1 if bad or code != 0 else 0)


if __name__ == "__main__":
    main()

"""Load a deployed model over loopback HTTP: requests/s and latency at 1, 4 and 16 clients.

Sends one support email per POST /invoke from N concurrent clients, a bounded
number of requests per level (and a time cap), and writes requests/s,
p50/p95/p99 latency and the error count per level, with the machine, to
bench/results/deploy-load-cpu.json.

    python run.py --config configs/deploy.yaml        # prints the URL
    python bench/deploy_load.py --url http://127.0.0.1:8000
    zenml deployment delete support-email-extractor -y

Only loopback URLs are accepted: this is a benchmark of this machine, not a load tool.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
EMAILS = REPO / "data" / "support_emails" / "new_emails.jsonl"
OUTPUT = REPO / "bench" / "results" / "deploy-load-cpu.json"


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (share in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def call(url: str, email: str) -> tuple[float, str | None, dict | None]:
    """One request: (latency in s, error or None, the answers)."""
    body = json.dumps({"parameters": {"inputs": [email]}}).encode()
    request = urllib.request.Request(f"{url}/invoke", data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            payload = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return time.perf_counter() - started, f"{type(exc).__name__}: {exc}", None
    latency = time.perf_counter() - started
    if not payload.get("success"):
        return latency, f"success false: {payload.get('error')}", None
    return latency, None, payload["outputs"]["answers"]


def run_level(url: str, emails: list[str], clients: int, requests: int, time_cap_s: float) -> dict:
    """`requests` calls from `clients` threads, stopping new calls after `time_cap_s`."""
    latencies: list[float] = []
    server_latencies: list[float] = []
    errors: list[str] = []
    parsed = 0
    lock = threading.Lock()
    counter = iter(range(requests))
    started = time.perf_counter()

    def client() -> None:
        nonlocal parsed
        while time.perf_counter() - started < time_cap_s:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            latency, error, answers = call(url, emails[index % len(emails)])
            with lock:
                if error:
                    errors.append(error)
                    continue
                latencies.append(latency)
                server_latencies.append(answers["latency_s"])
                parsed += answers["results"][0]["parsed"]

    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client)
    wall = time.perf_counter() - started
    done = len(latencies)
    return {
        "clients": clients,
        "requests_sent": done + len(errors),
        "requests_ok": done,
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": round(wall, 2),
        "requests_per_s": round(done / wall, 3) if wall else None,
        "latency_s": {
            "p50": round(percentile(latencies, 0.50), 3),
            "p95": round(percentile(latencies, 0.95), 3),
            "p99": round(percentile(latencies, 0.99), 3),
            "mean": round(statistics.fmean(latencies), 3),
        } if latencies else None,
        # Time inside the model (generation plus waiting for the model lock), as the server measured it.
        "server_latency_s_p50": round(percentile(server_latencies, 0.5), 3) if server_latencies else None,
        "parsed_rate": round(parsed / done, 3) if done else None,
        "time_capped": done + len(errors) < requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the deployment's URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--levels", default="1,4,16", help="concurrent clients per level")
    parser.add_argument("--requests", type=int, default=32, help="requests per level (at most)")
    parser.add_argument("--time-cap-s", type=float, default=300, help="stop sending new requests after this")
    parser.add_argument("--note", default="", help="a remark stored with the results")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("--url: loopback only (127.0.0.1, localhost or ::1)")
    url = args.url.rstrip("/")
    emails = [json.loads(line)["prompt"] for line in EMAILS.read_text().splitlines() if line.strip()]
    with urllib.request.urlopen(f"{url}/info", timeout=10) as response:
        info = json.loads(response.read())
    _, error, answers = call(url, emails[0])  # warm-up, not counted
    if error:
        raise SystemExit(f"warm-up request failed: {error}")
    load_before = os.getloadavg()
    levels = [run_level(url, emails, int(n), args.requests, args.time_cap_s) for n in args.levels.split(",")]
    load_after = os.getloadavg()
    record = {
        "what": "POST /invoke with one support email per request, N concurrent clients over loopback",
        "deployment": info["deployment"]["name"],
        "model_version": answers["model_version"],
        "requests_per_level": args.requests,
        "time_cap_s": args.time_cap_s,
        "levels": levels,
        "note": args.note,
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            # Other work on the machine shares the cores: 1-minute load average before and after.
            "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
            "versions": {name: version(name)
                         for name in ("zenml", "torch", "transformers", "peft", "fastapi", "uvicorn")},
        },
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    for level in levels:
        lat = level["latency_s"] or {}
        print(f"{level['clients']:>3} clients: {level['requests_per_s']} req/s, p50 {lat.get('p50')} s,"
              f" p95 {lat.get('p95')} s, p99 {lat.get('p99')} s, errors {level['errors']}")
    print(f"written: {args.output}")


if __name__ == "__main__":
    main()

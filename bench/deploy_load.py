"""Load the deployed model over loopback HTTP, side by side with llama.cpp's own server on the same file.

End to end (`python bench/deploy_load.py`, about 40 minutes on 2 CPU cores), against a fresh
ZenML store:

1. trains the quickstart with `export: {formats: [gguf], gguf_types: [q8_0]}`;
2. deploys it (`run.py --config <deploy yaml>`, 16 slots) with engine llama.cpp (in the deployment's
   process), then engine llama-server (llama.cpp's own server behind the deployment's routes), then
   engine transformers (batches of 16), and sends one support email per request from 1, 4, 16 and
   32 concurrent clients to `POST /v1/chat/completions`, whole answers and streamed ones, and (llama.cpp)
   to ZenML's `POST /invoke`;
3. stops it, starts the peer, llama.cpp's own `llama-server` (C++, built once from the llama.cpp
   tree llama-cpp-python ships, `llm_lora.llama_server`) on the same GGUF with the same slots,
   context per slot, threads and attention kernels, and sends it the same requests;
4. times the two GGUF engines alone (no HTTP in front), the in-process one with the share of its time
   spent inside `llama_decode`;
5. writes requests/s, generated tokens/s, p50/p95/p99 latency (and time to the first token of
   streamed answers) and errors per level, how many answers the servers agree on, and what the
   deployments' request logs recorded, to bench/results/deploy-load-cpu.json, with the machine's
   facts and the servers' versions.

Every level sends its own held-out emails (test and validation splits), none sent to a server
twice: real traffic brings new emails, and llama-server keeps whole prompts in memory
(`--cache-ram`), so repeated emails would be answered without reading them. One extra level at 16
clients sends that level's emails again and shows what that cache is worth.

Both servers get the same messages (the version's system prompt and the email), greedy
decoding (`temperature: 0`) and the version's answer cap (`max_tokens`). They run one after
the other, never together: two servers on 2 cores would slow each other.

`--url <deployment>` loads an existing deployment only (no training, no peer). Only loopback
URLs are accepted: this is a benchmark of this machine, not a load tool.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from quickstart import cpu_flags, cpu_model  # noqa: E402
OUTPUT = REPO / "bench" / "results" / "deploy-load-cpu.json"
MODEL_NAME = "load-bench"
REPEAT_AT = 16  # clients of the extra level that sends emails again


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (share in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered) + 0.5) - 1))]


def http_stream(url: str, body: dict, timeout: float = 300) -> tuple[int, str, float | None, dict | None, str | None]:
    """POST a streamed chat completion: (status, joined text, seconds to the first text, usage, error)."""
    import http.client

    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=timeout)
    started = time.perf_counter()
    try:
        connection.request("POST", parsed.path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            return response.status, "", None, None, response.read().decode(errors="replace")[:300]
        text, first, usage = [], None, None
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    first = first if first is not None else time.perf_counter() - started
                    text.append(piece)
        return 200, "".join(text), first, usage, None
    finally:
        connection.close()


def http_json(url: str, body: dict | None = None, timeout: float = 300) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {"error": error.read().decode(errors="replace")[:300]}


@dataclass
class Answer:
    text: str | None
    error: str | None = None
    completion_tokens: int | None = None
    first_token_s: float | None = None


class Route:
    """How one server is called: one email in, its answer (text, tokens, time to first text) or an error out."""

    def __init__(self, url: str, kind: str, system_prompt: str | None = None, cap: int | None = None,
                 stream: bool = False) -> None:
        self.url, self.kind, self.system_prompt, self.cap, self.stream = (
            url.rstrip("/"), kind, system_prompt, cap, stream)

    def call(self, email: str) -> Answer:
        if self.kind == "invoke":
            status, payload = http_json(f"{self.url}/invoke", {"parameters": {"inputs": [email]}})
            if status != 200 or not payload.get("success"):
                return Answer(None, f"{status}: {payload.get('error')}")
            return Answer(payload["outputs"]["answers"]["results"][0]["output"])
        messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else []) + [
            {"role": "user", "content": email}]
        body = {"model": "bench", "messages": messages, "temperature": 0}
        if self.cap:
            body["max_tokens"] = self.cap
        if self.stream:
            status, text, first, usage, error = http_stream(
                f"{self.url}/v1/chat/completions", {**body, "stream": True, "stream_options": {"include_usage": True}})
            if status != 200:
                return Answer(None, f"{status}: {error}")
            return Answer(text.strip(), None, (usage or {}).get("completion_tokens"), first)
        status, payload = http_json(f"{self.url}/v1/chat/completions", body)
        if status != 200:
            return Answer(None, f"{status}: {payload.get('error')}")
        return Answer(payload["choices"][0]["message"]["content"].strip(), None,
                      (payload.get("usage") or {}).get("completion_tokens"))


def run_level(route: Route, emails: list[str], clients: int, requests: int, time_cap_s: float) -> dict:
    """`requests` calls from `clients` threads, stopping new calls after `time_cap_s`."""
    latencies: list[float] = []
    first_tokens: list[float] = []
    generated: list[int] = []
    errors: list[str] = []
    answers: dict[int, str] = {}
    lock = threading.Lock()
    counter = iter(range(requests))
    started = time.perf_counter()

    def client() -> None:
        while time.perf_counter() - started < time_cap_s:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            sent = time.perf_counter()
            try:
                answer = route.call(emails[index % len(emails)])
            except (urllib.error.URLError, OSError, ValueError) as exc:
                answer = Answer(None, f"{type(exc).__name__}: {exc}")
            latency = time.perf_counter() - sent
            with lock:
                if answer.error:
                    errors.append(answer.error)
                else:
                    latencies.append(latency)
                    answers[emails[index % len(emails)]] = answer.text
                    if answer.completion_tokens is not None:
                        generated.append(answer.completion_tokens)
                    if answer.first_token_s is not None:
                        first_tokens.append(answer.first_token_s)

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
        # Tokens generated per second over the level, from the answers' usage (all answers must report it).
        "generated_tokens_per_s": round(sum(generated) / wall, 1) if wall and len(generated) == done and done else None,
        "first_token_s": {"p50": round(percentile(first_tokens, 0.50), 3),
                          "p95": round(percentile(first_tokens, 0.95), 3)} if first_tokens else None,
        "latency_s": {
            "p50": round(percentile(latencies, 0.50), 3),
            "p95": round(percentile(latencies, 0.95), 3),
            "p99": round(percentile(latencies, 0.99), 3),
            "mean": round(statistics.fmean(latencies), 3),
        } if latencies else None,
        "time_capped": done + len(errors) < requests,
        "_answers": answers,
    }


def load(route: Route, emails: list[str], levels: list[int], requests: int, time_cap_s: float,
         repeat_at: int | None = None) -> list[dict]:
    """Each level sends its own `requests` emails from `emails`, none sent before, so no server answers an
    email from a prompt cache. `repeat_at`: one more level at that many clients that sends the emails of
    that level again (what a prompt cache that keeps whole prompts gains when traffic repeats)."""
    if len(emails) < len(levels) * requests + 1:
        raise SystemExit(f"{len(emails)} emails: {len(levels)} levels of {requests} distinct ones and a warm-up need"
                         " more")
    warm = route.call(emails[-1])  # warm-up, not counted (an email no level sends)
    if warm.error:
        raise SystemExit(f"warm-up request to {route.url} ({route.kind}) failed: {warm.error}")
    results = []
    name = route.kind + (" stream" if route.stream else "")
    plan = [(clients, emails[n * requests:(n + 1) * requests], False) for n, clients in enumerate(levels)]
    if repeat_at in levels:
        plan.append((repeat_at, plan[levels.index(repeat_at)][1], True))
    for clients, chosen, repeated in plan:
        result = {**run_level(route, chosen, clients, requests, time_cap_s), "repeated_emails": repeated}
        lat = result["latency_s"] or {}
        print(f"  {name:12} {clients:>2} clients{' (repeated)' if repeated else ''}: {result['requests_per_s']}"
              f" req/s, {result['generated_tokens_per_s']} tokens/s, p50 {lat.get('p50')} s, p95 {lat.get('p95')} s,"
              f" errors {result['errors']}", flush=True)
        results.append(result)
    return results


def run(command: list[str], env: dict, what: str, timeout: float = 3600) -> str:
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def version_facts() -> None:
    """Print the bench version's GGUF path, answer cap and system prompt as one JSON line (in the bench's store)."""
    sys.path.insert(0, str(REPO))
    from steps.support.model_version import find_model_version, gguf_file, recorded_cap

    found, config = find_model_version(MODEL_NAME, "production", "bench")
    print(json.dumps({"gguf": str(gguf_file(found, "q8_0", "bench")), "cap": recorded_cap(found, config),
                      "system_prompt": config.data.system_prompt}))


def engine_profile(requests: int, clients: int, emails_json: str) -> None:
    """Print, as one JSON line, the engines alone on `requests` emails from `clients` threads, no HTTP in
    front: the in-process llama.cpp engine (and the share of its time inside llama_decode) and the
    llama-server engine's queue, each with the deployment's prompts (in the bench's store)."""
    sys.path.insert(0, str(REPO))
    from llm_lora.batching import ContinuousBatcher
    from llm_lora.inference import inference_prompts
    from llm_lora.llama_server import ServerBatcher, server_binary
    from llm_lora.llama_slots import LlamaCppSlots
    from llm_lora.model_loading import load_tokenizer
    from steps.support.model_version import find_model_version, gguf_file, recorded_cap

    found, config = find_model_version(MODEL_NAME, "production", "bench")
    gguf, cap = gguf_file(found, "q8_0", "bench"), recorded_cap(found, config)
    emails = json.loads(emails_json)[:requests]
    tokenizer = load_tokenizer(config.model)
    prompts = inference_prompts(tokenizer, [(f"email {i}", None, (("user", e),)) for i, e in enumerate(emails)], config)

    def timed(batcher) -> tuple[float, list[str]]:
        batcher.submit([prompts[0]]).result()  # warm-up
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            texts = list(pool.map(lambda p: batcher.submit([p]).result().generations[0].text, prompts))
        return time.perf_counter() - started, texts

    slots = LlamaCppSlots(gguf, context=2048, slots=16, prompt_cache=True)
    library, decode, inside = slots._lib, slots._lib.llama_decode, [0.0]

    def counted(context, batch):
        started = time.perf_counter()
        try:
            return decode(context, batch)
        finally:
            inside[0] += time.perf_counter() - started

    library.llama_decode = counted
    batcher = ContinuousBatcher(slots, max_new_tokens=cap, max_queue=64)
    inside[0] = 0.0
    try:
        batcher.submit([prompts[0]]).result()
        inside[0] = 0.0
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            in_process = list(pool.map(lambda p: batcher.submit([p]).result().generations[0].text, prompts))
        in_process_s = time.perf_counter() - started
    finally:
        library.llama_decode = decode
        batcher.close()
        slots.close()
    server = ServerBatcher(server_binary(), gguf, slots=16, context=2048, max_new_tokens=cap, max_queue=64)
    try:
        server_s, server_texts = timed(server)
    finally:
        server.close()
    print(json.dumps({
        "requests": len(prompts), "clients": clients,
        "llama_cpp_engine_requests_per_s": round(len(prompts) / in_process_s, 3),
        "llama_cpp_engine_share_in_llama_decode": round(inside[0] / in_process_s, 3),
        "llama_server_engine_requests_per_s": round(len(prompts) / server_s, 3),
        "same_answers": f"{sum(a == b for a, b in zip(in_process, server_texts))}/{len(prompts)}",
    }))


def wait_for(url: str, timeout_s: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the server at {url} exited ({process.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(1)
    raise SystemExit(f"{url} did not answer within {timeout_s} s")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def summary(levels: list[dict]) -> list[dict]:
    return [{key: value for key, value in level.items() if not key.startswith("_")} for level in levels]


def agreement(ours: list[dict], theirs: list[dict]) -> str:
    """How many emails both servers answered identically, of those both answered."""
    mine = {k: v for level in ours for k, v in level["_answers"].items()}
    peer = {k: v for level in theirs for k, v in level["_answers"].items()}
    shared = sorted(set(mine) & set(peer))
    return f"{sum(mine[k] == peer[k] for k in shared)}/{len(shared)}"


def ratio(ours: list[dict], theirs: list[dict], clients: int, repeated: bool = False) -> float | None:
    def find(levels):
        return next((level for level in levels if level["clients"] == clients
                     and level.get("repeated_emails", False) == repeated), None)

    mine, peer = find(ours), find(theirs)
    if not mine or not peer or not peer["requests_per_s"]:
        return None
    return round(mine["requests_per_s"] / peer["requests_per_s"], 2)


def same_streamed(measured: dict) -> str:
    """How many of the first chat level's emails, streamed, joined to the whole answer."""
    whole = {k: v for level in measured["chat"] for k, v in level["_answers"].items()}
    check = measured.get("stream_check", {})
    shared = [email for email in check if email in whole and check[email] is not None]
    return f"{sum(check[email] == whole[email] for email in shared)}/{len(shared)}"


def request_records(path: Path) -> dict:
    """What the deployment's request log holds: records by route and status, and streamed answers."""
    if not path.exists():
        return {"records": 0}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    counts: dict[str, int] = {}
    for record in records:
        key = f"{record.get('route')} {record.get('status', 200)}"
        counts[key] = counts.get(key, 0) + 1
    return {"records": len(records), "by_route_and_status": counts,
            "streamed": sum(1 for record in records if record.get("stream"))}


def email_pool() -> list[str]:
    """Distinct held-out emails (test, then validation split): no level sends one twice."""
    pool: list[str] = []
    for name in ("test", "validation"):
        for line in (REPO / "data" / "support_emails" / f"{name}.jsonl").read_text().splitlines():
            if line.strip() and (prompt := json.loads(line)["prompt"]) not in pool:
                pool.append(prompt)
    return pool


def end_to_end(args) -> dict:
    sys.path.insert(0, str(REPO))
    from llm_lora.llama_server import server_binary, server_version, start_server

    levels = [int(n) for n in args.levels.split(",")]
    slots, context, threads = 16, 2048, os.cpu_count()
    binary = server_binary()  # built (and cached) before anything is timed
    with tempfile.TemporaryDirectory(prefix="deploy-bench-") as home:
        env = dict(os.environ, ZENML_CONFIG_PATH=str(Path(home) / "zenml"), ZENML_ANALYTICS_OPT_IN="false",
                   PYTHONPATH=str(REPO))
        config = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
        config["registry"]["model_name"] = MODEL_NAME
        config["export"] = {"formats": ["gguf"], "gguf_types": ["q8_0"]}
        train_yaml = Path(home) / "train.yaml"
        train_yaml.write_text(yaml.safe_dump(config, sort_keys=False))
        print("training the quickstart with a q8_0 GGUF export ...", flush=True)
        started = time.perf_counter()
        run([sys.executable, "run.py", "--config", str(train_yaml), "--force-promote"], env, "training")
        train_s = time.perf_counter() - started
        facts = json.loads(run([sys.executable, __file__, "--version-facts"], env, "reading the version")
                           .strip().splitlines()[-1])

        pool = email_pool()
        share = len(pool) // 3  # chat, streamed chat and /invoke: each its own emails
        slices = {"chat": pool[:share], "stream": pool[share:2 * share], "invoke": pool[2 * share:3 * share]}
        chat = Route("", "chat", facts["system_prompt"], facts["cap"])
        streamed = Route("", "chat", facts["system_prompt"], facts["cap"], stream=True)

        def measure(url: str, routes: list[tuple[Route, str]]) -> dict:
            """Each route on its own emails; then the chat emails of the first level streamed (untimed),
            to compare streamed answers with whole ones."""
            measured = {}
            for route, kind in routes:
                measured[kind] = load(Route(url, route.kind, route.system_prompt, route.cap, route.stream),
                                      slices[kind], levels, args.requests, args.time_cap_s,
                                      repeat_at=REPEAT_AT if kind != "invoke" else None)
            if "stream" in measured:
                check = slices["chat"][:args.requests]
                measured["stream_check"] = {email: Route(url, "chat", facts["system_prompt"], facts["cap"],
                                                         stream=True).call(email).text for email in check}
            return measured

        def deployed(engine: str, routes: list[tuple[Route, str]]) -> dict:
            port = free_port()
            deploy_yaml = Path(home) / f"deploy-{engine}.yaml"
            gguf = {"gguf_type": "q8_0", "gguf_context": context} if engine != "transformers" else {}
            deploy_yaml.write_text(yaml.safe_dump({"kind": "deploy", "deploy": {
                "model_name": MODEL_NAME, "deployment_name": "load-bench", "port": port, "engine": engine, **gguf,
                "batch_size": slots, "request_log": str(Path(home) / f"requests-{engine}.jsonl")}}))
            run([sys.executable, "run.py", "--config", str(deploy_yaml)], env, f"deploying ({engine})")
            url = f"http://127.0.0.1:{port}"
            try:
                print(f"project deployment, engine {engine}, at {url}:", flush=True)
                return measure(url, routes)
            finally:
                run([str(Path(sys.executable).parent / "zenml"), "deployment", "delete", "load-bench", "-y"], env,
                    "stopping the deployment", timeout=300)
                records[engine] = request_records(Path(home) / f"requests-{engine}.jsonl")

        records: dict[str, dict] = {}
        ours = deployed("llama.cpp", [(chat, "chat"), (streamed, "stream"), (Route("", "invoke"), "invoke")])
        served = deployed("llama-server", [(chat, "chat"), (streamed, "stream")])
        transformers = deployed("transformers", [(chat, "chat")])

        peer = start_server(binary, Path(facts["gguf"]), free_port(), slots, context, threads,
                            log=Path(home) / "llama-server.log")
        try:
            print(f"llama.cpp's llama-server at {peer.url}:", flush=True)
            theirs = measure(peer.url, [(chat, "chat"), (streamed, "stream")])
        finally:
            peer.stop()
        peer_command = [Path(part).name if part.startswith("/") else part for part in peer.command]
        # The engines alone (no HTTP, no FastAPI), each started fresh: nothing of these emails is cached.
        fresh = pool[3 * share:] or pool[:args.requests]
        try:
            profile = json.loads(run([sys.executable, __file__, "--engine-profile", str(args.requests), str(REPEAT_AT),
                                      json.dumps(fresh)], env, "the engine profile").strip().splitlines()[-1])
        except (SystemExit, ValueError, IndexError) as exc:  # the load results above still count
            profile = {"error": str(exc)[-500:]}

    most = max(levels)
    return {
        "what": ("one support email per request, N concurrent clients over loopback; the project's deployment "
                 f"(llama.cpp engine, continuous batching over {slots} slots of {context} tokens) on "
                 "/v1/chat/completions (whole and streamed answers) and ZenML's /invoke, then llama.cpp's own "
                 "llama-server on the same q8_0 GGUF with the same slots, context, threads and attention kernels"),
        "model_version": f"{MODEL_NAME} (configs/quickstart.yaml trained, export q8_0)",
        "gguf": Path(facts["gguf"]).name,
        "max_tokens": facts["cap"],
        "conditions": {"slots": slots, "context_per_slot": context, "threads": threads, "greedy": "temperature 0",
                       "flash_attention": "off", "kv_cache": "one per slot",
                       "prompt_cache": "on in all three (deploy.prompt_cache default; llama-server's default "
                                       "--cache-ram)"},
        "peer": {"command": " ".join(peer_command), "version": server_version(binary),
                 "built_from": f"llama-cpp-python=={version('llama-cpp-python')} vendor/llama.cpp (tools/server)"},
        "train_s": round(train_s, 1),
        "requests_per_level": args.requests,
        "project_chat": summary(ours["chat"]),
        "project_chat_stream": summary(ours["stream"]),
        "project_invoke": summary(ours["invoke"]),
        "project_llama_server_engine_chat": summary(served["chat"]),
        "project_llama_server_engine_chat_stream": summary(served["stream"]),
        "project_transformers_engine_chat": summary(transformers["chat"]),
        "peer_llama_server_chat": summary(theirs["chat"]),
        "peer_llama_server_chat_stream": summary(theirs["stream"]),
        "throughput_ratio_to_peer": {str(n): ratio(ours["chat"], theirs["chat"], n) for n in levels},
        "stream_throughput_ratio_to_peer": {str(n): ratio(ours["stream"], theirs["stream"], n) for n in levels},
        f"throughput_ratio_to_peer_at_{most}_clients": ratio(ours["chat"], theirs["chat"], most),
        "llama_server_engine_ratio_to_peer": {str(n): ratio(served["chat"], theirs["chat"], n) for n in levels},
        "llama_server_engine_stream_ratio_to_peer": {
            str(n): ratio(served["stream"], theirs["stream"], n) for n in levels},
        f"repeated_emails_ratio_to_peer_at_{REPEAT_AT}_clients": {
            "llama.cpp": ratio(ours["chat"], theirs["chat"], REPEAT_AT, repeated=True),
            "llama-server engine": ratio(served["chat"], theirs["chat"], REPEAT_AT, repeated=True)},
        "same_answers_as_peer": agreement(ours["chat"], theirs["chat"]),
        "same_streamed_answers_as_peer": agreement(ours["stream"], theirs["stream"]),
        "llama_server_engine_same_answers_as_peer": agreement(served["chat"], theirs["chat"]),
        "llama_server_engine_same_streamed_answers_as_peer": agreement(served["stream"], theirs["stream"]),
        "streamed_equal_whole": {name: same_streamed(measured) for name, measured in
                                 (("llama.cpp", ours), ("llama-server engine", served), ("peer", theirs))},
        f"engines_alone_at_{REPEAT_AT}_clients": profile,
        # The deployment's own records of the timed requests: every answer and refusal has one.
        "request_records": records,
        "workload": (f"{args.requests} distinct held-out emails per level (test and validation splits), none sent "
                     f"to a server twice, except the extra {REPEAT_AT}-client level marked repeated_emails, which "
                     "sends that level's emails again"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="load only this running deployment (loopback), e.g. http://127.0.0.1:8000")
    parser.add_argument("--route", choices=["chat", "invoke"], default="chat", help="with --url: which route")
    parser.add_argument("--levels", default="1,4,16,32", help="concurrent clients per level")
    parser.add_argument("--requests", type=int, default=32, help="requests per level (at most)")
    parser.add_argument("--time-cap-s", type=float, default=300, help="stop sending new requests after this")
    parser.add_argument("--note", default="", help="a remark stored with the results")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    emails = email_pool()
    load_before = os.getloadavg()
    if args.url:
        if urlparse(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise SystemExit("--url: loopback only (127.0.0.1, localhost or ::1)")
        levels = load(Route(args.url, args.route), emails, [int(n) for n in args.levels.split(",")],
                      args.requests, args.time_cap_s)
        record = {"what": f"POST {args.route} on {args.url}, one support email per request", "levels": summary(levels)}
    else:
        record = end_to_end(args)
    load_after = os.getloadavg()
    record.update({
        "note": args.note,
        "command": "python bench/deploy_load.py" + (f" --url {args.url} --route {args.route}" if args.url else ""),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "cpu_flags": cpu_flags(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            # Other work on the machine shares the cores: 1-minute load average before and after.
            "load_average_1m": [round(load_before[0], 2), round(load_after[0], 2)],
            "versions": {name: version(name) for name in
                         ("zenml", "torch", "transformers", "llama-cpp-python", "fastapi", "uvicorn")},
        },
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    })
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written: {args.output}")


TABLE_ROWS = [
    ("project_chat", "this deployment, llama.cpp engine, chat"),
    ("project_llama_server_engine_chat", "this deployment, llama-server engine, chat"),
    ("peer_llama_server_chat", "`llama-server` alone, same file, chat"),
    ("project_chat_stream", "this deployment, llama.cpp engine, chat, `stream: true`"),
    ("project_llama_server_engine_chat_stream", "this deployment, llama-server engine, `stream: true`"),
    ("peer_llama_server_chat_stream", "`llama-server` alone, `stream: true`"),
    ("project_invoke", "this deployment, llama.cpp engine, `/invoke`"),
    ("project_transformers_engine_chat", "this deployment, transformers engine, chat"),
]


def table(record: dict) -> str:
    """The README's load table, from a results file."""
    def seconds(value):
        return f"{value:.2f} s" if value is not None else "-"

    lines = ["| server, route | clients | requests/s | tokens/s | p50 | p95 | first text p50 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for key, name in TABLE_ROWS:
        for n, level in enumerate(record.get(key, [])):
            label = name if n == 0 else ""
            clients = f"{level['clients']}" + (" (emails again)" if level.get("repeated_emails") else "")
            latency = level["latency_s"] or {}
            first = (level["first_token_s"] or {}).get("p50")
            tokens = level["generated_tokens_per_s"]
            lines.append(f"| {label} | {clients} | {level['requests_per_s']:.2f} | "
                         f"{tokens if tokens is not None else '-'} | {seconds(latency.get('p50'))} | "
                         f"{seconds(latency.get('p95'))} | {seconds(first) if first is not None else '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--table"]:
        print(table(json.loads(Path(sys.argv[2] if len(sys.argv) > 2 else OUTPUT).read_text())))
    elif sys.argv[1:] == ["--version-facts"]:
        version_facts()
    elif sys.argv[1:2] == ["--engine-profile"]:
        engine_profile(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        main()

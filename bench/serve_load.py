"""Load test of `distill serve` on loopback: `--clients` concurrent clients for `--seconds`, then it stops.

Starts `distill serve` as a subprocess on 127.0.0.1 (port 0: any free port, read from the line it prints),
waits for it, and runs the clients with the official async `openai` client: each sends chat requests back
to back (a held-out problem each, the server's default reasoning effort) until the time is up. Requests
still running then are awaited (each bounded by the client timeout), the server's counters are read from
/health and its peak RSS from /proc (VmHWM: the kernel's own high-water mark, nothing sampled), and the
server is stopped. Only 127.0.0.1 is ever contacted.

    .venv/bin/python bench/serve_load.py                       # 32 clients, 60 s, the demo's student-l
    .venv/bin/python bench/serve_load.py --clients 8 --seconds 10 --model PATH --results RESULTS.json
    .venv/bin/python bench/serve_load.py batch_window_ms=20   # any `distill serve` key=value
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start(args, log: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "distill.cli", "serve", f"model={args.model}", "host=127.0.0.1", "port=0",
           f"threads={args.threads}", *([f"results={args.results}"] if args.results else []),
           *args.serve_args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while not (m := re.search(r"http://127\.0\.0\.1:(\d+)/v1", log.read_text())):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            sys.exit(f"serve did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.2)
    print(" ".join(cmd[1:]), "->", m.group(0), flush=True)
    return proc, m.group(0)


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


async def load(url: str, model: str, problems: list[dict], clients: int, seconds: float):
    """(one row per request, elapsed seconds until the last request came back)"""
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=300)
    stop_at = time.perf_counter() + seconds
    rows: list[dict] = []

    async def one_client(k: int):
        i = k
        while time.perf_counter() < stop_at:
            p = problems[i % len(problems)]
            i += clients
            started = time.perf_counter()
            try:
                ask = [{"role": "user", "content": p["problem"]}]
                r = await client.chat.completions.create(model=model, messages=ask)
                answer = (r.choices[0].message.content or "").rsplit(":", 1)[-1].strip()
                rows.append({"s": time.perf_counter() - started, "ok": True,
                             "tokens": r.usage.completion_tokens,
                             "thinking": r.usage.completion_tokens_details.reasoning_tokens,
                             "correct": answer == str(p["answer"])})
            except openai.OpenAIError as e:
                rows.append({"s": time.perf_counter() - started, "ok": False,
                             "error": f"{type(e).__name__}: {e}"})

    started = time.perf_counter()
    await asyncio.gather(*(one_client(k) for k in range(clients)))
    elapsed = time.perf_counter() - started
    await client.close()
    return rows, elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/demo/sft/student-l/model")
    ap.add_argument("--results", default="runs/demo/eval/results.json", help="eval results to calibrate from")
    ap.add_argument("--problems", default="runs/demo/problems/eval.jsonl")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    ap.add_argument("serve_args", nargs="*", metavar="key=value", help="more `distill serve` settings")
    args = ap.parse_args()
    problems = [json.loads(line) for line in (ROOT / args.problems).read_text().splitlines() if line.strip()]
    log = Path(tempfile.mkdtemp(prefix="serve_load_")) / "serve.log"
    proc, url = start(args, log)
    try:
        [served] = json.loads(urllib.request.urlopen(url + "/models", timeout=30).read())["data"]
        rows, wall = asyncio.run(load(url, served["id"], problems, args.clients, args.seconds))
        health = json.loads(urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=30).read())
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    ok = [r for r in rows if r["ok"]]
    lat = sorted(r["s"] for r in ok)
    errors = [r["error"] for r in rows if not r["ok"]]
    summary = {
        "clients": args.clients, "seconds": args.seconds, "model": args.model, "requests": len(rows),
        "errors": len(errors), "p50_s": round(lat[len(lat) // 2], 3),
        "p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3),
        "requests_per_s": round(len(ok) / wall, 2),
        "completion_tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
        "mean_thinking_tokens": round(statistics.mean(r["thinking"] for r in ok), 1),
        "accuracy": round(statistics.mean(r["correct"] for r in ok), 3),
        "batches": health["batches"], "mean_batch": round(health["requests"] / max(health["batches"], 1), 1),
        "largest_batch": health["largest_batch"], "server_peak_rss_mb": round(rss, 1),
        "serve_args": args.serve_args,
        "reasoning_effort": served.get("reasoning_effort"),
    }
    print(json.dumps(summary, indent=2))
    if errors:
        print(f"{len(errors)} errors, first: {errors[0]}")
        sys.exit(1)


if __name__ == "__main__":
    main()

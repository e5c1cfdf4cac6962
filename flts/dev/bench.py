"""`flts bench`: the inference function's figures on this machine, as a table and JSON.

1. ORT vs torch eager: latency of one window and of a batch of 64 on a representative
   GRU (2 layers, 64 hidden, scaling inside the graph), exported from torch here; ORT
   intra-op threads 1 vs 2 on the same graphs. torch is imported by the bench only.
2. Throughput below the limit: `python -m flts.infer serve --workers W` under wrk
   (Debian's `wrk`; the asyncio generator in flts.dev.loadgen when wrk is missing),
   10-row windows of real test data; successful predictions/s and latency percentiles.
3. Over the limit: MAX_INFLIGHT small, many connections; latency of the 429 answers on
   their own (flts.dev.loadgen), 5xx and timeouts counted.
4. Cold start through the scale-to-zero front door: stopped → first 200, model fetched
   from object storage (the S3 server from infra/install.sh when installed, else the
   filesystem store), repeated; median.
5. RSS of the infer process with the model loaded, after the load.
6. The v2 route against its ceiling: one uvicorn worker each (httptools + uvloop), side by
   side in one run, in alternating rounds under the same wrk load: infer's
   POST /v2/models/{name}/infer, a bare Starlette app that echoes the body on the same path
   (`echo_app` below: the cost of HTTP + uvicorn + Starlette alone), and with
   `--kserve auto|install`, a KServe model server (Apache-2.0, its own venv) running the same
   ONNX graph in ONNX Runtime. Throughput ratios per round (median), and server CPU per request.
   infer is also measured with the binary tensor data extension (the same window as raw FP32
   after a JSON header), against the same echo of the JSON body.

`flts bench --fleet N` instead promotes N small models and measures serving them (run_fleet).
The load generator shares the 2 cores with the server (and with whatever else runs):
the load average is printed with the figures.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

# Heavy modules are imported where used: `flts --help` builds this module's arguments.
from flts.dev import REPO, processes

TARGETS = {"throughput_rps": 2000, "p99_below_limit_ms": 50, "p99_429_ms": 5, "cold_start_median_s": 1.0, "rss_mb": 200,
           "v2_over_echo": 0.5}
KSERVE_VENV = Path.home() / ".cache" / "flts" / "bench-kserve"
KSERVE_VERSION = "0.21.0"  # Apache-2.0


# ---------------------------------------------------------------- the model

def build_torch_model(input_seq_len: int, n_features: int, output_seq_len: int, hidden: int, layers: int):
    import torch

    class Forecaster(torch.nn.Module):
        """Raw features in, original units out: the scaling is part of the graph, as eval exports it."""

        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.rand(n_features))
            self.register_buffer("std", torch.rand(n_features) + 0.5)
            self.gru = torch.nn.GRU(n_features, hidden, num_layers=layers, batch_first=True)
            self.head = torch.nn.Linear(hidden, output_seq_len)
            self.register_buffer("y_mean", torch.tensor(5.0e7))
            self.register_buffer("y_std", torch.tensor(2.0e7))

        def forward(self, x):
            out, _ = self.gru((x - self.mean) / self.std)
            return self.head(out[:, -1]) * self.y_std + self.y_mean

    torch.manual_seed(0)
    return Forecaster().eval()


def export_onnx(model, input_seq_len: int, n_features: int) -> bytes:
    import torch

    buffer = io.BytesIO()
    example = torch.zeros(1, input_seq_len, n_features)
    torch.onnx.export(model, (example,), buffer, input_names=["input"], output_names=["forecast"],
                      dynamic_axes={"input": {0: "batch"}, "forecast": {0: "batch"}}, opset_version=17, dynamo=False)
    return buffer.getvalue()


def _median_ms(fn, runs: int) -> float:
    for _ in range(max(5, runs // 20)):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def ort_vs_torch(model, onnx_bytes: bytes, input_seq_len: int, n_features: int, runs: int) -> dict:
    import numpy as np
    import onnxruntime as ort
    import torch

    torch.set_num_threads(1)  # the same single thread ORT gets in the server
    results = {}
    sessions = {}
    for threads in (1, 2):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[threads] = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    for batch in (1, 64):
        x = np.random.default_rng(0).uniform(0, 100, (batch, input_seq_len, n_features)).astype(np.float32)
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            expected = model(xt).numpy()
            torch_ms = _median_ms(lambda xt=xt: model(xt), runs if batch == 1 else runs // 4)
        ort_ms = {}
        for threads, session in sessions.items():
            got = session.run(["forecast"], {"input": x})[0]
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-2 * float(np.abs(expected).max()))
            ort_ms[threads] = _median_ms(lambda s=session, x=x: s.run(["forecast"], {"input": x}), runs if batch == 1 else runs // 4)
        results[f"batch_{batch}"] = {"torch_eager_ms": round(torch_ms, 4), "ort_ms": round(ort_ms[1], 4),
                                     "ort_2_threads_ms": round(ort_ms[2], 4), "torch_over_ort": round(torch_ms / ort_ms[1], 2)}
    return results


# ---------------------------------------------------------------- processes

def spawned(args: list[str], env: dict, ready_url: str | None, timeout: float = 60.0):
    """`python <args>` from the repo for a with-block, its output discarded (the bench prints figures only)."""
    return processes.running([sys.executable, *args], env=env, cwd=REPO, ready_url=ready_url, timeout=timeout,
                             log_path=os.devnull)


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


def _post(url: str, body: bytes, timeout: float = 60.0, headers: dict | None = None) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers=headers or {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _rss_mb(pid: int) -> dict[int, float]:
    """RSS of the server: its worker processes when uvicorn supervises several, else itself."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += (task / "children").read_text().split()
    pids = [int(c) for c in children] or [pid]
    out = {}
    for p in pids:
        status = Path(f"/proc/{p}/status").read_text()
        out[p] = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024
    return {p: rss for p, rss in out.items() if rss > 30} or out  # skip the tiny multiprocessing helpers


# ---------------------------------------------------------------- load

def windows(path: Path, length: int, count: int) -> list[bytes]:
    import orjson

    from flts.dev.forecast import request_body

    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    step = max(1, (len(rows) - length) // count)
    return [orjson.dumps(request_body(rows[s:s + length], "time")) for s in range(0, len(rows) - length, step)][:count]


def wrk_run(url: str, bodies: list[bytes], connections: int, seconds: float, workdir: Path,
            path: str = "/predict", headers: dict[str, str] | None = None) -> dict:
    """wrk (one thread, bounded in time) POSTing `bodies` in turn to `path` of `url` (127.0.0.1),
    with `headers` (default: JSON's Content-Type). Each body is read from its own file: any bytes."""
    for i, body in enumerate(bodies):
        (workdir / f"body-{i}").write_bytes(body)
    headers = headers or {"Content-Type": "application/json"}
    script = workdir / "post.lua"
    script.write_text(
        f'local bodies = {{}}\nfor i = 0, {len(bodies) - 1} do\n  local f = io.open("{workdir}/body-" .. i, "rb")\n'
        '  bodies[#bodies + 1] = f:read("*a")\n  f:close()\nend\n'
        f'local headers = {{{", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items())}}}\n'
        'local i = 0\nrequest = function()\n  i = i + 1\n'
        f'  return wrk.format("POST", "{path}", headers, bodies[(i % #bodies) + 1])\nend\n')
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "2s",
                          "-s", str(script), url], capture_output=True, text=True, timeout=seconds + 60).stdout
    return parse_wrk(out)


def _ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(\w+)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def parse_wrk(out: str) -> dict:
    total = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", out).group(1))
    seconds = _ms(re.search(r"requests in ([\d.]+\w+)", out).group(1)) / 1000
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    percentiles = {f"p{q}_ms": _ms(v) for q, v in re.findall(r"^\s+(\d+)%\s+([\d.]+\w+)", out, re.M)}
    return {"tool": "wrk", "requests": total, "seconds": round(seconds, 2), "non_2xx": non2xx,
            "ok_per_s": round((total - non2xx) / seconds, 1), **percentiles,
            "timeouts": int(sockets.group(4)) if sockets else 0,
            "socket_errors": sum(int(g) for g in sockets.groups()[:3]) if sockets else 0}


def loadgen_run(port: int, bodies: list[bytes], connections: int, seconds: float, path: str = "/predict") -> dict:
    from flts.dev.loadgen import load

    result = load("127.0.0.1", port, path, bodies, connections, seconds)
    return {"tool": "flts.dev.loadgen", "requests": result.count(), "seconds": round(result.seconds, 2),
            "non_2xx": result.count() - result.count(200), "ok_per_s": round(result.rate(200), 1),
            **{f"p{q}_ms": round(result.percentile_ms(q, 200) or 0, 3) for q in (50, 90, 99)},
            "timeouts": result.timeouts, "socket_errors": result.errors}


# ---------------------------------------------------------------- the steps

def throughput(env: dict, bodies: list[bytes], workers: int, connections: int, seconds: float, workdir: Path) -> dict:
    from flts.dev.loadgen import load
    from flts.dev.testing import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**env, "MAX_INFLIGHT": "512", "QUEUE_MAXSIZE": "1024"}
    with spawned(["-m", "flts.infer", "serve", "--port", str(port), "--workers", str(workers)], env, url + "/readyz") as proc:
        time.sleep(0.5)
        rss_idle = _rss_mb(proc.pid)
        load("127.0.0.1", port, "/predict", bodies, connections, 2.0)  # warm-up: connections, allocations
        if shutil.which("wrk"):
            result = wrk_run(url + "/predict", bodies, connections, seconds, workdir)
        else:
            result = loadgen_run(port, bodies, connections, seconds)
        text = _get(url + "/metrics")[1].decode()
        from flts.infer.prometheus import sample

        batches = sample(text, "flts_infer_batch_size_count")
        result.update(workers=workers, connections=connections,
                      server_2xx=sample(text, "flts_infer_requests_total", route="predict", status="200"),
                      mean_batch=round(sample(text, "flts_infer_batch_size_sum") / batches, 2) if batches else None,
                      inline_runs=sample(text, "flts_infer_inline_runs_total"),
                      rss_idle_mb=rss_idle, rss_after_load_mb=_rss_mb(proc.pid))
    return result


def over_limit(env: dict, bodies: list[bytes], workers: int, limit: int, connections: int, seconds: float) -> dict:
    from flts.dev.loadgen import load
    from flts.dev.testing import free_port

    port = free_port()
    env = {**env, "MAX_INFLIGHT": str(limit)}
    with spawned(["-m", "flts.infer", "serve", "--port", str(port), "--workers", str(workers)], env,
                 f"http://127.0.0.1:{port}/readyz"):
        load("127.0.0.1", port, "/predict", bodies, 4, 1.0)
        result = load("127.0.0.1", port, "/predict", bodies, connections, seconds)
    return {"workers": workers, "max_inflight_per_worker": limit, "connections": connections,
            "seconds": round(result.seconds, 2), "answers_429": result.count(429), "answers_200": result.count(200),
            "rejected_share": round(result.count(429) / max(1, result.count()), 3),
            "p50_429_ms": _r(result.percentile_ms(50, 429)), "p99_429_ms": _r(result.percentile_ms(99, 429)),
            "p99_200_ms": _r(result.percentile_ms(99, 200)), "server_errors_5xx": result.server_errors(),
            "timeouts": result.timeouts, "connection_errors": result.errors}


def _r(value):
    return round(value, 3) if value is not None else None


def cold_start(env: dict, body: bytes, repeats: int) -> dict:
    from flts.dev.testing import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    client_seconds = []
    with spawned(["-m", "flts.dev.frontdoor", "--port", str(port), "--grace", "0.3"], env,
                 url + "/_frontdoor/status", timeout=30):
        for _ in range(repeats):
            while json.loads(_get(url + "/_frontdoor/status")[1])["backend"] != "stopped":
                time.sleep(0.05)
            time.sleep(0.3)  # let the stopped process's exit settle off the CPU
            t0 = time.perf_counter()
            status = _post(url + "/predict", body)
            client_seconds.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"cold request answered {status}")
        door = json.loads(_get(url + "/_frontdoor/status")[1])
    return {"repeats": repeats, "first_200_median_s": round(statistics.median(client_seconds), 3),
            "first_200_s": [round(s, 3) for s in client_seconds],
            "spawn_to_ready_median_s": round(statistics.median(door["cold_starts"]), 3)}


@contextmanager
def object_store(kind: str, workdir: Path):
    """(store, env for the servers): a private S3 server (infra's versitygw) or a folder."""
    from flts.dev.testing import free_port
    from flts.storage import FileStore, store_from_env

    if kind == "auto":
        from flts.dev import infra

        kind = "s3" if (infra.InfraConfig().cache_dir / "bin" / "versitygw").exists() else "file"
    if kind == "file":
        yield FileStore(workdir / "objects"), {"FLTS_OBJECT_DIR": str(workdir / "objects")}, "filesystem"
        return
    from flts.dev import infra

    cfg = infra.InfraConfig(state_dir=workdir / "infra", s3_port=free_port())
    infra.start_s3(cfg)
    try:
        infra.create_buckets(cfg, ["mlflow", "model-promotion", "inference-logs"])
        client = infra.client_env(cfg)
        env = {k: client[k] for k in ("S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_SECURE")}
        yield store_from_env(env), env, f"S3 server at {env['S3_ENDPOINT']}"
    finally:
        infra.stop_service(cfg, "s3")


# ---------------------------------------------------------------- v2 against its ceiling

def echo_app():
    """The ceiling: a bare Starlette app answering the v2 infer path with the request body.
    `uvicorn flts.dev.bench:echo_app --factory` (it imports starlette only)."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def echo(request):
        return Response(await request.body(), media_type="application/json")

    return Starlette(routes=[Route("/v2/models/{name}/infer", echo, methods=["POST"])])


KSERVE_SERVER = '''"""A KServe model server on the bench's ONNX graph (written and run by flts bench)."""
import sys

import kserve
import onnxruntime as ort
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse


class OnnxModel(kserve.Model):
    def __init__(self, name, path):
        super().__init__(name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # as infer runs it
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.ready = True

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        out = self.session.run(["forecast"], {"input": payload.inputs[0].as_numpy()})[0]
        return InferResponse(model_name=self.name, response_id=payload.id,
                             infer_outputs=[InferOutput("forecast", list(out.shape), "FP32", out)])


if __name__ == "__main__":  # python kserve_onnx.py NAME=PATH ... --http_port N (kserve reads its own flags)
    models = [OnnxModel(*arg.split("=", 1)) for arg in sys.argv[1:] if "=" in arg and not arg.startswith("-")]
    kserve.ModelServer(enable_grpc=False, enable_latency_logging=False, workers=1).start(models)
'''


def kserve_python(mode: str) -> tuple[Path | None, str]:
    """(the benchmark venv's python, a note): KServe lives in its own venv, never in the project's.
    mode: off; auto (use the venv when it exists); install (create it with uv first, bounded)."""
    python = KSERVE_VENV / "bin" / "python"
    if mode == "off":
        return None, "not run (--kserve off)"
    if not python.exists() and mode == "install":
        uv = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
        try:
            subprocess.run([uv, "venv", "-q", "-p", sys.executable, str(KSERVE_VENV)], check=True, timeout=120)
            subprocess.run([uv, "pip", "install", "-q", "--python", str(python), f"kserve=={KSERVE_VERSION}",
                            "onnxruntime", "numpy"], check=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"could not install kserve=={KSERVE_VERSION} into {KSERVE_VENV}: {exc}"
    if not python.exists():
        return None, f"not run: no {KSERVE_VENV} (flts bench --kserve install creates it)"
    return python, f"kserve {KSERVE_VERSION} in {KSERVE_VENV}"


def v2_body(n_features: int, length: int) -> bytes:
    """One v2 infer request: a [1, length, n_features] FP32 window of real-looking values."""
    import numpy as np
    import orjson

    x = np.random.default_rng(0).uniform(0, 100, (1, length, n_features)).astype(np.float32)
    return orjson.dumps({"id": "1", "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                                "data": x.ravel().tolist()}]})


def v2_binary_body(n_features: int, length: int) -> tuple[bytes, dict[str, str]]:
    """v2_body's window with the binary tensor data extension: (body, its headers)."""
    import numpy as np
    import orjson

    x = np.random.default_rng(0).uniform(0, 100, (1, length, n_features)).astype("<f4")
    header = orjson.dumps({"id": "1", "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                                  "parameters": {"binary_data_size": x.nbytes}}]})
    return header + x.tobytes(), {"Content-Type": "application/octet-stream",
                                  "Inference-Header-Content-Length": str(len(header))}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Target(NamedTuple):
    port: int
    pid: int
    path: str
    body: bytes
    headers: dict[str, str] | None = None  # None: JSON


def v2_vs_ceiling(env: dict, models: dict[str, Path], body: bytes, connections: int, seconds: float,
                  rounds: int, kserve: str, workdir: Path, binary: tuple[bytes, dict] | None = None) -> dict:
    """infer's v2 route, the echo app and (optionally) KServe, one worker each, in alternating
    wrk rounds, for each of `models` (identifier → ONNX file; infer loads each on first use);
    with `binary` (body, headers), infer also with the binary tensor data extension."""
    from contextlib import ExitStack

    python, kserve_note = kserve_python(kserve)
    with ExitStack() as stack:
        targets = _v2_servers(stack, env, models, body, python, workdir, binary)
        for name, t in targets.items():  # ready, and warm: connections, allocations, first runs
            url = f"http://127.0.0.1:{t.port}"
            processes.wait_until(lambda t=t, url=url: _post(url + t.path, t.body, 2, t.headers) == 200,
                                 60, what=f"{name} answering {t.path}")
            wrk_run(url, [t.body], connections, 1, workdir, t.path, t.headers)
        per_round: dict[str, list[dict]] = {name: [] for name in targets}
        for _ in range(rounds):  # alternate, so a burst of load from other jobs hits every server alike
            for name, t in targets.items():
                cpu = _cpu_seconds(t.pid)
                result = wrk_run(f"http://127.0.0.1:{t.port}", [t.body], connections, seconds, workdir, t.path, t.headers)
                result["cpu_us_per_request"] = round((_cpu_seconds(t.pid) - cpu) * 1e6 / max(1, result["requests"]), 1)
                per_round[name].append(result)
    report: dict = {"connections": connections, "seconds_per_round": seconds, "rounds": rounds,
                    "kserve_note": kserve_note, "servers": {}, "ratios": {}}
    for name, results in per_round.items():
        report["servers"][name] = {
            "ok_per_s": statistics.median(r["ok_per_s"] for r in results),
            "p99_ms": statistics.median(r.get("p99_ms", 0) for r in results),
            "non_2xx": sum(r["non_2xx"] for r in results),
            "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in results),
            "ok_per_s_rounds": [r["ok_per_s"] for r in results]}
    for mine, other in _v2_pairs(models, per_round):
        ratios = [m["ok_per_s"] / t["ok_per_s"] for m, t in zip(per_round[mine], per_round[other], strict=True)
                  if t["ok_per_s"]]
        report["ratios"][f"{mine} over {other}"] = {
            "throughput": round(statistics.median(ratios), 3) if ratios else None,
            "rounds": [round(r, 3) for r in ratios],
            "by_cpu": round(report["servers"][other]["cpu_us_per_request"]
                            / report["servers"][mine]["cpu_us_per_request"], 3)}
    return report


def _v2_servers(stack, env: dict, models: dict[str, Path], body: bytes, kserve_python_path: Path | None,
                workdir: Path, binary: tuple[bytes, dict] | None) -> dict[str, _Target]:
    """Start infer, the echo and KServe (when its venv is there) on free ports: "server/model" → target."""
    from flts.dev.testing import free_port

    targets: dict[str, _Target] = {}
    port = free_port()
    proc = stack.enter_context(spawned(["-m", "flts.infer", "serve", "--port", str(port), "--workers", "1"],
                                       {**env, "MAX_INFLIGHT": "512", "QUEUE_MAXSIZE": "1024"},
                                       f"http://127.0.0.1:{port}/readyz"))
    for model in models:
        targets[f"infer/{model}"] = _Target(port, proc.pid, f"/v2/models/{model}/infer", body)
    for model in models if binary else ():
        targets[f"infer/{model} binary"] = _Target(port, proc.pid, f"/v2/models/{model}/infer", *binary)
    port = free_port()
    proc = stack.enter_context(spawned(
        ["-m", "uvicorn", "flts.dev.bench:echo_app", "--factory", "--host", "127.0.0.1", "--port", str(port),
         "--http", "httptools", "--loop", "uvloop", "--no-access-log", "--log-level", "warning", "--workers", "1"],
        env, None))
    targets["echo"] = _Target(port, proc.pid, f"/v2/models/{next(iter(models))}/infer", body)
    if kserve_python_path:
        script = workdir / "kserve_onnx.py"
        script.write_text(KSERVE_SERVER)
        port = free_port()
        proc = stack.enter_context(processes.running(
            [str(kserve_python_path), str(script), *(f"{name}={path}" for name, path in models.items()), "--http_port",
             str(port), "--configure_logging", "false"], cwd=workdir,
            ready_url=f"http://127.0.0.1:{port}/v2/health/ready", timeout=120, log_path=os.devnull))
        for model in models:
            targets[f"kserve/{model}"] = _Target(port, proc.pid, f"/v2/models/{model}/infer", body)
    return targets


def _v2_pairs(models, per_round) -> list[tuple[str, str]]:
    """(infer target, what it is compared with): every infer target with the echo, JSON ones with KServe."""
    pairs = []
    for model in models:
        pairs += [(f"infer/{model}", other) for other in ("echo", f"kserve/{model}") if other in per_round]
        if f"infer/{model} binary" in per_round:
            pairs.append((f"infer/{model} binary", "echo"))
    return pairs


# ---------------------------------------------------------------- a fleet of models

def run_fleet(args) -> dict:
    """N small models promoted into a file store, served by one infer process: models resident,
    RSS, the time of a cold identifier's first request, and the hot identifier's p99 against a
    second process that holds it alone (alternating wrk rounds, median of per-round ratios)."""
    from flts.dev.testing import LTE_FEATURES, free_port, promote
    from flts.storage import FileStore

    length, n_features, horizon = 10, len(LTE_FEATURES), args.horizon
    workdir = Path(tempfile.mkdtemp(prefix="flts-fleet-"))
    report: dict = {"machine": {"cpus": os.cpu_count(), "loadavg_before": _loadavg()}}
    try:
        onnx_bytes = export_onnx(build_torch_model(length, n_features, horizon, args.fleet_hidden, 1), length, n_features)
        store = FileStore(workdir / "objects")
        identifiers = [f"cell-{i:04d}" for i in range(args.fleet)]
        t0 = time.perf_counter()
        for i, identifier in enumerate(identifiers):  # each its own artifact, loaded on its own
            promote(store, onnx_bytes, identifier=identifier, run_id=f"run-{i}", input_seq_len=length,
                    output_seq_len=horizon)
        report["model"] = {"kind": f"GRU 1x{args.fleet_hidden}", "onnx_bytes": len(onnx_bytes), "count": args.fleet,
                           "promote_seconds": round(time.perf_counter() - t0, 1)}
        env = {**os.environ, "FLTS_OBJECT_DIR": str(workdir / "objects"), "UVICORN_LOG_LEVEL": "warning",
               "LOG_LEVEL": "warning", "MAX_MODELS": str(args.fleet), "MAX_INFLIGHT": "512",
               "MAX_MODEL_BYTES": str(max(256 * 1024 * 1024, 2 * args.fleet * len(onnx_bytes)))}
        hot, body = identifiers[0], v2_body(n_features, length)
        path = f"/v2/models/{hot}/infer"
        one, fleet = free_port(), free_port()  # two servers: the hot model alone, and with the fleet resident
        with spawned(["-m", "flts.infer", "serve", "--port", str(one), "--workers", "1"], env,
                     f"http://127.0.0.1:{one}/readyz"), \
                spawned(["-m", "flts.infer", "serve", "--port", str(fleet), "--workers", "1"], env,
                        f"http://127.0.0.1:{fleet}/readyz") as full:
            report["rss_default_only_mb"] = round(sum(_rss_mb(full.pid).values()), 1)
            _post(f"http://127.0.0.1:{one}{path}", body)
            cold = []
            for identifier in identifiers:
                started = time.perf_counter()
                status = _post(f"http://127.0.0.1:{fleet}/v2/models/{identifier}/infer", body)
                cold.append(time.perf_counter() - started)
                if status != 200:
                    raise RuntimeError(f"{identifier}: the first request answered {status}")
            report["cold_first_request_ms"] = {"median": round(statistics.median(cold) * 1000, 2),
                                               "p99": round(float(_percentile(cold, 99)) * 1000, 2),
                                               "max": round(max(cold) * 1000, 2), "count": len(cold)}
            ready = json.loads(_get(f"http://127.0.0.1:{fleet}/readyz")[1])
            report["resident"] = len(ready["served"])
            report["held_bytes"] = ready.get("served_bytes")
            report["rss_all_resident_mb"] = round(sum(_rss_mb(full.pid).values()), 1)
            rounds: dict[str, list[dict]] = {"hot_1_resident": [], "hot_all_resident": []}
            for _ in range(args.fleet_rounds):  # alternate, so other jobs' load hits both alike
                for name, port in (("hot_1_resident", one), ("hot_all_resident", fleet)):
                    rounds[name].append(wrk_run(f"http://127.0.0.1:{port}", [body], args.connections,
                                                args.fleet_seconds, workdir, path))
        for name, runs in rounds.items():
            report[name] = {"p50_ms": statistics.median(r.get("p50_ms", 0) for r in runs),
                            "p99_ms": statistics.median(r.get("p99_ms", 0) for r in runs),
                            "p99_ms_rounds": [r.get("p99_ms") for r in runs],
                            "ok_per_s": statistics.median(r["ok_per_s"] for r in runs),
                            "non_2xx": sum(r["non_2xx"] for r in runs)}
        ratios = [b.get("p99_ms", 0) / a["p99_ms"] for a, b in zip(rounds["hot_1_resident"], rounds["hot_all_resident"],
                                                                    strict=True) if a.get("p99_ms")]
        report["hot_p99_ratio"] = round(statistics.median(ratios), 2) if ratios else None
        report["hot_p99_ratio_rounds"] = [round(r, 2) for r in ratios]
        report["rss_per_model_kb"] = round((report["rss_all_resident_mb"] - report["rss_default_only_mb"]) * 1024
                                           / max(1, report["resident"] - 1), 1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["machine"]["loadavg_after"] = _loadavg()
    return report


def _percentile(values, q):
    import numpy as np

    return np.percentile(values, q)


def print_fleet(report: dict) -> None:
    c, h1, hn = report["cold_first_request_ms"], report["hot_1_resident"], report["hot_all_resident"]
    rows = [
        ("models resident", f"{report['resident']}", f"{report['model']['count']} x {report['model']['kind']}, "
                                                     f"{report['model']['onnx_bytes']} bytes each"),
        ("RSS default only / all resident (MB)", f"{report['rss_default_only_mb']} / {report['rss_all_resident_mb']}",
         f"{report['rss_per_model_kb']} KB per model"),
        ("cold identifier, first request (ms)", f"median {c['median']}, p99 {c['p99']}", f"max {c['max']}, {c['count']} loads"),
        ("hot p99, 1 resident (ms)", f"{h1['p99_ms']}", f"p50 {h1['p50_ms']}, {h1['ok_per_s']:.0f}/s"),
        (f"hot p99, {report['resident']} resident (ms)", f"{hn['p99_ms']}", f"p50 {hn['p50_ms']}, {hn['ok_per_s']:.0f}/s"),
        ("hot p99 ratio (all / 1)", f"{report['hot_p99_ratio']}", f"median of rounds {report['hot_p99_ratio_rounds']}"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>26}  {note}")
    m = report["machine"]
    print(f"\nmachine: {m['cpus']} CPUs, load average before {m['loadavg_before']}, after {m['loadavg_after']}")


def _loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def run_bench(args) -> dict:
    from flts.dev.testing import LTE_FEATURES, persistence_onnx, promote

    report: dict = {"machine": {"cpus": os.cpu_count(), "loadavg_before": _loadavg()}}
    length, n_features, horizon = 10, len(LTE_FEATURES), args.horizon
    workdir = Path(tempfile.mkdtemp(prefix="flts-bench-"))
    try:
        model = build_torch_model(length, n_features, horizon, args.hidden, args.layers)
        onnx_bytes = export_onnx(model, length, n_features)
        report["model"] = {"kind": f"GRU {args.layers}x{args.hidden}", "input": [length, n_features],
                           "output_seq_len": horizon, "onnx_bytes": len(onnx_bytes)}
        print("ORT vs torch eager ...", file=sys.stderr, flush=True)
        report["ort_vs_torch"] = ort_vs_torch(model, onnx_bytes, length, n_features, args.runs)
        bodies = windows(REPO / "data" / "lte" / "PobleSec_test.csv", length, 200)
        with object_store(args.store, workdir) as (store, store_env, store_name):
            promote(store, onnx_bytes, input_seq_len=length, output_seq_len=horizon, run_id="bench")
            env = {**os.environ, **store_env, "UVICORN_LOG_LEVEL": "warning"}
            report["object_store"] = store_name
            print(f"throughput ({args.workers} workers, {args.connections} connections, {args.seconds}s) ...",
                  file=sys.stderr, flush=True)
            report["throughput"] = throughput(env, bodies, args.workers, args.connections, args.seconds, workdir)
            print("over the limit ...", file=sys.stderr, flush=True)
            report["over_limit"] = over_limit(env, bodies, args.workers, args.limit, args.overload_connections,
                                              min(args.seconds, 8))
            print("cold start ...", file=sys.stderr, flush=True)
            report["cold_start"] = cold_start(env, bodies[0], args.cold_starts)
            print(f"v2 vs a bare Starlette echo{'' if args.kserve == 'off' else ' and KServe'} "
                  f"({args.v2_rounds} rounds of {args.v2_seconds}s) ...", file=sys.stderr, flush=True)
            # The bench's GRU, and a trivial graph (one Gather + MatMul): the cost of serving alone.
            tiny = persistence_onnx(length, n_features, horizon)
            models = {"gru": onnx_bytes, "tiny": tiny}
            for name, graph in models.items():
                promote(store, graph, identifier=name, run_id=f"v2-{name}", input_seq_len=length,
                        output_seq_len=horizon, write_pointer=True)
                (workdir / f"{name}.onnx").write_bytes(graph)
            report["v2"] = v2_vs_ceiling(env, {name: workdir / f"{name}.onnx" for name in models},
                                         v2_body(n_features, length), args.connections, args.v2_seconds,
                                         args.v2_rounds, args.kserve, workdir, v2_binary_body(n_features, length))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["machine"]["loadavg_after"] = _loadavg()
    report["checks"] = checks(report)
    return report


def checks(report: dict) -> dict:
    t, o, c = report["throughput"], report["over_limit"], report["cold_start"]
    rss = max(t["rss_after_load_mb"].values())
    return {
        "throughput_rps": [t["ok_per_s"], TARGETS["throughput_rps"], t["ok_per_s"] >= TARGETS["throughput_rps"]],
        "p99_below_limit_ms": [t.get("p99_ms"), TARGETS["p99_below_limit_ms"], (t.get("p99_ms") or 1e9) <= TARGETS["p99_below_limit_ms"]],
        "p99_429_ms": [o["p99_429_ms"], TARGETS["p99_429_ms"], (o["p99_429_ms"] or 1e9) <= TARGETS["p99_429_ms"]],
        "over_limit_5xx_and_timeouts": [o["server_errors_5xx"] + o["timeouts"], 0, o["server_errors_5xx"] + o["timeouts"] == 0],
        "cold_start_median_s": [c["first_200_median_s"], TARGETS["cold_start_median_s"], c["first_200_median_s"] <= TARGETS["cold_start_median_s"]],
        "rss_mb": [round(rss, 1), TARGETS["rss_mb"], rss <= TARGETS["rss_mb"]],
        **{f"v2_{model}_over_echo": [ratio["throughput"], TARGETS["v2_over_echo"],
                                     (ratio["throughput"] or 0) >= TARGETS["v2_over_echo"]]
           for model in ("gru", "tiny") if (ratio := report["v2"]["ratios"].get(f"infer/{model} over echo"))},
    }


def print_table(report: dict) -> None:
    t, o, c, ot = report["throughput"], report["over_limit"], report["cold_start"], report["ort_vs_torch"]
    rows = [
        ("successful predictions/s", f"{t['ok_per_s']:.0f}", ">= 2000",
         f"{t['tool']}, {t['workers']} workers, {t['connections']} conn, mean batch {t['mean_batch']}, "
         f"{t['inline_runs']:.0f} ONNX runs on the event loop"),
        ("latency p50 / p90 / p99 (ms)", f"{t.get('p50_ms', 0):.2f} / {t.get('p90_ms', 0):.2f} / {t.get('p99_ms', 0):.2f}",
         "p99 <= 50", f"non-2xx {t['non_2xx']}, timeouts {t['timeouts']}"),
        ("429 latency p50 / p99 (ms)", f"{o['p50_429_ms']} / {o['p99_429_ms']}", "p99 <= 5",
         f"{o['answers_429']} x 429, {o['answers_200']} x 200, limit {o['max_inflight_per_worker']}/worker, {o['connections']} conn"),
        ("over limit: 5xx / timeouts", f"{o['server_errors_5xx']} / {o['timeouts']}", "0 / 0", ""),
        ("cold start, first 200 median (s)", f"{c['first_200_median_s']}", "<= 1.0",
         f"spawn->ready {c['spawn_to_ready_median_s']} s; runs {c['first_200_s']}; {report['object_store']}"),
        ("RSS with model (MB)", ", ".join(f"{v:.0f}" for v in t["rss_after_load_mb"].values()), "<= 200",
         f"idle after load; before load {', '.join(f'{v:.0f}' for v in t['rss_idle_mb'].values())}"),
    ]
    v2, servers = report["v2"], report["v2"]["servers"]
    for pair, ratio in v2["ratios"].items():
        mine, other = pair.split(" over ")
        target = ">= 0.5" if other == "echo" and not mine.endswith("binary") else ""
        rows.append((f"v2 {pair}", f"{ratio['throughput']}", target,
                     f"{servers[mine]['ok_per_s']:.0f} vs {servers[other]['ok_per_s']:.0f}/s, median of "
                     f"{v2['rounds']} rounds {ratio['rounds']}; by CPU/request {servers[mine]['cpu_us_per_request']}"
                     f" vs {servers[other]['cpu_us_per_request']} us = {ratio['by_cpu']}"))
    rows.append(("v2: 1 uvicorn worker each; KServe", "", "", v2["kserve_note"]))
    for batch in ("batch_1", "batch_64"):
        b = ot[batch]
        rows.append((f"ORT vs torch eager, {batch.replace('_', ' ')} (ms)", f"{b['ort_ms']:.3f} vs {b['torch_eager_ms']:.3f}",
                     "", f"torch/ORT = {b['torch_over_ort']}x; ORT 2 threads {b['ort_2_threads_ms']:.3f} ms"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'metric':<{width}}  {'value':>22}  {'target':>10}  notes")
    for name, value, target, note in rows:
        print(f"{name:<{width}}  {value:>22}  {target:>10}  {note}")
    m = report["machine"]
    print(f"\nmachine: {m['cpus']} CPUs, load average before {m['loadavg_before']}, after {m['loadavg_after']} "
          "(shared with other jobs; the load generator runs on the same cores)")
    failed = [k for k, (_, _, ok) in report["checks"].items() if not ok]
    print("targets: all met" if not failed else f"targets missed: {', '.join(failed)}")


def add_arguments(parser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes (default 2)")
    parser.add_argument("--connections", type=int, default=16, help="load connections below the limit (default 16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the throughput run (default 10)")
    parser.add_argument("--limit", type=int, default=4, help="MAX_INFLIGHT per worker for the 429 run (default 4)")
    parser.add_argument("--overload-connections", type=int, default=32)
    parser.add_argument("--cold-starts", type=int, default=5)
    parser.add_argument("--runs", type=int, default=400, help="timed runs per latency figure")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--horizon", type=int, default=1, help="output_seq_len of the bench model")
    parser.add_argument("--store", choices=["auto", "s3", "file"], default="auto",
                        help="object store the model is fetched from (auto: the S3 server when installed)")
    parser.add_argument("--v2-rounds", type=int, default=5, help="alternating rounds of the v2 vs echo run (default 5)")
    parser.add_argument("--v2-seconds", type=float, default=3.0, help="wrk seconds per server per round (default 3)")
    parser.add_argument("--kserve", choices=["off", "auto", "install"], default="auto",
                        help=f"compare with KServe {KSERVE_VERSION} on the same graph: auto = when {KSERVE_VENV} "
                             "exists, install = create it first with uv (default auto)")
    parser.add_argument("--fleet", type=int, default=0, metavar="N",
                        help="instead: promote N small models, serve them from one process, print residency, RSS, "
                             "cold-identifier load time and hot p99 with 1 vs N resident")
    parser.add_argument("--fleet-hidden", type=int, default=16, help="GRU width of the fleet's models (default 16)")
    parser.add_argument("--fleet-seconds", type=float, default=3.0, help="wrk seconds per hot p99 run (default 3)")
    parser.add_argument("--fleet-rounds", type=int, default=5,
                        help="alternating hot p99 rounds, 1 vs N resident, two servers (default 5)")
    parser.add_argument("--json", help="also write the JSON report to this file")


def main(args) -> int:
    if args.fleet:
        report = run_fleet(args)
        print_fleet(report)
    else:
        report = run_bench(args)
        print_table(report)
    text = json.dumps(report, indent=2, default=str)
    print("\n" + text)
    if args.json:
        Path(args.json).write_text(text)
    return 0

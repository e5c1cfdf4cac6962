"""The bench's own parsing and load generator (its figures are printed by `flts bench`, not asserted)."""
from __future__ import annotations

import httpx

from flts.dev.bench import parse_wrk
from flts.dev.loadgen import load

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8080/predict
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.02ms    9.71ms 145.20ms   94.64%
    Req/Sec     4.27k     1.01k    5.91k    71.00%
  Latency Distribution
     50%    2.98ms
     75%    6.21ms
     90%   11.83ms
     99%  77.38ms
  42664 requests in 10.04s, 16.24MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 12
Requests/sec:   4249.40
"""


def test_parse_wrk():
    parsed = parse_wrk(WRK_OUTPUT)
    assert parsed["requests"] == 42664 and parsed["seconds"] == 10.04 and parsed["non_2xx"] == 12
    assert parsed["ok_per_s"] == round((42664 - 12) / 10.04, 1)
    assert (parsed["p50_ms"], parsed["p99_ms"]) == (2.98, 77.38)
    assert parsed["timeouts"] == 3 and parsed["socket_errors"] == 2


def test_loadgen_counts_answers_by_status(file_store):
    from flts.dev.testing import running_server
    from flts.infer.app import create_app

    with running_server(create_app({"FLTS_OBJECT_DIR": str(file_store.root)}, file_store)) as url:
        port = int(url.rsplit(":", 1)[1])
        result = load("127.0.0.1", port, "/predict", [b"{}"], connections=4, duration=0.5)
        assert result.count(503) > 10 and result.count() == result.count(503)  # no model promoted: 503 each
        assert result.percentile_ms(99, 503) is not None and result.timeouts == 0
        assert httpx.get(url + "/healthz").status_code == 200

"""The `flts` command's own behaviour (the subcommands' work is tested with their modules)."""
from __future__ import annotations

import socket

import pytest

from flts import cli


def test_predict_names_an_unreachable_infer(lte_dir, capsys):
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = cli.main(["predict", str(lte_dir / "PobleSec_test.csv"), "--url", f"http://127.0.0.1:{port}", "--timeout", "2"])
    assert code == 1
    assert f"cannot reach http://127.0.0.1:{port}" in capsys.readouterr().err


def test_predict_refuses_a_csv_shorter_than_the_window(tmp_path):
    short = tmp_path / "short.csv"
    short.write_text("time,down\n2018-01-01 00:00:00,1\n")
    with pytest.raises(SystemExit, match="has 1 rows; the forecast needs 10"):
        cli.main(["predict", str(short), "--rows", "10"])


def test_predict_sends_the_history_the_served_model_asks_for(file_store, lte_dir, capsys):
    from flts.dev.testing import LTE_FEATURES, persistence_onnx, promote, running_server
    from flts.infer.app import create_app

    promote(file_store, persistence_onnx(12, len(LTE_FEATURES), 1, LTE_FEATURES.index("down")), input_seq_len=12,
            output_seq_len=1)
    with running_server(create_app({"FLTS_OBJECT_DIR": str(file_store.root)}, file_store)) as url:
        assert cli.main(["predict", str(lte_dir / "PobleSec_test.csv"), "--url", url]) == 0  # 12 rows, from /readyz
        assert '"predictions"' in capsys.readouterr().out
        with pytest.raises(SystemExit, match="has 3 rows; the forecast needs 12"):
            short = file_store.root.parent / "short.csv"
            short.write_text("time,down\n" + "".join(f"2018-01-01 00:0{i}:00,1\n" for i in range(3)))
            cli.main(["predict", str(short), "--url", url])


def test_every_subcommand_is_listed(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listed = capsys.readouterr().out
    for command in ("demo", "up", "down", "status", "upload", "predict", "bench", "deploy", "schemas"):
        assert command in listed

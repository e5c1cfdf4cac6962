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


@pytest.mark.parametrize(("argv", "message"), [
    (["predict", "{missing}"], "error: no such file: "),
    (["predict", "{csv}", "--url", "notaurl"], "error: --url must be an http:// or https:// URL, got 'notaurl'"),
    (["upload", "{missing}"], "error: no such file: "),
    (["upload", "{csv}", "--identifier", "../x"], "error: invalid identifier '../x'"),
    (["schemas", "--out", "{csv}/inside-a-file"], "error: [Errno 20] Not a directory"),
])
def test_input_errors_are_one_line_before_anything_connects(argv, message, tmp_path, monkeypatch, capsys):
    """No traceback, no waiting on a stack that is not up: the input is checked first."""
    csv = tmp_path / "s.csv"
    csv.write_text("time,down\n2018-01-01 00:00:00,1\n")
    monkeypatch.setenv("FLTS_STATE", str(tmp_path / "no-stack"))
    argv = [a.format(missing=tmp_path / "missing.csv", csv=csv) for a in argv]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err


def test_predict_names_a_bad_cell_and_a_missing_timestamp_column(tmp_path):
    from flts.dev.forecast import request_body

    rows = [{"time": "2018-01-01 00:00:00", "down": "1"}, {"time": "2018-01-01 00:02:00", "down": "n/a"}]
    with pytest.raises(SystemExit, match=r"column 'down', row 2 of those sent: 'n/a' is not a number"):
        request_body(rows, "time")
    with pytest.raises(SystemExit, match=r"no column 'ts' \(--timestamp-column\)"):
        request_body(rows, "ts")


def test_rows_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        cli.main(["predict", "x.csv", "--rows", "-3"])
    assert "must be a positive whole number, got '-3'" in capsys.readouterr().err


def test_a_flag_out_of_range_is_one_line(capsys):
    assert cli.main(["deploy", "render", "--kafka-replication", "0", "--check"]) == 2
    assert capsys.readouterr().err == "error: --kafka-replication must be at least 1, got 0\n"


def test_an_unknown_demo_dataset_lists_every_data_folder(tmp_path):
    with pytest.raises(SystemExit, match=r"no dataset 'nosuch' in .*bike.*lte \(known: \['Bike', 'ElBorn', 'PobleSec'\]\)"):
        cli.main(["demo", "--dataset", "nosuch", "--workdir", str(tmp_path)])

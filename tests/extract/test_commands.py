"""`swiftpipe extract` as a user runs it: the bad-input errors come before any model is loaded or any
server is asked. The engines are exercised in tests/integration/test_extract.py."""

from tests.helpers import free_port, run_cli, write_jsonl

# Input errors are found before anything connects: nothing listens on this port.
NO_SERVER = ("--base-url", f"http://127.0.0.1:{free_port()}/v1", "--recipe", "recipes/demo-cpu.yaml")


def test_cli_bad_input_names_file_and_row_and_creates_nothing(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}, {"body": "b"}])
    out = tmp_path / "out"
    done = run_cli("extract", str(src), "--out", str(out), *NO_SERVER)
    assert done.returncode == 2, done.stderr
    assert f"{src}:2: no 'text' key" in done.stderr and "--text-field" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
    csv_in = tmp_path / "in.csv"
    csv_in.write_text("content\nhello\n", encoding="utf-8")
    done = run_cli("extract", str(csv_in), "--out", str(out), *NO_SERVER)
    assert done.returncode == 2 and f"{csv_in}: no column 'text'" in done.stderr
    done = run_cli("extract", str(csv_in), "--out", str(out), "--text-field", "content", "--engine", "offline",
                   "--recipe", "recipes/demo-cpu.yaml")
    assert done.returncode == 1 and "needs --model" in done.stderr
    done = run_cli("extract", str(tmp_path / "missing.jsonl"), "--out", str(out), *NO_SERVER)
    assert done.returncode == 2 and "no such file or directory" in done.stderr and not out.exists()


def test_cli_refuses_an_output_of_another_extraction(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    done = run_cli("extract", str(src), "--out", str(out), *NO_SERVER)
    assert done.returncode == 1 and "is not a `swiftpipe extract` output" in done.stderr
    assert (out / "mine.txt").read_text() == "keep me"


def test_cli_unwritable_out_is_a_message_not_a_traceback(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    done = run_cli("extract", str(src), "--out", str(blocker / "out"), *NO_SERVER)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and f"{blocker / 'out'}: Not a directory" in done.stderr


def test_cli_dtype_is_checked_and_is_for_the_engines_that_load_the_model(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    done = run_cli("extract", str(src), "--out", str(tmp_path / "out"), "--dtype", "float64", *NO_SERVER)
    assert done.returncode == 2 and "'float64' is not one of 'auto', 'bfloat16', 'float16', 'float32'" in done.stderr
    done = run_cli("extract", str(src), "--out", str(tmp_path / "out"), "--dtype", "float32", *NO_SERVER)
    assert done.returncode == 1 and "--dtype is for the offline and ray engines" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()

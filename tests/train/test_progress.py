"""The sft progress view: reads ms-swift's logging.jsonl as it grows, and never stops a stage."""

import io
import json

from swiftpipe.train.progress import SftProgress


def test_progress_reads_only_complete_new_lines(tmp_path):
    log = tmp_path / "logging.jsonl"
    out = io.StringIO()
    progress = SftProgress(log, out=out)
    progress()  # no file yet: nothing
    entry = {"loss": 2.5, "global_step/max_steps": "10/40", "elapsed_time": "3s", "remaining_time": "9s"}
    log.write_text(json.dumps(entry) + "\n" + '{"loss": 1.0, "global_step/max', encoding="utf-8")
    progress()
    assert out.getvalue() == "  sft 10/40 (25%)  loss 2.5000  elapsed 3s  eta 9s\n"
    with open(log, "a", encoding="utf-8") as f:
        f.write('_steps": "20/40"}\n{"train_runtime": 1}\n')
    progress()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[1].startswith("  sft 20/40 (50%)  loss 1.0000")


def test_progress_view_never_raises_on_a_malformed_log(tmp_path):
    log = tmp_path / "logging.jsonl"
    out = io.StringIO()
    progress = SftProgress(log, out=out)
    log.write_text('{"loss": "nan?", "global_step/max_steps": "1/4"}\n'
                   '{"loss": null, "global_step/max_steps": "2/4"}\n'
                   '{"loss": 1.5, "global_step/max_steps": 7}\n'
                   '["not", "a", "dict"]\n{"loss": 1.25, "global_step/max_steps": "3/4"}\n{"loss": 1.0, "glo',
                   encoding="utf-8")
    progress()  # must not raise
    assert out.getvalue().splitlines() == ["  sft 7/ (0%)  loss 1.5000  elapsed ?  eta ?",
                                           "  sft 3/4 (75%)  loss 1.2500  elapsed ?  eta ?"]

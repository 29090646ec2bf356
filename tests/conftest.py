"""Fixtures shared by the whole suite; helpers (ports, processes, waits, the CLI) are in tests/helpers.py."""

import subprocess

import pytest

from tests.helpers import REPO, child_env, skip_or_fail, start_scripted_upstream, stop_group, swiftpipe_cmd


@pytest.fixture
def write_recipe(tmp_path):
    def write(text: str, name: str = "recipe.yaml"):
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The tiny Qwen3, built once per test session through the real CLI."""
    out = tmp_path_factory.mktemp("models") / "tiny-qwen3"
    subprocess.run([*swiftpipe_cmd(), "tiny-model", str(out)], check=True, cwd=REPO, env=child_env(),
                   capture_output=True)
    return out


@pytest.fixture(scope="session")
def qwen_tokenizers(tmp_path_factory) -> dict:
    """Qwen's real tokenizer and configs (no weights) for each true size, built once per session
    from dashscope's ranks file (~10 s): {size name: directory}. Each directory is named like its
    hub model (`Qwen3-0.6B`, `Qwen2.5-0.5B-Instruct`), so ms-swift picks the model type and template
    for it by itself, as it does for the hub id."""
    from swiftpipe.train import qwen_tokenizer
    from swiftpipe.train.tiny_model import TRUE_SIZES, build_true_size_model

    try:
        ranks = qwen_tokenizer.load_ranks()
    except qwen_tokenizer.QwenVocabError as exc:
        skip_or_fail(str(exc))
    model = qwen_tokenizer.bpe_model(ranks)
    root = tmp_path_factory.mktemp("qwen")
    return {name: build_true_size_model(root / spec.hub_id.split("/")[-1], name, weights=False, tokenizer_model=model)
            for name, spec in TRUE_SIZES.items()}


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, tiny_model_dir):
    """`swiftpipe run recipes/demo-cpu.yaml` for real: LoRA → merge → serve → eval → base eval → report.
    Once per session: the serving, evaluation, extraction and gateway tests all use its merged model."""
    root = tmp_path_factory.mktemp("runs")
    out = subprocess.run(
        [*swiftpipe_cmd(), "run", "recipes/demo-cpu.yaml", f"output.root={root}", f"model.id={tiny_model_dir}",
         "--run-id", "full"],
        capture_output=True, text=True, cwd=REPO, env=child_env(), timeout=1500)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return root / "demo-cpu" / "full", out


@pytest.fixture
def scripted(tmp_path):
    """A scripted OpenAI-compatible upstream (bench/scripted_upstream.py) as a real HTTP server: its /v1 URL."""
    proc, url = start_scripted_upstream(tmp_path / "upstream.log")
    try:
        yield url
    finally:
        stop_group(proc)


@pytest.fixture(scope="session")
def demo_server(demo_run, tmp_path_factory):
    """One real vLLM server (swiftpipe's launcher) of the demo's fine-tuned model for the whole
    session, served as "demo": the evaluator, extract's server engine, teacher labelling and the
    gateway's upstream tests ask it. It serves the model through a link of its own, so that checks
    for processes a run left behind (which look for the run directory) do not see it."""
    from swiftpipe.core.vllm_server import ServeTarget, VllmServer
    from swiftpipe.recipe.schema import ServeSection

    run, _ = demo_run
    link = tmp_path_factory.mktemp("demo-server") / "model"
    link.symlink_to(run / "merged", target_is_directory=True)
    target = ServeTarget(model_dir=str(link), served_name="demo", max_model_len=1024, cpu=True)
    with VllmServer(target, link.parent / "vllm.log", settings=ServeSection(startup_timeout=300)) as server:
        yield server
    assert server.proc is None

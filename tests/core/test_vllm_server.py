"""The vLLM server: its command line and environment, refusals before it starts."""

import socket

import pytest

from swiftpipe.core.vllm_server import ServeTarget, VllmServer, VllmServerError, port_in_use, render_serve
from swiftpipe.recipe.derived import serve_target
from swiftpipe.recipe.schema import ServeSection
from tests.helpers import REPO


def test_cpu_command_and_env():
    cmd = render_serve(ServeTarget(model_dir="/m", served_name="demo", max_model_len=768, cpu=True), ServeSection(), 8123)
    argv = cmd.argv
    assert argv[:3] == ["vllm", "serve", "/m"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--port") + 1] == "8123"
    assert argv[argv.index("--served-model-name") + 1] == "demo"
    assert argv[argv.index("--generation-config") + 1] == "vllm"
    assert argv[argv.index("--max-model-len") + 1] == "768"
    assert '"disable_any_whitespace": true' in argv[argv.index("--structured-outputs-config") + 1]
    assert "--enforce-eager" in argv and "--gpu-memory-utilization" not in argv
    assert cmd.env["CUDA_VISIBLE_DEVICES"] == "" and cmd.env["HF_HUB_OFFLINE"] == "1"
    assert not any("key" in a.lower() for a in argv)  # the key travels in the environment only


def test_gpu_command_takes_recipe_settings(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    target = ServeTarget(model_dir="Qwen/Qwen3-0.6B", served_name="q", visible_devices="2,3", hub="modelscope")
    settings = ServeSection(gpu_memory_utilization=0.5, tensor_parallel_size=2,
                            extra_args={"enable-prefix-caching": True, "max-num-seqs": 64})
    cmd = render_serve(target, settings, 9000)
    argv = cmd.argv
    assert argv[argv.index("--gpu-memory-utilization") + 1] == "0.5"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert "--enable-prefix-caching" in argv and argv[argv.index("--max-num-seqs") + 1] == "64"
    assert "--enforce-eager" not in argv
    assert cmd.env["CUDA_VISIBLE_DEVICES"] == "2,3" and cmd.env["VLLM_USE_MODELSCOPE"] == "True"


def test_missing_model_dir_fails_before_starting(tmp_path):
    server = VllmServer(ServeTarget(model_dir=str(tmp_path / "nope"), served_name="x"), tmp_path / "s.log",
                        settings=ServeSection())
    with pytest.raises(VllmServerError, match="does not exist"):
        server.start()
    assert server.proc is None


def test_taken_port_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
        server = VllmServer(ServeTarget(model_dir=str(tmp_path), served_name="x"), tmp_path / "s.log",
                            settings=ServeSection(port=port))
        with pytest.raises(VllmServerError, match=f"port {port} on 127.0.0.1 is already in use"):
            server.start()
    assert not port_in_use("127.0.0.1", port)  # free again once its socket is closed


def test_tensor_and_data_parallel_flags_on_gpu():
    from swiftpipe.recipe.load import load_recipe
    recipe = load_recipe(REPO / "recipes" / "address-qwen3-0.6b.yaml",
                         ["serve.tensor_parallel_size=2", "serve.data_parallel_size=4"]).recipe
    argv = render_serve(serve_target(recipe, "/m", served_name="x", cpu=False), recipe.serve, 8000).argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--data-parallel-size") + 1] == "4"
    plain = load_recipe(REPO / "recipes" / "address-qwen3-0.6b.yaml").recipe
    single = render_serve(serve_target(plain, "/m", served_name="x", cpu=False), plain.serve, 8000).argv
    assert "--data-parallel-size" not in single


def test_a_port_left_in_time_wait_counts_as_free():
    """A killed server's connections linger in TIME-WAIT: a restart must bind at once (SO_REUSEADDR)."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server side closes first: its end of the connection waits in TIME-WAIT
        client.close()
    assert not port_in_use("127.0.0.1", port)

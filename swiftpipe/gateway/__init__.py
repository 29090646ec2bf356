"""The extraction gateway: `swiftpipe serve` puts it in front of one vLLM server per version.

- `service.py`: the `serve` command (starts vLLM servers and the gateway, stops them);
- `app.py`: the HTTP API (FastAPI): /v1/extract, /v1/chat/completions, /v1/models, /health, /metrics;
- `upstream.py`: the versions and the HTTP calls to them (retries, limits on what comes back);
- `store.py`: the SQLite file: request log (group commit), keys, versions, events;
- `keys.py`, `rollout.py`: API keys and rate limits; traffic weights and sticky routing;
- `metrics.py`: Prometheus metrics; `report.py`: `swiftpipe requests`; `commands.py`: `keys`, `rollout`.
The checks of an answer (flags) live in `swiftpipe.task.flags`, shared with batch extraction.
"""

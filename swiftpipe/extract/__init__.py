"""Batch extraction (`swiftpipe extract`): a tuned model over many texts, resumable, on vLLM's
offline engine, on OpenAI-compatible servers, or on Ray Data across machines.

- `inputs`: the input files, checked and cut into chunks with stable ids;
- `engines`: the offline (vLLM in-process) and server engines;
- `on_ray`: the offline engine in Ray Data actors;
- `job`: one chunk in, one part out; the output directory, progress and summary;
- `parts`: the part files (Parquet or JSONL), written atomically;
- `command`: the command itself.
"""

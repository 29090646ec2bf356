"""A command line to run: argv plus its environment, rendered as one quoted shell line.

What `swiftpipe render` prints and `commands.sh` keeps (`swift sft`, `swift export`), and what a
server is started with (`vllm serve`): pure, no heavy imports.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class Command:
    stage: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    prelude: list[str] = field(default_factory=list)  # shell lines run before, in commands.sh
    skip_if_exists: Optional[str] = None  # the command is skipped when this path exists

    def shell(self) -> str:
        """One shell line: `VAR=value ... argv`, each piece quoted."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        line = f"{env} {' '.join(_quote_arg(a) for a in self.argv)}".strip()
        if self.skip_if_exists:
            line = f"[ -e {shlex.quote(self.skip_if_exists)} ] || {line}"
        return "\n".join(self.prelude + [line])


def _quote_arg(arg: str) -> str:
    # Leave "$LAST_CHECKPOINT"-style references expandable in the shell script.
    if arg.startswith('"$') and arg.endswith('"'):
        return arg
    return shlex.quote(arg)


def _flag_value(value: Any) -> list[str]:
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if isinstance(value, dict):
        return [json.dumps(value, ensure_ascii=False)]
    return [str(value)]


def cli_flags(pairs: dict[str, Any]) -> list[str]:
    """`{"lora_rank": 8, "dataset": [a, b]}` → `--lora_rank 8 --dataset a b` (None values left out)."""
    argv: list[str] = []
    for name, value in pairs.items():
        if value is None:
            continue
        argv += [f"--{name}", *_flag_value(value)]
    return argv

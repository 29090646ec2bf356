"""Model hubs (ModelScope, Hugging Face): `swiftpipe download`, the cache check and the
reachability check before training, and recognising a hub failure in a stage's log.

A machine that cannot reach the hub should learn it in seconds, in one line that names the hub and
the model and the ways out — not after swift's start-up, from forty lines of traceback.
"""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from swiftpipe.core import console
from swiftpipe.core.errors import SwiftpipeError

HUB_NAMES = {"modelscope": "ModelScope", "huggingface": "Hugging Face"}

# What a name-resolution / connection / timeout failure looks like in requests, urllib3, httpx and
# the hub libraries' tracebacks.
NETWORK_FAILURE = re.compile(
    r"NameResolutionError|Temporary failure in name resolution|Name or service not known|"
    r"nodename nor servname|getaddrinfo failed|Failed to resolve|No address associated with hostname|"
    r"Connection refused|ConnectionRefusedError|Max retries exceeded|ConnectTimeout|ConnectTimeoutError|"
    r"Network is unreachable|LocalEntryNotFoundError|OfflineModeIsEnabled",
)
HUB_MENTION = re.compile(r"modelscope|huggingface|hf_hub|snapshot_download", re.IGNORECASE)


class HubError(SwiftpipeError):
    pass


def endpoint(hub: str) -> str:
    """The hub's base URL, as its own library resolves it (MODELSCOPE_DOMAIN, HF_ENDPOINT honoured)."""
    if hub == "huggingface":
        from huggingface_hub import constants

        return constants.ENDPOINT
    try:  # modelscope >= 1.3x downloads through modelscope_hub (MODELSCOPE_ENDPOINT, then MODELSCOPE_DOMAIN)
        from modelscope_hub.config import HubConfig

        return str(HubConfig().endpoint)
    except ImportError:
        from modelscope.hub.utils.utils import get_endpoint

        return get_endpoint()


def is_cached(model_id: str, hub: str) -> bool:
    """Whether the hub library finds the model in its local cache (no network)."""
    try:
        if hub == "huggingface":
            import huggingface_hub

            path = huggingface_hub.snapshot_download(model_id, local_files_only=True)
        else:
            import modelscope

            path = modelscope.snapshot_download(model_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - "not cached" comes as several exception types
        return False
    return (Path(path) / "config.json").is_file()


def unreachable_reason(url: str, timeout: float = 5.0) -> Optional[str]:
    """None when `url` answers at all (any HTTP status); else what went wrong, in words."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except urllib.error.URLError as exc:
        reason = exc.reason
    except (OSError, ValueError) as exc:
        reason = exc
    if isinstance(reason, socket.gaierror):
        return "name resolution failed"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return f"no answer within {timeout:.0f} s"
    return str(reason)


def ways_out(model_id: str) -> str:
    return (f"ways out: give this machine network access to the hub; or run `swiftpipe download RECIPE` "
            f"(or `modelscope download --model {model_id} --local_dir DIR`) on a connected machine, copy DIR "
            f"here and set model.id=DIR offline=true")


def check_reachable(model_id: str, hub: str) -> None:
    """Before training from a hub id that is not cached: fail in seconds when the hub is unreachable."""
    if is_cached(model_id, hub):
        return
    url = endpoint(hub)
    reason = unreachable_reason(url)
    if reason:
        raise HubError(f"cannot reach {HUB_NAMES[hub]} ({url}: {reason}) to download {model_id}, which is not in "
                       f"the local cache; {ways_out(model_id)}")


def failure_in_log(log_text: str) -> bool:
    """Whether a failed stage's log shows the hub could not be reached."""
    return bool(NETWORK_FAILURE.search(log_text) and HUB_MENTION.search(log_text))


def explain_failure(stage: str, model_id: str, hub: str, log_path: Path) -> str:
    return (f"stage '{stage}' failed because {HUB_NAMES.get(hub, hub)} could not be reached to fetch {model_id} "
            f"(full log: {log_path}); {ways_out(model_id)}")


# ---------------------------------------------------------------- `swiftpipe download`


def download(loaded) -> None:
    """Fetch model.id into the hub's cache, where ms-swift and vLLM look for it."""
    model = loaded.recipe.model
    if model.is_local:
        console.say(f"model.id {model.id} is a local path: nothing to download")
        return
    if loaded.recipe.offline:
        raise HubError(f"offline is set: cannot download {model.id}; set offline=false or use a local copy")
    try:
        if model.hub == "huggingface":
            import huggingface_hub

            path = huggingface_hub.snapshot_download(model.id)
        else:
            import modelscope

            path = modelscope.snapshot_download(model.id)
    except Exception as exc:  # noqa: BLE001 - network / auth / not-found errors come in many types
        raise HubError(f"cannot download {model.id} from {HUB_NAMES[model.hub]}: {str(exc)[:300]}. Check the network "
                       f"and the id, or set model.hub to the other hub") from None
    console.say(f"{model.id} downloaded to {path}")

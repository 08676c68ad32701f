"""Reaching the Hugging Face Hub, or failing at once when it cannot be reached.

Without a network, transformers and datasets retry each request five times with back-off
(about 25 s and a dozen "Retrying in 8s" lines per file) before failing. segtune asks once,
with a short connection attempt, before the first Hub download: when the Hub cannot be
reached it switches the libraries to offline mode (their caches still serve what was
downloaded before) and, for anything not in the cache, stops with one line that names the
offline choices.
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from .errors import SegtuneError

CONNECT_TIMEOUT = 3.0  # seconds; a reachable Hub answers a TCP connection far sooner


def is_hub_name(name: str | os.PathLike) -> bool:
    """A Hub id ("nvidia/mit-b0", "scene_parse_150") rather than a local file or folder."""
    text = str(name)
    return not Path(text).exists() and not text.startswith(("/", ".", "~"))


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether a TCP connection to the Hub's endpoint opens within CONNECT_TIMEOUT (asked once a process)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=CONNECT_TIMEOUT).close()
        return True
    except OSError:
        return False


def go_offline() -> None:
    """The libraries' own offline mode, for this process: cached files only, no retries."""
    import sys

    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True  # read at each call by huggingface_hub and transformers
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True


def _cached(name: str, repo_type: str) -> bool:
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{name.replace('/', '--')}"
    return (folder / "snapshots").is_dir() and any((folder / "snapshots").iterdir())


OFFLINE_CHOICES = {
    "model": "offline, use --model mit-b0 ... mit-b5, upernet-convnext-tiny, mobilevit-small ... (docs/models.md: "
             "a model from its config, random weights) or a local model folder",
    "dataset": "offline, use a local dataset folder, YAML data file, save_to_disk folder or parquet files",
}


def check_hub(name: str | os.PathLike, repo_type: str = "model") -> None:
    """Before loading `name`: nothing to do for a local path or a reachable Hub; else offline mode, and
    a one-line SegtuneError at once when the cache does not hold it either."""
    name = str(name)
    if not is_hub_name(name) or hub_reachable():
        return
    go_offline()
    if not _cached(name, repo_type):
        raise SegtuneError(f"{name}: the Hugging Face Hub cannot be reached and this {repo_type} is not in the "
                           f"local cache; {OFFLINE_CHOICES[repo_type]} (set HF_HUB_OFFLINE=1 to use cached files "
                           "without trying the network)")

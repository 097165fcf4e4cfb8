"""Hub lookups without a network fail in about a second, not after a minute of retries.

huggingface_hub retries a request that fails five times with backoff (about 23 s), and
transformers and datasets make several requests per model or dataset. Once a request
cannot even connect (no DNS, no route to the hub), opdctl turns on huggingface_hub's own
offline mode for the rest of the process: the retry and every later lookup then fail at
once, or are answered from the local cache, with the libraries' own messages.
"""

from __future__ import annotations

from typing import Any


def fail_fast_offline() -> None:
    """Give huggingface_hub a client that switches it to offline mode on the first connection failure."""
    try:
        import httpx2
        from huggingface_hub import set_client_factory
        from huggingface_hub.utils._http import default_client_factory
    except ImportError:  # another huggingface_hub HTTP stack: keep its own behaviour
        return

    class OfflineOnConnectError(httpx2.BaseTransport):
        def __init__(self, inner: httpx2.BaseTransport) -> None:
            self.inner = inner

        def handle_request(self, request: Any) -> Any:
            try:
                return self.inner.handle_request(request)
            except httpx2.ConnectError:
                go_offline()
                raise

        def close(self) -> None:
            self.inner.close()

    def client() -> Any:
        made = default_client_factory()  # the hub's own client (its hooks, redirects, proxies from the environment)
        made._transport = OfflineOnConnectError(made._transport)
        return made

    set_client_factory(client)


def go_offline() -> None:
    """huggingface_hub's (and datasets') offline mode, as HF_HUB_OFFLINE=1 would set it."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config
    except ImportError:
        return
    datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True

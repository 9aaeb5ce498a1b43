"""Server-side token counting with tiktoken, one encoding per pool, loaded at start-up.

tiktoken downloads an encoding file the first time it is used and caches it (set
``TIKTOKEN_CACHE_DIR`` to pre-seeded files to run offline, as the Docker image and tests do).
Loading takes 0.1-0.3 s per encoding, so it happens once, never on a request.
"""

from __future__ import annotations

import tiktoken

from ._config import Settings


class TokenCounter:
    def __init__(self, settings: Settings) -> None:
        names = {pool.encoding for pool in settings.pools}
        encodings = {name: tiktoken.get_encoding(name) for name in sorted(names)}
        self._by_pool = {pool.name: encodings[pool.encoding] for pool in settings.pools}

    def count(self, pool: str, text: str) -> int:
        # Special-token text (e.g. "<|endoftext|>") in a prompt is counted as plain text,
        # which is how providers bill user content.
        return len(self._by_pool[pool].encode(text, disallowed_special=()))

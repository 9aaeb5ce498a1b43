"""Server-side token counting with tiktoken, one encoding per pool, loaded at start-up.

tiktoken downloads an encoding file the first time it is used and caches it (set
``TIKTOKEN_CACHE_DIR`` to pre-seeded files to run offline, as the Docker image and tests do).
Loading takes 0.1-0.3 s per encoding, so it happens once, never on a request.
"""

from __future__ import annotations

import tiktoken

from ._config import Settings

_PIECE = 100_000  # characters: far below the ~1M where tiktoken's regex gives up


class TokenCounter:
    def __init__(self, settings: Settings) -> None:
        names = {pool.encoding for pool in settings.pools}
        encodings = {name: tiktoken.get_encoding(name) for name in sorted(names)}
        self._by_pool = {pool.name: encodings[pool.encoding] for pool in settings.pools}

    def count(self, pool: str, text: str) -> int:
        # Special-token text (e.g. "<|endoftext|>") in a prompt is counted as plain text,
        # which is how providers bill user content.
        encoding = self._by_pool[pool]
        try:
            return len(encoding.encode(text, disallowed_special=()))
        except ValueError:
            # tiktoken's regex overflows its backtracking stack on a whitespace run of about
            # 1M characters (o200k_base); count such a prompt in pieces. A piece boundary may
            # split a word into more tokens, so the count errs high, as a reservation should.
            return sum(
                len(encoding.encode(text[i : i + _PIECE], disallowed_special=()))
                for i in range(0, len(text), _PIECE)
            )

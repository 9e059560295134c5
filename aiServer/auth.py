"""Token authentication: constant-time checks against the configured tokens."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path

from util.config import AuthConfig, ConfigError, resolve_path


class TokenAuth:
    """The set of accepted tokens. Tokens are never logged or echoed."""

    def __init__(self, tokens: Iterable[str], max_failures: int = 3) -> None:
        self._tokens = [t.encode() for t in tokens if t]
        self.max_failures = max_failures

    @property
    def required(self) -> bool:
        """Whether clients must authenticate (some token is configured)."""
        return bool(self._tokens)

    def check(self, token: str) -> bool:
        """Whether ``token`` is accepted; compares with every token in constant time."""
        candidate = token.encode()
        matched = False
        for accepted in self._tokens:
            matched |= hmac.compare_digest(candidate, accepted)
        return matched

    @classmethod
    def from_config(cls, config: AuthConfig) -> TokenAuth:
        """Tokens from ``auth.tokens`` plus ``auth.token_file`` (one per line, # comments)."""
        tokens = list(config.tokens)
        if config.token_file:
            path = resolve_path(config.token_file)
            tokens.extend(read_token_file(path))
        return cls(tokens, config.max_failures)


def read_token_file(path: Path) -> list[str]:
    """The non-empty, non-comment lines of a token file."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(
            f"cannot read token file {path}: {exc.strerror}", "auth.token_file"
        ) from None
    tokens = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise ConfigError(f"token file {path} holds no token", "auth.token_file")
    return tokens

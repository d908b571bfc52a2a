"""Providers behind one interface: OpenAI-compatible HTTP and the embedded model."""

from __future__ import annotations

from webapp.config import Config
from webapp.providers.base import (
    Final,
    GenerationRequest,
    Provider,
    ProviderInfo,
    UpstreamStream,
)

__all__ = [
    "Final",
    "GenerationRequest",
    "Provider",
    "ProviderInfo",
    "UpstreamStream",
    "build_provider",
]


def build_provider(config: Config) -> Provider:
    if config.resolved_provider == "local":
        from webapp.providers.local import LocalProvider

        return LocalProvider(config)
    from webapp.providers.openai import OpenAIProvider

    return OpenAIProvider(config)

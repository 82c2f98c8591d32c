"""Forecast engines behind one interface (`base.Engine`), chosen per deployment: the deployment's
model name is the engine's name (forecasts/catalogue.py registers each engine as a model)."""

from __future__ import annotations

from forecasts.engines.base import Cancelled, Engine, EngineError


def engines() -> list[Engine]:
    """Every engine this console has, available or not (each says why not)."""
    from forecasts.engines.pangu import PanguEngine
    from forecasts.engines.spectral import SpectralEngine

    # The built-in engine first: the forecast page uses the first running scientific deployment.
    return [SpectralEngine(), PanguEngine()]


def get_engine(name: str) -> Engine | None:
    return next((engine for engine in engines() if engine.name == name), None)


__all__ = ["Cancelled", "Engine", "EngineError", "engines", "get_engine"]

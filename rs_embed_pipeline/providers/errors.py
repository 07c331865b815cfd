"""The providers' one error class (its own module: :mod:`.base` and :mod:`.sensor_options` both raise it)."""

from __future__ import annotations


class ProviderError(RuntimeError):
    """A provider was misconfigured or asked for something it cannot serve."""

"""Model builders of the papers' architectures."""

__all__ = []

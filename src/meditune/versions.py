"""Versions of Python, meditune and the libraries that shape results (stage manifests, model cards)."""

from __future__ import annotations

import importlib.metadata
import platform

from meditune import __version__

VERSIONED_PACKAGES = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "sentence-transformers"]


def package_versions() -> dict[str, str]:
    """Versions of Python, meditune and the installed libraries of VERSIONED_PACKAGES."""
    out = {"python": platform.python_version(), "meditune": __version__}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out

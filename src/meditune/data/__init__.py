"""Data layer: loaders for medical benchmark formats by name, `load_source(spec)`, export, stats and overlap.

    from meditune.data import load_source
    items = load_source("medqa_us:path/to/US/dev.jsonl")      # list[MCQItem]
    items = load_source("sample:mcq")                          # bundled sample data
    prefs = load_source("hub:trl-lib/ultrafeedback_binarized:test")
"""

from meditune.data.registry import LOADERS, Loader, load_source, loaders, parse_spec

__all__ = ["LOADERS", "Loader", "load_source", "loaders", "parse_spec"]

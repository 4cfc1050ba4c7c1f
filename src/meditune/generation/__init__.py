"""Generation backends (transformers, vLLM, OpenAI-compatible HTTP) behind one interface; see base.py."""

from meditune.generation.base import Backend, BackendConfig, Generation, GenerationRequest, SamplingParams, ScriptedBackend

__all__ = ["Backend", "BackendConfig", "Generation", "GenerationRequest", "SamplingParams", "ScriptedBackend"]

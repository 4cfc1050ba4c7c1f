"""Generation backends (transformers, vLLM, OpenAI-compatible HTTP) behind one interface; see base.py.

    from meditune.generation import BackendConfig, GenerationRequest, SamplingParams, make_backend
    backend = make_backend(BackendConfig(model="default", batch_size=16))
    gens = backend.generate([GenerationRequest("q1", [{"role": "user", "content": "..."}], SamplingParams(n=4))])
"""

from meditune.generation.base import (
    Backend,
    BackendConfig,
    Generation,
    GenerationRequest,
    SamplingParams,
    ScriptedBackend,
)
from meditune.generation.factory import make_backend

__all__ = ["Backend", "BackendConfig", "Generation", "GenerationRequest", "SamplingParams", "ScriptedBackend",
           "make_backend"]

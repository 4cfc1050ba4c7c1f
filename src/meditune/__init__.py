"""meditune: build safer, more accurate medical LLMs and prove what each step did."""

__version__ = "0.1.0"

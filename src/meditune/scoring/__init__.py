"""Scorers: one interface (meditune.scoring.base.Scorer), built by name from a config (registry.build_scorer)."""

from meditune.scoring.base import Score, ScoreInput, Scorer
from meditune.scoring.registry import SCORERS, build_scorer

__all__ = ["SCORERS", "Score", "ScoreInput", "Scorer", "build_scorer"]

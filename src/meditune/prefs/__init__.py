"""Automated preference data: collection -> scores -> pairs -> datacard; the `prefs` stage (prefs/stage.py)."""

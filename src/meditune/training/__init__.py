"""Training stages over TRL + PEFT: cpt, sft, dpo, orpo, rm, rs, idpo (registered in training/stage.py)."""

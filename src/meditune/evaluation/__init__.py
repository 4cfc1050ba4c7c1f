"""Evaluation: multiple choice, inference strategies, open QA, NER, safety, bias, toxicity."""

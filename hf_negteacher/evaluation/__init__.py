"""Evaluation: perplexity (built-in and lm-eval), generated-answer quality, held-out preference accuracy,
paired statistics, and the report (table, JSON, chart, model-card entries, comparison)."""

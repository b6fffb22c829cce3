"""Datasets, prompts, tokenizers and the batch layout shared by every method."""

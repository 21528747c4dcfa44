"""Prompt templates shipped with salmonn (installed as ``salmonn.prompt_data``)."""

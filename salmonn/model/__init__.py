"""The model: the encoders, the window-level Q-Former, the LLM with LoRA, generation and its KV cache,
:class:`SalmonnModel`, checkpoints and on-disk formats, memory capacity, and the tiny-model writer.

Sub-modules are imported by their own names; this package imports nothing, so that a light module
(``formats``, ``devices``) does not pull torch's heavier users in.
"""

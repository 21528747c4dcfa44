"""Where components come from: the released presets, the Hugging Face cache and downloads, and
:func:`load_model`, which resolves the four components and builds the model from them.
"""

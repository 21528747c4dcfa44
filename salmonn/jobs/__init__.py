"""Jobs over many inputs: tasks and prompt templates, the batching engine and its batchers, the
whole-recording summary pass, records and writers.
"""

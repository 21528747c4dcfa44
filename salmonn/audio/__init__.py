"""Audio in: inputs to an ordered list, ffmpeg decoding to 16 kHz mono float32, chunks of at most 30 s,
the background prefetcher, and the two encoders' front ends (log-mel, fbank). No model weights here.
"""

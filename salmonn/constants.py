"""Audio and model constants of SALMONN v1, each named once; derived values are computed, not typed."""

SAMPLE_RATE = 16_000  # Hz; SALMONN's only input rate
WINDOW_SECONDS = 30  # one model input: Whisper's fixed 30 s window
WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_SECONDS  # 480_000 samples
MIN_SECONDS = 1  # the original zero-pads shorter clips to 1 s
MIN_SAMPLES = SAMPLE_RATE * MIN_SECONDS

# Whisper log-mel front end (see docs/original-model.md, "Audio front end")
WHISPER_N_FFT = 400  # samples (25 ms)
WHISPER_HOP = 160  # samples (10 ms)
WHISPER_N_MELS = 80
WHISPER_MEL_FRAMES = WINDOW_SAMPLES // WHISPER_HOP  # 3000 mel frames per window
WHISPER_ENCODER_FRAMES = WHISPER_MEL_FRAMES // 2  # 1500 encoder frames (20 ms each), conv2 stride 2

# BEATs Kaldi fbank (see docs/original-model.md, "BEATs encoder")
BEATS_MEL_BINS = 128
BEATS_FRAME_LENGTH = 400  # samples (25 ms)
BEATS_FRAME_SHIFT = 160  # samples (10 ms)
BEATS_FFT_SIZE = 512
BEATS_FBANK_MEAN = 15.41663
BEATS_FBANK_STD = 6.55582
BEATS_PATCH = 16  # 16x16 fbank patches

# Window-level Q-Former (see docs/original-model.md, "Q-Former and windows"): 0.333333 s windows in the "1500 frames per 30 s" convention
QFORMER_WINDOW_SECONDS = 0.333333
QFORMER_WINDOW_FRAMES = round(
    WHISPER_ENCODER_FRAMES * QFORMER_WINDOW_SECONDS / WINDOW_SECONDS
)  # 17
QFORMER_N_WINDOWS = (
    WHISPER_ENCODER_FRAMES - QFORMER_WINDOW_FRAMES
) // QFORMER_WINDOW_FRAMES + 1  # 88
QFORMER_HEAD_DIM = 64
AUDIO_TOKENS = QFORMER_N_WINDOWS  # one query per window -> 88 vectors fed to the LLM

# Prompt wrapping (see docs/original-model.md, "Prompt and LLM")
SPEECH_PLACEHOLDER = "<SpeechHere>"
SPEECH_PREFIX = "<Speech><SpeechHere></Speech> "
PROMPT_TEMPLATE = "USER: {}\nASSISTANT:"
PAD_TOKEN = "[PAD]"

# Default LoRA scaling: lora_alpha 32 / r 8; the official 7B demo uses 3.0 (docs/original-model.md,
# "Prompt and LLM").
DEFAULT_LORA_SCALING = 4.0

# The four files or folders a SALMONN model is loaded from
COMPONENTS = ("whisper", "beats", "llm", "checkpoint")
# LLM dtypes by name, and the other names load_model accepts for them (it also takes torch dtypes)
DTYPE_NAMES = ("float32", "float16", "bfloat16")
DTYPE_ALIASES = {
    "fp32": "float32",
    "float": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
}
# The input name that means "read standard input"
STDIN = "-"

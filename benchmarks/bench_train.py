"""Training speed: examples/s and peak memory, default mode vs the original-style (exact) mode.

The model is ``decode_heavy_model`` (the tiny encoders and Q-Former before a random 8 x 1024 LLaMA
with LoRA, float32 on the CPU). Each timed step is a full optimizer step: forward, backward, AdamW; the modes' steps are
interleaved, so a change of the machine's load hits them alike. Peak memory is measured for each
mode in its own process (the high-water mark of one step, after a first one made the optimizer
state).
Modes:

* ``original``: the original's batch (``exact`` arithmetic) with the original's loss computation:
  logits over the whole vocabulary at every position (``labels=`` of the LLM), encoders every step;
* ``exact``: ``training_loss(exact=True)`` (the same batch; logits only at target positions);
* ``default e1``: the default mode in its first epoch (encoders run, their outputs kept);
* ``default e2+``: the default mode from the second epoch on (the encoders' outputs reused).

It prints the ratio of ``default e2+`` to ``original`` and to ``exact`` examples/s, and the load
average (the machine is shared: rerun on an idle one for figures to quote).

    python benchmarks/bench_train.py --batch-sizes 1 8 --steps 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _common import write_clips  # noqa: E402
from _models import decode_heavy_model  # noqa: E402

TARGET = "A dog barks twice while a car passes by and somebody laughs in the distance."


def _original_loss(model, examples) -> torch.Tensor:
    """The original trainer's loss: exact batch, full-vocabulary logits, the LLM's own CE."""
    from salmonn.train.exact import exact_rows
    from salmonn.train.examples import load_wave
    from salmonn.train.loss import _encoder_outputs, _pieces, audio_embeddings, prepare_wave

    waves = [prepare_wave(load_wave(e.audio)) for e in examples]
    whisper, beats = _encoder_outputs(model, waves, exact=True)
    audio = audio_embeddings(model, whisper, beats)
    tok = model.tokenizer
    embeds, mask, positions, labels = exact_rows(
        model.embed_tokens, audio, _pieces(model, examples, 300), tok.bos_id, tok.pad_id
    )
    out = model.llama_model(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=positions,
        labels=labels,
        use_cache=False,
    )
    return out.loss


def _reset_peak() -> None:
    """Start a new high-water mark: CUDA's counter, or Linux's VmHWM (``/proc/self/clear_refs``)."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as out:
        out.write("5")


def _peak_mb() -> float:
    """Peak memory since :func:`_reset_peak`: CUDA allocations, or the process's resident set."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setup(batch_size: int, steps: int, seconds: float):
    """The model (training mode), its AdamW, and ``steps`` batches of clips on disk."""
    import salmonn
    from salmonn.train.optim import make_optimizer

    model = decode_heavy_model()
    optimizer = make_optimizer(model.trainable_parameters(), 1e-5, 0.05)
    model.train()
    folder = Path(tempfile.mkdtemp(prefix="salmonn-bench-train-"))
    count = batch_size * steps
    write_clips(folder, count, seconds)
    examples = [
        salmonn.TrainExample(str(c), "Describe the audio.", TARGET[: 40 + 5 * (i % 7)])
        for i, c in enumerate(sorted(folder.glob("*.wav")))
    ]
    return model, optimizer, [examples[i : i + batch_size] for i in range(0, count, batch_size)]


def _modes() -> dict:
    """Mode name -> ``loss_fn(model, batch, cache)``."""
    import salmonn
    from salmonn.train.loss import batch_loss

    def default(model, batch, cache):
        loss = batch_loss(model, batch, encoder_cache=cache)
        return loss.total / loss.tokens

    return {
        "original": lambda m, b, cache: _original_loss(m, b),
        "exact": lambda m, b, cache: salmonn.training_loss(m, b, exact=True),
        "default e1": lambda m, b, cache: default(m, b, {}),  # encoders run (nothing kept)
        "default e2+": default,  # every clip's encoder outputs already kept
    }


def _step(model, optimizer, batch, loss_fn, cache) -> float:
    t0 = time.perf_counter()
    loss_fn(model, batch, cache).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def _timings(batch_size: int, steps: int, seconds: float) -> dict[str, float]:
    """examples/s of every mode, their steps interleaved (a load change hits all modes alike)."""
    model, optimizer, batches = _setup(batch_size, steps, seconds)
    modes, cache = _modes(), {}
    for batch in batches:  # warm-up, and the cache of "default e2+" filled
        modes["default e2+"](model, batch, cache)
    for fn in modes.values():
        _step(model, optimizer, batches[0], fn, cache)
    spent = dict.fromkeys(modes, 0.0)
    for batch in batches:
        for name, fn in modes.items():
            spent[name] += _step(model, optimizer, batch, fn, cache)
    return {name: batch_size * steps / seconds for name, seconds in spent.items()}


def _peak(batch_size: int, mode: str, seconds: float) -> float:
    """Peak memory (MiB) of one step of ``mode`` (the cache filled first for "default e2+")."""
    model, optimizer, batches = _setup(batch_size, 1, seconds)
    cache: dict = {}
    if mode == "default e2+":
        _modes()[mode](model, batches[0], cache)
    _step(model, optimizer, batches[0], _modes()[mode], cache)  # optimizer state made
    _reset_peak()
    _step(model, optimizer, batches[0], _modes()[mode], cache)
    return _peak_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--peak", help=argparse.SUPPRESS)  # one mode's memory, in a child
    args = parser.parse_args()
    if args.peak:
        print(json.dumps(_peak(args.batch_sizes[0], args.peak, args.seconds)))
        return
    print(
        f"load: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (1, 5 min), "
        f"torch threads {torch.get_num_threads()}, device cpu"
    )
    for batch_size in args.batch_sizes:
        rates = _timings(batch_size, args.steps, args.seconds)
        for mode, rate in rates.items():
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--peak",
                    mode,
                    "--batch-sizes",
                    str(batch_size),
                    "--seconds",
                    str(args.seconds),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            peak = json.loads(done.stdout.splitlines()[-1])
            print(
                f"batch {batch_size:2d}  {mode:12s} {rate:7.3f} examples/s  "
                f"peak RSS {peak:7.0f} MiB",
                flush=True,
            )
        print(
            f"batch {batch_size:2d}  default e2+ / original: "
            f"{rates['default e2+'] / rates['original']:.2f}x, "
            f"/ exact: {rates['default e2+'] / rates['exact']:.2f}x, "
            f"default e1 / original: {rates['default e1'] / rates['original']:.2f}x  "
            f"(load {os.getloadavg()[0]:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()

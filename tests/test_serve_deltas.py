"""Token-by-token deltas (salmonn.serve.deltas) with the tiny model's real SentencePiece tokenizer."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from salmonn.model.llm import PromptTokenizer
from salmonn.serve.deltas import DeltaText, TokenFeed


@pytest.fixture(scope="module")
def tokenizer(tiny_paths):
    return PromptTokenizer(tiny_paths.llm)


def _random_ids(rng: random.Random, tokenizer: PromptTokenizer) -> list[int]:
    """Ids as a random LM emits them: many byte-fallback pieces (multi-byte characters split
    over several ids, invalid runs), specials and the [PAD] id among ordinary pieces."""
    byte_ids = sorted(tokenizer._byte_ids())
    text_ids = [i for i in range(tokenizer.vocab_size) if i not in set(byte_ids)]
    ids = []
    for _ in range(rng.randint(1, 40)):
        roll = rng.random()
        if roll < 0.15:  # one whole character, as its UTF-8 bytes
            for byte in rng.choice("é中😀ß").encode():
                ids.append(byte_ids[byte])
        elif roll < 0.35:
            ids.append(rng.choice(byte_ids))
        elif roll < 0.4:
            ids.append(rng.choice([tokenizer.unk_id, tokenizer.bos_id, tokenizer.vocab_size]))
        else:
            ids.append(rng.choice(text_ids))
    if rng.random() < 0.3:
        ids.append(tokenizer.eos_id)
    return ids


@pytest.mark.parametrize("strip", [False, True])
def test_deltas_add_up_to_the_final_content(tokenizer, strip):
    """Every delta is final: the deltas of the growing ids, plus the rest, give the content."""
    rng = random.Random(5)
    grown = 0
    for _ in range(300):
        ids = _random_ids(rng, tokenizer)
        text = tokenizer.decode(ids)
        content = text.strip() if strip else text
        deltas = DeltaText(tokenizer.decode_stable, strip=strip)
        sent = [deltas.update(ids[:n]) for n in range(1, len(ids) + 1)]
        assert not deltas.stalled
        rest = deltas.rest(content)
        assert rest is not None and "".join(sent) + rest == content
        grown += sum(1 for d in sent if d)
    assert grown > 1000  # most steps send something


def test_bytes_of_one_character_wait_for_it(tokenizer):
    byte_ids = sorted(tokenizer._byte_ids())
    word = tokenizer.encode("sound")
    ids = word + [byte_ids[b] for b in "中".encode()] + word
    deltas = DeltaText(tokenizer.decode_stable, strip=True)
    got = [deltas.update(ids[:n]) for n in range(1, len(ids) + 1)]
    k = len(word)
    assert "".join(got[:k]) == tokenizer.decode(word)
    # bytes wait for the next piece: later bytes could still change how they decode
    assert got[k : k + 3] == ["", "", ""]
    assert got[k + 3] == "中 sound"
    assert "".join(got) + (deltas.rest(tokenizer.decode(ids)) or "") == tokenizer.decode(ids)


def test_strip_holds_back_blanks_and_a_changed_text_stalls():
    texts = iter(["  Hi", "  Hi ", "  Hi there", "Bye"])
    deltas = DeltaText(lambda ids: next(texts), strip=True)
    assert [deltas.update([0]) for _ in range(3)] == ["Hi", "", " there"]
    assert deltas.update([0]) == "" and deltas.stalled  # never sends what is not a prefix
    assert deltas.rest("Hi there!") == "!" and deltas.rest("Bye") is None


def test_token_feed_carries_ids_from_a_thread_to_the_loop():
    async def main() -> tuple[list[list[int]], int]:
        feed = TokenFeed(asyncio.get_running_loop())
        final = list(range(50))

        def worker() -> None:
            for n in range(1, len(final) + 1):
                feed(final[:n])

        thread = threading.Thread(target=worker)
        thread.start()
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        feed.end()
        seen = []
        while (ids := await feed.next()) is not None:
            seen.append(ids)
        feed.close()
        feed(final + [99])  # after close: ignored
        return seen, feed._queue.qsize()

    seen, left = asyncio.run(main())
    # the consumer came late, after the last call: it still sees every step
    assert seen == [list(range(n)) for n in range(1, 51)]
    assert left == 0
    # a feed whose loop has closed (the server stopped) ignores calls
    loop = asyncio.new_event_loop()
    feed = TokenFeed(loop)
    loop.close()
    feed([1, 2])
    feed([1, 2, 3])

"""The CLIP token counter of the prompt limit (shared.prompts.bpe, shared.prompts.token_limit) against transformers'
CLIPTokenizer built from the same merge list, the tokenizer the worker encodes with (issue 15, "Limits at the edge")."""

from __future__ import annotations

import gzip
import json
import random
import time
from typing import Any

import pytest

from shared.prompts import bpe, tokenize_line
from shared.prompts.bpe import MAX_EXACT_WORD_BYTES, MERGES_FILE, count_tokens
from shared.prompts.token_limit import encoded_texts, prompt_token_count, prompt_token_problems
from shared.prompts.tokens import COMMA

VOCAB_SIZE = 49_408


def _byte_symbols() -> list[str]:
    """The merge list's character for each byte, in byte order (built here independently of shared.prompts.bpe)."""
    kept = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    moved = [b for b in range(256) if b not in kept]
    table = {b: chr(b) for b in kept} | {b: chr(256 + n) for n, b in enumerate(moved)}
    return [table[b] for b in range(256)]


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """CLIPTokenizer from vocab.json and merges.txt written from the merge list, as clip_vocab/README.md says."""
    transformers = pytest.importorskip("transformers")
    lines = gzip.decompress(MERGES_FILE.read_bytes()).decode("utf-8").split("\n")
    symbols = _byte_symbols()
    merges = lines[1 : 1 + VOCAB_SIZE - 512 - 2]
    vocab = [*symbols, *(s + "</w>" for s in symbols), *(m.replace(" ", "") for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == VOCAB_SIZE
    folder = tmp_path_factory.mktemp("clip-tokenizer")
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return transformers.CLIPTokenizer.from_pretrained(str(folder))


def reference_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])


CORPUS = [
    "",
    "a photo of a cat",
    "masterpiece, best quality, (ultra detailed:1.2), [blurry], 8k uhd, dslr, soft lighting, film grain",
    "(masterpiece:1.2), [best|worst] quality!!! ((eyes)) \\(escaped\\) [from:to:0.25] BREAK AND <lora:foo:0.8>",
    "It's, we'VE, they're, I'LL, you'D, 'S '''s !'s 'x' o'clock rock'n'roll",
    "1girl, 2boys, 1990s, 3.14159, 1,000,000 $5 #hashtag @user 100% 24/7 12:30pm",
    "ÄÖÜ straße ǅ ﬁ ① ½ ٣ Ⅻ café naïve résumé mañana coöperate e\u0301 Å",
    "Ελληνικά ΟΔΟΣ русский текст عربى हिन्दी 한국어 ไทย 日本語の文章 中文提示词 ﾃｽﾄ",
    "🙂👍🏽 👨‍👩‍👧 🇫🇷 ❤️ ✨✨✨ ★☆",
    "tab\there\nnew line\r\ncarriage \u00a0nbsp \u2003em \u3000ideographic \u200bzero-width \x1cfile-sep \x85nel",
    "<|startoftext|>start <|endoftext|> end <|ENDOFTEXT|> <|endoftext|><|endoftext|>",
    "İstanbul ǰ ß ẞ Σίσυφος ΣΑΣ",
    "----------====== ... ,,, ;;; :: '' \"\" `` ~~ ^^ __ ** &&",
    "https://example.com/path?query=1&b=2 user@example.com C:\\path\\to\\file.png",
    "a" * 300,
]


def random_corpus(seed: int, count: int) -> list[str]:
    pick = random.Random(seed)
    alphabet = (
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789 ,.;:!?'\"()[]{}<>|\\-_=+*&^%$#@~`"
        "éüñßøΣσςİıłœ日本語中文한국어🙂\u0301\u00a0\t\n٣½"
    )
    return ["".join(pick.choice(alphabet) for _ in range(pick.randint(1, 80))) for _ in range(count)]


def test_counts_equal_the_clip_tokenizer_on_a_varied_corpus(clip_tokenizer: Any) -> None:
    texts = CORPUS + random_corpus(seed=15, count=1500)
    wrong = [(t, count_tokens(t), reference_count(clip_tokenizer, t)) for t in texts]
    wrong = [case for case in wrong if case[1] != case[2]]
    assert wrong == []


def test_words_up_to_the_exact_limit_are_exact_and_longer_ones_are_never_under_counted(clip_tokenizer: Any) -> None:
    pick = random.Random(7)
    exact = [
        "".join(pick.choice("abcdefghij") for _ in range(MAX_EXACT_WORD_BYTES)),
        "日本語" * 113,
        "ab" * 512,
    ]  # 1,024, 1,017 and 1,024 bytes
    for word in exact:
        assert count_tokens(word) == reference_count(clip_tokenizer, word)
    for word in ("a" * (MAX_EXACT_WORD_BYTES + 1), "日本語" * 400, "🙂" * 300):
        assert count_tokens(word) == len(word.encode()) >= reference_count(clip_tokenizer, word)


def test_a_prompt_counts_what_the_worker_tokenizes(clip_tokenizer: Any) -> None:
    """The worker's chunker (shared.prompts.tokenize_line, with the CLIP tokenizer) reports the tokens it placed;
    without editing, AND or tags the counter's figure is that number."""

    def tokenize(texts: list[str]) -> list[list[int]]:
        encoded = clip_tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)
        return [list(ids) for ids in encoded["input_ids"]]

    prompts = [
        "masterpiece, best quality, (ultra detailed:1.2), [blurry], 8k uhd, ((sharp focus)), \\(literal\\)",
        "a castle on a hill BREAK (storm clouds:1.4), lightning, 1990s film photo, grain",
        ", ".join(f"detail number {i} (shiny:1.1)" for i in range(60)),  # several chunks
    ]
    for prompt in prompts:
        chunks, _ = tokenize_line(prompt, tokenize, comma_token=COMMA, comma_padding_backtrack=0)
        placed = sum(1 for chunk in chunks for token in chunk.tokens[1:-1] if token != 49407)
        assert prompt_token_count(prompt, negative=False) == placed
        assert prompt_token_count(prompt, negative=True) == placed


def test_markup_tags_and_and_are_not_counted_and_every_branch_is() -> None:
    assert encoded_texts("a cat <lora:style:0.8> AND a dog :1.5", negative=False) == ["a cat", " a dog"]
    assert encoded_texts("a cat <lora:style:0.8>", negative=True) == ["a cat <lora:style:0.8>"]
    assert prompt_token_count("a cat <lora:style:0.8>", negative=False) == 2
    assert prompt_token_count("(cat:1.3) [dog] BREAK bird", negative=False) == 3
    assert prompt_token_count("[red:blue:0.5] car", negative=False) == 3  # red, blue, car: both branches
    assert prompt_token_count("[red|green|blue] car", negative=False) == 4
    # Parts "a photo", " a photo", " a photo": the worker encodes each distinct text once, as here.
    assert prompt_token_count("a photo AND a photo AND a photo", negative=False) == 4


def test_the_problem_names_the_field_and_the_limit() -> None:
    within = ", ".join(["cat"] * 50)  # 99 tokens
    assert prompt_token_count(within, negative=False) == 99
    assert prompt_token_problems("prompt", within, 99) == []
    [problem] = prompt_token_problems("prompt", within, 98)
    assert (problem.field, problem.code) == ("prompt", "invalid_length")
    assert "98 CLIP tokens" in problem.message
    assert "max_prompt_tokens" in problem.message
    [problem] = prompt_token_problems("negative_prompt", "<lora:x:1> " + within, 99)  # the tag is text here
    assert problem.field == "negative_prompt"


def test_a_prompt_at_the_character_limit_counts_fast() -> None:
    """Long prompts are counted in well under 100 ms (the scheduler counts before a job is accepted)."""
    pick = random.Random(3)
    vocabulary = [
        "".join(pick.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(pick.randint(3, 11))) for _ in range(5000)
    ]
    prompts = [
        " ".join(pick.choice(vocabulary) + pick.choice(["", ",", " (x:1.1)"]) for _ in range(6000))[:32_768],
        "a" * 32_768,
        "🙂" * 32_768,
        "。".join("".join(chr(pick.randint(0x4E00, 0x9FFF)) for _ in range(300)) for _ in range(110))[:32_768],
        "1" * 32_768,
    ]
    bpe._merge_ranks()  # loaded once per process
    for prompt in prompts:
        assert prompt_token_problems("prompt", prompt, 3000), prompt[:40]
        timings = []
        for _ in range(3):  # the best of three, each with cold word caches: the machine may be busy
            bpe._short_word_length.cache_clear()
            bpe._long_word_length.cache_clear()
            started = time.perf_counter()
            prompt_token_problems("prompt", prompt, 3000)
            timings.append(time.perf_counter() - started)
        assert min(timings) < 0.1, (prompt[:40], timings)

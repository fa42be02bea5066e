"""Prompt text → conditioning tensors with a fake tokenizer and a fake text encoder whose output is its input
(worker/engine/conditioning; docs/engine.md, "Prompt encoding"): chunks of 77·k, BREAK, padding chunks, emphasis,
embeddings, schedules and AND."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import torch

from worker.engine.conditioning.conds import (
    learned_conditioning,
    multicond_learned_conditioning,
    old_timelines_differ,
    schedule_steps,
)
from worker.engine.conditioning.encoder import PromptEncoder, TokenVectors
from worker.engine.conditioning.schedules import cond_at

BOS, EOS, COMMA = 49406, 49407, 267
WIDTH = 3


@dataclass
class FakeBackend:
    """Words (split on spaces; `,` is its own token) get ids from 1000 on in order of first sight. The "encoder"
    returns, per token, the vector (id, position, 1) — or the inserted vectors where an embedding goes."""

    id_pad: int = EOS
    vocab: dict[str, int] = field(default_factory=dict)
    seen: list[torch.Tensor] = field(default_factory=list)

    id_start: int = BOS
    id_end: int = EOS
    comma_token: int | None = COMMA

    def word_id(self, word: str) -> int:
        return self.vocab.setdefault(word, 1000 + len(self.vocab))

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [
            [COMMA if word == "," else self.word_id(word) for word in text.replace(",", " , ").split()]
            for text in texts
        ]

    def encode_chunk(self, tokens: torch.Tensor, vectors: TokenVectors) -> torch.Tensor:
        self.seen.append(tokens.clone())
        batch, length = tokens.shape
        z = torch.stack(
            [tokens.float(), torch.arange(length).float().expand(batch, -1), torch.ones(batch, length)], dim=-1
        )
        for row, insertions in enumerate(vectors):
            for position, vec in insertions:
                z[row, position : position + vec.shape[0]] = vec
        return z


def encoder(**kwargs: object) -> tuple[PromptEncoder, FakeBackend]:
    backend = FakeBackend()
    return PromptEncoder(backend, **kwargs), backend  # type: ignore[arg-type]


def words(n: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def test_a_short_prompt_is_one_chunk_of_77() -> None:
    enc, backend = encoder()
    z = enc.encode(["a b c"])
    assert z.shape == (1, 77, WIDTH)
    tokens = backend.seen[0][0].tolist()
    assert tokens == [BOS, 1000, 1001, 1002] + [EOS] * 73


@pytest.mark.parametrize(("count", "chunks"), [(75, 1), (76, 2), (150, 2), (151, 3)])
def test_long_prompts_are_chunks_of_77(count: int, chunks: int) -> None:
    enc, backend = encoder(comma_padding_backtrack=0)
    z = enc.encode([words(count)])
    assert z.shape == (1, 77 * chunks, WIDTH)
    for index in range(chunks):
        assert z[0, 77 * index, 0] == BOS
        assert z[0, 77 * index + 76, 0] == EOS
    assert z[0, 77 + 1, 0] == backend.vocab["w75"] if count > 75 else True


def test_break_closes_the_chunk() -> None:
    enc, backend = encoder()
    z = enc.encode(["a b BREAK c"])
    assert z.shape == (1, 154, WIDTH)
    assert backend.seen[0][0, :4].tolist() == [BOS, backend.vocab["a"], backend.vocab["b"], EOS]
    assert backend.seen[1][0, :3].tolist() == [BOS, backend.vocab["c"], EOS]


def test_comma_backtracking_moves_the_tail_to_the_next_chunk() -> None:
    enc, backend = encoder(comma_padding_backtrack=20)
    enc.encode([words(70) + " , " + words(10, "x")])
    first = backend.seen[0][0].tolist()
    assert first[71] == COMMA  # the chunk ends at the comma (index 70 of the prompt tokens, after BOS)
    assert first[72:] == [EOS] * 5
    assert backend.seen[1][0, 1] == backend.vocab["x0"]


def test_texts_with_fewer_chunks_get_empty_chunks() -> None:
    enc, backend = encoder()
    z = enc.encode(["a", words(80)])
    assert z.shape == (2, 154, WIDTH)
    assert backend.seen[1][0].tolist() == [BOS] + [EOS] * 76


def test_open_clip_pads_with_zero_after_the_first_eos() -> None:
    backend = FakeBackend(id_pad=0)
    PromptEncoder(backend).encode(["a b"])
    assert backend.seen[0][0].tolist() == [BOS, 1000, 1001, EOS] + [0] * 73


def test_no_norm_multiplies_the_weighted_tokens() -> None:
    enc, backend = encoder(emphasis="No norm")
    z = enc.encode(["(a:1.5) b"])
    assert z[0, 1].tolist() == [backend.vocab["a"] * 1.5, 1.5, 1.5]
    assert z[0, 2].tolist() == [backend.vocab["b"], 2.0, 1.0]
    assert enc.emphasis_syntax_seen


def test_original_keeps_the_mean() -> None:
    enc, _ = encoder(emphasis="Original")
    plain, _ = encoder(emphasis="Original")
    z = enc.encode(["(a:1.5) b"])
    reference = plain.encode(["a b"])
    assert torch.allclose(z.mean(), reference.mean())
    assert not torch.allclose(z, reference)


def test_emphasis_none_reads_brackets_literally() -> None:
    enc, backend = encoder(emphasis="None")
    z = enc.encode(["(a:1.5)"])
    assert z[0, :, 2].tolist() == [1.0] * 77  # no multiplier anywhere
    assert backend.seen[0][0, 1] == backend.vocab["(a:1.5)"]  # the word as written, brackets included


@dataclass(frozen=True)
class FakeEmbedding:
    name: str
    vec: torch.Tensor

    @property
    def vectors(self) -> int:
        return int(self.vec.shape[0])


@dataclass
class FakeLookup:
    """Finds the embedding `emb` where its single token id appears."""

    token: int
    embedding: FakeEmbedding

    def find_embedding_at_position(self, tokens: Sequence[int], offset: int) -> tuple[FakeEmbedding | None, int | None]:
        if tokens[offset] == self.token:
            return self.embedding, 1
        return None, None


def test_embedding_vectors_replace_their_tokens() -> None:
    backend = FakeBackend()
    emb_token = backend.word_id("emb")
    vec = torch.tensor([[7.0, 7.0, 7.0], [8.0, 8.0, 8.0]])
    lookup = FakeLookup(emb_token, FakeEmbedding("emb", vec))
    enc = PromptEncoder(backend, embeddings=lookup, emphasis="No norm")
    z = enc.encode(["a (emb:2) b"])
    assert z[0, 1, 0] == backend.vocab["a"]
    assert torch.equal(z[0, 2:4], vec * 2.0)  # at offset + 1 (after BOS), with the segment's weight
    assert z[0, 4, 0] == backend.vocab["b"]
    assert list(enc.used_embeddings) == ["emb"]


def test_schedules_and_their_step_timeline() -> None:
    enc, backend = encoder()
    batch = learned_conditioning(enc, ["[a:b:2] c"], 4)
    schedule = batch.images[0]
    assert [entry.end_at_step for entry in schedule] == [2, 4]
    assert cond_at(schedule, 2)[1, 0] == backend.vocab["a"]
    assert cond_at(schedule, 3)[1, 0] == backend.vocab["b"]
    assert cond_at(schedule, 9)[1, 0] == backend.vocab["a"]  # past N: the first entry


def test_and_sub_prompts_with_weights() -> None:
    enc, backend = encoder()
    batch = multicond_learned_conditioning(enc, ["a AND b:0.5"], 4)
    (subs,) = batch.images
    assert [sub.weight for sub in subs] == [1.0, 0.5]
    assert cond_at(subs[1].schedule, 0)[1, 0] == backend.vocab["b"]


def test_second_order_samplers_schedule_twice_the_steps() -> None:
    assert schedule_steps(20, "Heun") == 40
    assert schedule_steps(20, "DPM++ 2S a") == 40
    assert schedule_steps(20, "Euler") == 20


def test_old_timelines_differ_only_when_a_number_reads_differently() -> None:
    assert old_timelines_differ(["[a:b:1.5]"], 10)  # new: fraction → min(10, 15); old: absolute 1
    assert not old_timelines_differ(["[a:b:0.5]"], 10)

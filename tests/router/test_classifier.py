"""The classifier reads messages the way people write them: whole words, slang, typos, emoji."""

from __future__ import annotations

import pytest

from services.router.classifier import MessageType, PriorTurn, compile_phrase
from services.router.decision import MessageContext, Route, Router


@pytest.fixture(scope="module")
def router() -> Router:
    return Router.from_files()


def kind(router: Router, text: str, history: tuple[PriorTurn, ...] = ()) -> MessageType:
    return router.classify(text, history).message_type


def test_this_is_not_a_greeting(router: Router) -> None:
    verdict = router.classify("this")
    assert verdict.message_type is not MessageType.GREETING
    assert not verdict.canned_eligible


@pytest.mark.parametrize("text", ["hi", "hiii coach", "heyyy", "gm ☀️", "good mornin", "sup",
                                  "yo!", "hey, you there?", "what up", "howdy partner"])
def test_greetings_as_people_write_them(router: Router, text: str) -> None:
    verdict = router.classify(text)
    assert verdict.message_type is MessageType.GREETING and verdict.canned_eligible


@pytest.mark.parametrize("text", ["ok", "k", "thx", "tysm 🙏", "👍", "👍👍", "cool thanks",
                                  "thnaks coach", "sounds good", "night!"])
def test_acknowledgements(router: Router, text: str) -> None:
    verdict = router.classify(text)
    assert verdict.message_type is MessageType.ACKNOWLEDGEMENT and verdict.canned_eligible


@pytest.mark.parametrize("text", ["gtg, thanks!!", "logging off, ty", "catch you tomorrow",
                                  "ok bye, talk tmrw"])
def test_sign_offs_are_acknowledgements(router: Router, text: str) -> None:
    verdict = router.classify(text)
    assert verdict.message_type is MessageType.ACKNOWLEDGEMENT and verdict.canned_eligible


@pytest.mark.parametrize("text", ["bit tired today", "long day at work", "today was a lot",
                                  "dead on my feet today 😴", "brain is fried", "zombie mode"])
def test_a_bare_tired_said_plainly_is_canned(router: Router, text: str) -> None:
    verdict = router.classify(text)
    assert verdict.message_type is MessageType.STRUGGLING and verdict.canned_eligible


@pytest.mark.parametrize("text", [
    "logging off for good", "gtg, im done with everything",
    "long day at work, my boss yelled at me again and I can't take it",
])
def test_a_sign_off_or_tired_with_more_in_it_is_not_canned(router: Router, text: str) -> None:
    assert not router.classify(text).canned_eligible


@pytest.mark.parametrize("text", ["done", "did it ✅", "finished my run", "finsihed my wrkout",
                                  "compelted my workout", "donee", "✅", "got my steps in"])
def test_completions_with_typos_and_emoji(router: Router, text: str) -> None:
    verdict = router.classify(text)
    assert verdict.message_type is MessageType.CHECK_IN and verdict.canned_eligible


@pytest.mark.parametrize("text,tokens", [
    ("शुक्रिया 🙏", ("शुक्रिया", "pray")),  # Hindi writes its vowels as combining marks
    ("สวัสดีครับ", ("สวัสดีครับ",)),  # Thai
    ("நன்றி", ("நன்றி",)),  # Tamil
    ("1️⃣ done ✅️", ("1", "done", "checkmark")),  # emoji modifiers stay out of words
    ("❤️ thx", ("heart", "thanks")),
])
def test_a_word_keeps_its_combining_marks(router: Router, text: str,
                                          tokens: tuple[str, ...]) -> None:
    assert router.normalize(text).tokens == tokens


def test_every_combining_mark_lies_where_the_normalizer_looks() -> None:
    import sys
    import unicodedata

    from services.router.classifier.normalize import MARK_PLANES

    def looked(c: int) -> bool:
        return any(first <= c < end for first, end in MARK_PLANES)
    outside = [hex(c) for c in range(sys.maxunicode + 1) if not looked(c)
               and unicodedata.category(chr(c)) in ("Mn", "Mc", "Me")]
    assert outside == []


@pytest.mark.parametrize("text,mtype", [
    ("spasibo", MessageType.ACKNOWLEDGEMENT), ("спасибо", MessageType.ACKNOWLEDGEMENT),
    ("谢谢", MessageType.ACKNOWLEDGEMENT), ("감사합니다", MessageType.ACKNOWLEDGEMENT),
    ("शुक्रिया 🙏", MessageType.ACKNOWLEDGEMENT), ("Доброе утро", MessageType.GREETING),
    ("صباح الخير", MessageType.GREETING), ("готово ✅", MessageType.CHECK_IN),
    ("終わった！", MessageType.CHECK_IN), ("疲れた", MessageType.STRUGGLING),
    ("muy cansada hoy", MessageType.STRUGGLING),
])
def test_the_canned_kinds_in_other_scripts(router: Router, text: str,
                                           mtype: MessageType) -> None:
    verdict = router.classify(text)
    assert verdict.message_type is mtype and verdict.canned_eligible


@pytest.mark.parametrize("text", ["not done yet", "not done", "didn't finish", "haven't finished",
                                  "havent finished yet", "didnt do it", "not finished, I keep avoiding it"])
def test_negated_completion_is_never_a_completion(router: Router, text: str) -> None:
    verdict = router.classify(text)
    assert not verdict.canned_eligible
    assert verdict.message_type in (MessageType.CHECK_IN, MessageType.ACCOUNTABILITY,
                                    MessageType.PATTERN_ANALYSIS)


@pytest.mark.parametrize("text", ["pilates done", "upper body done", "15 min meditation ✅",
                                  "smoke free today 🚭", "made my bed", "hecho ✅", "fertig!"])
def test_any_activity_named_done_is_a_completion(router: Router, text: str) -> None:
    verdict = router.classify(text)
    assert verdict.message_type is MessageType.CHECK_IN and verdict.canned_eligible


@pytest.mark.parametrize("text", ["this is goodbye", "hi from the ER", "hello from the hospital",
                                  "its my farewell", "goodbye forever"])
def test_a_goodbye_or_a_greeting_from_trouble_is_never_canned(router: Router, text: str) -> None:
    assert not router.classify(text).canned_eligible


@pytest.mark.parametrize("text", ["stretching not done", "gym never done", "reps barely done",
                                  "life done", "my life is done", "us done ✅", "everything done",
                                  "no food today ✅", "no eating today", "skipped meals ✅",
                                  "food free today", "eating done"])
def test_an_open_activity_slot_never_swallows_a_negation_or_a_life(router: Router,
                                                                    text: str) -> None:
    # "_ done" takes any one word as the activity: these must still reach a model.
    assert not router.classify(text).canned_eligible


@pytest.mark.parametrize("text", ["konnichiwa", "merhaba coach", "kia ora", "xin chào",
                                  "Good evening. I hope you are well.", "привет", "早上好",
                                  "evening coach, Marta here", "Hello. This is Margaret.",
                                  "hello from a very rainy Glasgow"])
def test_greetings_in_other_languages_and_pleasantries(router: Router, text: str) -> None:
    verdict = router.classify(text)
    assert verdict.message_type is MessageType.GREETING and verdict.canned_eligible


def test_not_done_yet_is_progress_but_not_done_is_a_miss(router: Router) -> None:
    assert kind(router, "not done yet") is MessageType.CHECK_IN
    assert kind(router, "didn't finish") is MessageType.ACCOUNTABILITY


@pytest.mark.parametrize("text,tokens", [
    ("did 1000 pushups", "did 1000 pushups"),
    ("day 111 of my streak", "day 111 of my streak"),
    ("hit 10,000 steps", "hit 10 000 steps"),
    ("sooo goood", "so good"),
])
def test_letters_stretched_are_squeezed_but_numbers_keep_their_digits(
        router: Router, text: str, tokens: str) -> None:
    assert router.normalize(text).text == tokens


def test_ten_thousand_steps_is_not_zero_steps(router: Router) -> None:
    assert kind(router, "hit 10,000 steps every day this week 🥳") is not \
        MessageType.ACCOUNTABILITY


def test_sad_emoji_turns_ok_into_something_else(router: Router) -> None:
    assert not router.classify("ok 😢").canned_eligible


@pytest.mark.parametrize("text,expected", [
    ("hi, can you help me figure out why I keep quitting?", MessageType.PATTERN_ANALYSIS),
    ("hey coach, can you help me build a morning routine", MessageType.GOAL_SETTING),
    ("good morning, I want to completely overhaul my sleep schedule", MessageType.GOAL_SETTING),
    ("done pretending everything is fine, I'm burnt out", MessageType.DEEP_COACHING),
    ("I'm tired of feeling like a failure all the time", MessageType.DEEP_COACHING),
    ("skipped the gym again, no excuse", MessageType.ACCOUNTABILITY),
    ("this is the hardest month I've had in years", MessageType.STRUGGLING),
])
def test_trigger_words_inside_serious_messages(router: Router, text: str,
                                               expected: MessageType) -> None:
    verdict = router.classify(text)
    assert not verdict.canned_eligible
    assert verdict.message_type is expected


@pytest.mark.parametrize("text", [
    "kms", "thinking about unaliving myself", "I don't want to be here anymore",
    "I'm done with life", "i just want to end it all", "I'm not suicidal lol",
    "nobody would notice if I was gone", "ate and threw up", "been purging again",
    "haven't eaten in 3 days", "not eating for days to drop weight", "skipping meals all week",
    "i only eat 500 calories a day", "i feel like dying", "sewerslide", "kys",
    # preparations and methods said plainly, with no feeling word
    "swallowed the whole pack 20 min ago", "been saving my pills in a jar",
    "can i lift with fresh cuts on my forearms?", "put my affairs in order this week",
    "some mornings im disappointed i woke up at all", "i dont see myself being around next year",
    "wrote about how i'd do it", "climbed over the railing for a minute",
])
def test_crisis_language_is_caught(router: Router, text: str) -> None:
    assert kind(router, text) is MessageType.CRISIS


@pytest.mark.parametrize("text", [
    # a goodbye that is for good, said as an everyday sign-off
    "signing off for good. thanks for everything coach", "ok bye world 👋",
    "logging off. tell whoever reads these that I tried", "done. with all of it.",
    # the embeddings read English: the same words in other languages are rules
    "hola. ya no quiero seguir viviendo", "quiero matarme", "me quiero morir",
    "merci coach. je ne veux plus vivre", "je n'en peux plus", "je veux mourir",
    "não quero mais viver", "quero morrer", "non voglio più vivere", "voglio morire",
    "ich will nicht mehr leben", "ich will sterben",
    # idioms of risk with no feeling word
    "ana buddy?? 15F", "ran 12k to earn breakfast", "i HAD to earn it back",
    "what happens if you take 30 ibuprofen", "2 boxes of ex lax in one week is fine right",
    "how to hide weight loss from my doctor", "macros today: 0/0/0 😎",
    "which floor of a building is high enough", "i'm standing on the balcony railing",
    "my list of reasons to stay is down to two things",
    # short, and in other languages
    "bye 👋 for good", "tschüss für immer", "quero sumir pra sempre", "kids better off w/o me",
    "non mangio da 4 giorni", "pas mangé depuis 3 jours", "hab seit tagen nix gegessen",
    "no como desde el lunes", "weighed 6 times today", "logged today: 0 kcal, day 5",
])
def test_farewells_and_other_languages_are_crisis(router: Router, text: str) -> None:
    assert kind(router, text) is MessageType.CRISIS


@pytest.mark.parametrize("text", [
    "signing off for tonight, thanks coach", "bye! talk tmrw", "quiero correr más mañana",
    "je veux courir demain matin", "voglio fare più yoga", "done with all my reps 💪",
    "earned my rest day", "0 excuses today", "top floor of the gym has the best view",
    "weighed 80kg today", "non mangio da solo stasera", "voglio vivere più sano",
])
def test_sign_offs_and_plans_in_other_languages_are_not_crisis(router: Router,
                                                                text: str) -> None:
    assert kind(router, text) is not MessageType.CRISIS


@pytest.mark.parametrize("text", ["killed it today 💪", "this workout is hard", "I'm starving lol",
                                  "went to the gym, it was dead in there",
                                  "I'll bring it up again with my boss", "budget cuts at work",
                                  "annoyed i woke up at 5 again", "after my attempt at a 5k PR",
                                  "here's when i'll do it: after work", "eating an apple a day",
                                  "climbed over the fence to get the ball"])
def test_everyday_slang_is_not_crisis(router: Router, text: str) -> None:
    assert kind(router, text) is not MessageType.CRISIS


def test_short_reply_to_a_deep_question_continues_the_thread(router: Router) -> None:
    coach = (PriorTurn("coach", "How about we try a 10 minute walk every morning?"),)
    verdict = router.classify("sure let's do it", coach)
    assert verdict.continues_thread and verdict.message_type is MessageType.GOAL_SETTING


def test_short_reply_to_a_simple_check_in_stays_simple(router: Router) -> None:
    verdict = router.classify("yes", (PriorTurn("coach", "Did u do what u said?"),))
    assert not verdict.continues_thread
    assert verdict.message_type is MessageType.CHECK_IN and verdict.canned_eligible
    no = router.classify("nope", (PriorTurn("coach", "Did u do what u said?"),))
    assert no.message_type is MessageType.ACCOUNTABILITY


@pytest.mark.parametrize("reply", ["yes", "no im fine", "idk", "ok", "thanks"])
@pytest.mark.parametrize("coach", [
    ("When you say you don't want to be here anymore, do you mean you're thinking about "
     "ending your life?"),
    "Are you safe right now?",
    "Have you had thoughts of hurting yourself?",
    "Please call or text 988 now. Can you do that?",
])
def test_any_reply_to_the_coach_s_safety_question_stays_a_crisis_turn(
        router: Router, reply: str, coach: str) -> None:
    verdict = router.classify(reply, (PriorTurn("coach", coach),))
    assert verdict.message_type is MessageType.CRISIS and not verdict.canned_eligible


def test_a_reply_to_an_everyday_caution_is_not_a_crisis(router: Router) -> None:
    assert kind(router, "will do", (PriorTurn("coach", "Stay safe on your run tonight!"),)) \
        is MessageType.ACKNOWLEDGEMENT


@pytest.mark.parametrize("reply", ["yes pls", "omg yes", "sure", "yes please!"])
@pytest.mark.parametrize("coach", ["Want a quick high-protein breakfast idea?",
                                   "Shall I send you a 5-minute stretch for your back?",
                                   "Would you like a recipe for that?"])
def test_yes_to_the_coach_s_offer_asks_for_it(router: Router, reply: str, coach: str) -> None:
    verdict = router.classify(reply, (PriorTurn("coach", coach),))
    assert verdict.message_type is MessageType.QUESTION and not verdict.canned_eligible
    assert router.decide(reply, MessageContext(message_count=40, history=(
        PriorTurn("coach", coach),))).route is not Route.PATTERN


@pytest.mark.parametrize("reply,coach", [
    ("no thanks", "Want a quick high-protein breakfast idea?"),
    ("thanks!", "Great job today, keep it up!"),
    ("yes", "Want me to rebuild your week around the new commute?"),
])
def test_a_no_or_thanks_without_an_offer_is_not_asking(router: Router, reply: str,
                                                       coach: str) -> None:
    verdict = router.classify(reply, (PriorTurn("coach", coach),))
    assert verdict.message_type is not MessageType.QUESTION


def test_only_the_last_turn_counts_and_only_if_the_coach_said_it(router: Router) -> None:
    history = (PriorTurn("coach", "Why do you think weekends are hard?"),
               PriorTurn("user", "no idea"))
    assert not router.classify("ok", history).continues_thread


def test_a_coach_turn_is_read_once_and_kept_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from services.router.classifier import classification as module

    classifier = Router.from_files()._classifier
    reads: list[str] = []
    normalize = classifier.normalizer.normalize
    monkeypatch.setattr(classifier.normalizer, "normalize",
                        lambda text: reads.append(text) or normalize(text))
    turn = classifier.read_coach_turn("Did u do what u said?")
    assert turn == module.CoachTurn(did_you_question=True)
    assert classifier.read_coach_turn("Did u do what u said?") is turn
    assert reads == ["Did u do what u said?"]
    # The reply to it reads only itself.
    assert classifier.classify("yes", (PriorTurn("coach", "Did u do what u said?"),)).did_you_answer
    assert reads == ["Did u do what u said?", "yes"]
    assert classifier.read_coach_turn("How about a 10 minute walk every morning?").open_thread \
        is MessageType.GOAL_SETTING
    assert classifier.read_coach_turn("Nice work today.") == module.CoachTurn()

    monkeypatch.setattr(module, "COACH_TURNS_KEPT", 3)
    for i in range(5):
        classifier.read_coach_turn(f"turn {i}?")
    assert list(classifier._coach_turns) == ["turn 2?", "turn 3?", "turn 4?"]


def test_the_one_scan_finds_the_rule_that_taking_the_rules_in_order_finds() -> None:
    """``RuleIndex.first_rule`` against the plain reading of the rules, one at a time: the
    eval set, and random mixes of its messages and of the words the rules' phrases start with."""
    import json
    import random
    from pathlib import Path

    classifier = Router.from_files()._classifier

    def one_by_one(text: str) -> tuple[MessageType, str] | None:
        for rule in classifier.rules:
            hit = rule.phrases.search(text)
            if hit is not None and rule.unless.search(text) is None:
                return rule.message_type, hit
        return None

    def one_scan(text: str) -> tuple[MessageType, str] | None:
        found = classifier._rule_index.first_rule(text)
        return None if found is None else (found[0].message_type, found[1])

    eval_set = Path(__file__).with_name("eval_set.jsonl").read_text().splitlines()
    texts = [json.loads(line)["text"] for line in eval_set if line.strip()]
    starts = sorted({key for rule in classifier.rules
                     for key in (*rule.phrases.by_first, *rule.phrases.by_prefix)})
    rng = random.Random(7)
    texts += [f"{rng.choice(texts)} {rng.choice(texts)}" for _ in range(2000)]
    texts += [" ".join(rng.choices(starts, k=rng.randint(1, 8))) for _ in range(2000)]
    differ = [t for t in texts if one_by_one(norm := classifier.normalizer.normalize(t).text)
              != one_scan(norm)]
    assert differ == []


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.lower().split())


@pytest.mark.parametrize("phrase,text,hit", [
    ("hi", "this is it", False),
    ("hi", "oh hi there", True),
    ("done", "undone", False),
    ("why ... always", "why do i always skip", True),
    ("why ... always", "why a b c d e always", False),
    ("skip*", "skipping today", True),
    ("*ing", "skipping", True),
    ("(good )?morning", "morning", True),
    ("(good )?morning", "good morning", True),
    ("^ hey", "oh hey", False),
    ("# days", "3 days", True),
    ("(a|b c) d", "b c d", True),
])
def test_phrase_syntax_matches_whole_words(phrase: str, text: str, hit: bool) -> None:
    import re

    body = compile_phrase(phrase, _words)
    assert bool(re.search(r"(?<!\S)(?:" + body + r")(?!\S)", text)) is hit


@pytest.mark.parametrize("phrase", ["", "... x", "x ...", "(a|b", "a)", "x ^", "$ x", "(a|)", "(x)?"])
def test_bad_phrases_are_rejected(phrase: str) -> None:
    with pytest.raises(ValueError):
        compile_phrase(phrase, _words)


@pytest.mark.parametrize("text", ["binged on chips and then threw up", "i keep binging at night",
                                  "binge eating is back"])
def test_bingeing_on_food_is_crisis(router: Router, text: str) -> None:
    assert kind(router, text) is MessageType.CRISIS


def test_binge_watching_a_show_is_not_crisis(router: Router) -> None:
    assert kind(router, "I binge watched netflix instead of working") is not MessageType.CRISIS


def test_feelings_read_in_one_scan_equal_the_deep_coaching_rules_taken_one_by_one() -> None:
    import json
    import random
    from pathlib import Path

    classifier = Router.from_files()._classifier

    def one_by_one(text: str) -> bool:
        return any(rule.message_type is MessageType.DEEP_COACHING
                   and rule.phrases.search(text) is not None and rule.unless.search(text) is None
                   for rule in classifier.rules)

    eval_set = Path(__file__).with_name("eval_set.jsonl").read_text().splitlines()
    texts = [json.loads(line)["text"] for line in eval_set if line.strip()]
    rng = random.Random(11)
    texts += [f"{rng.choice(texts)} {rng.choice(texts)}" for _ in range(2000)]
    norms = [classifier.normalizer.normalize(t) for t in texts]
    assert sum(map(classifier.emotional, norms)) > 100  # the check has something to find
    assert [n.text for n in norms if classifier.emotional(n) != one_by_one(n.text)] == []

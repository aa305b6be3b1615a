"""What kind of message is this? The router's one text-understanding component.

Everything here is deterministic rules over *normalized tokens*; the word lists
live in ``data/classifier.yaml`` (rules, crisis language, coach-question rules)
and ``data/patterns.yaml`` (what a whole canned-eligible message may contain).

How a message is read, step by step (a newcomer's tour):

1. **Normalize** (:class:`Normalizer`). Lower-case, NFKC, curly quotes made
   straight, then split into word tokens; apostrophes are dropped inside words
   (``don't`` → ``dont``, ``I'm`` → ``im``). Punctuation is dropped but ``?``
   is remembered. Emoji become words from the ``emoji`` table (👍 →
   ``thumbsup``; unknown emoji → ``emoji``). Each word then goes through, in
   order: the ``spelling`` table (``u`` → ``you``, ``thx`` → ``thanks``, ``gm`` →
   ``good morning``); if it is still not a word the data files know, stretched
   letters are squeezed (``heyyy`` → ``hey``, ``soooo`` → ``so``); then, for
   the few words listed in ``typo_tolerant``, one slip is forgiven (a missing,
   extra, wrong or swapped letter: ``finsihed`` → ``finished``).
2. **Match phrases on token boundaries, never substrings.** Every phrase in the
   data files is compiled to a regex over the space-joined tokens with
   ``(?<!\\S)`` / ``(?!\\S)`` guards, so ``hi`` never matches ``this`` and
   ``done`` is only ever the word *done*. Phrase syntax (see :func:`compile_phrase`):
   ``word``, ``pre*`` / ``*ing`` (wildcard inside a word), ``(a|b c)``
   (alternatives, each itself a phrase), ``_`` (any one word), ``...`` (up to
   four words), ``#`` (a number such as ``3``, ``8k``, ``140kg``), ``^`` / ``$``
   (start / end of message).
3. **Classify** (:meth:`Classifier.classify`), first answer wins:

   a. *Crisis* language anywhere → ``CRISIS`` (deliberately generous, negation
      is ignored: "I'm not suicidal lol" still counts).
   b. The coach's last turn opened a coaching thread (a reflective or plan
      question, per ``coach_turns.open_threads``) → the reply continues that
      thread, typed after it, unless the reply is itself complex or a bare
      greeting. A yes/no answer to a "did u do it?" check-in becomes a
      completion (yes) or an accountability message (no).
   c. The *whole* message is a canned-eligible greeting, acknowledgement,
      completion or brief struggle (``patterns.yaml``) → that type, and the
      router may answer from the canned set.
   d. The ordered ``rules`` of ``classifier.yaml``: the first rule whose
      phrases occur (and whose ``unless`` phrases do not) gives the type.
   e. Fallbacks: ``?`` → ``QUESTION``; a short message with a greeting in it →
      ``GREETING``; a very long message → ``DEEP_COACHING``; else ``CHECK_IN``.

Nothing here decides *how* to answer; that is :mod:`services.router.decision`.
"""

from __future__ import annotations

from services.router.classifier.classification import Classification, Classifier, CoachTurn
from services.router.classifier.datafile import ConfigError, DataFile
from services.router.classifier.normalize import NormalizedText, Normalizer
from services.router.classifier.phrases import (
    PhraseSet,
    WholeMessageMatcher,
    compile_phrase,
    phrase_words,
)
from services.router.classifier.vocabulary import MessageType, PriorTurn, stable_index

__all__ = [
    "Classification",
    "Classifier",
    "CoachTurn",
    "ConfigError",
    "DataFile",
    "MessageType",
    "NormalizedText",
    "Normalizer",
    "PhraseSet",
    "PriorTurn",
    "WholeMessageMatcher",
    "compile_phrase",
    "phrase_words",
    "stable_index",
]

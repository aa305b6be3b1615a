"""The baseline's prompt prefix comes from the llm service, and threads copes while it is away."""

from __future__ import annotations

from services.threads.peer_errors import PeerCallFailed
from services.threads.prompt_prefix import DEFAULT_PREFIX_TOKENS, BaselinePrefix
from tests.helpers.polling import eventually


class Llm:
    """Answers ``tokens`` once ``down`` calls have failed with ``code``."""

    def __init__(self, tokens: int, down: int = 0, code: str = "UNAVAILABLE") -> None:
        self.tokens, self.down, self.code, self.calls = tokens, down, code, 0

    async def ask(self, timeout_s: float) -> int:
        self.calls += 1
        if self.calls <= self.down:
            raise PeerCallFailed("llm", self.code, "down", "")
        return self.tokens


async def test_the_llm_services_answer_is_used_from_the_start() -> None:
    llm = Llm(783)
    prefix = BaselinePrefix(llm.ask)
    await prefix.start()
    assert prefix.tokens() == 783 and prefix.known and llm.calls == 1


async def test_a_configured_size_wins_and_nothing_is_asked() -> None:
    llm = Llm(783)
    prefix = BaselinePrefix(llm.ask, configured=1200)
    await prefix.start()
    assert prefix.tokens() == 1200 and llm.calls == 0


async def test_while_the_llm_service_is_away_the_default_stands_in_until_it_answers() -> None:
    llm = Llm(783, down=2)
    prefix = BaselinePrefix(llm.ask, retry_first_s=0.01, retry_max_s=0.02)
    await prefix.start()
    assert prefix.tokens() == DEFAULT_PREFIX_TOKENS and not prefix.known
    await eventually(lambda: prefix.known)
    assert prefix.tokens() == 783 and llm.calls == 3
    await prefix.stop()


async def test_an_llm_service_without_the_rpc_leaves_the_default_for_good() -> None:
    llm = Llm(783, down=5, code="UNIMPLEMENTED")
    prefix = BaselinePrefix(llm.ask, retry_first_s=0.01)
    await prefix.start()
    assert prefix.tokens() == DEFAULT_PREFIX_TOKENS and prefix.known and llm.calls == 1
    await prefix.stop()

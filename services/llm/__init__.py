"""The llm service: coach.llm.v1.LlmService over any OpenAI-compatible upstream."""

"""The threads service: one provider conversation per user, the full history, bounded upstream context."""

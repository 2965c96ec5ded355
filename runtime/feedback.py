"""The feedback store the server records completions in: ``csound_assistant.feedback_store``,
under the runtime's name."""

from csound_assistant.feedback_store import MAX_ID, FeedbackStore, completion_key

__all__ = ["MAX_ID", "FeedbackStore", "completion_key"]

"""``data from-feedback``'s rows, under the name they had when the eval stage made them: the
producer is ``csound_assistant.data.from_feedback``."""

from csound_assistant.data.from_feedback import (MAX_ROW_BYTES, feedback_row, row_code,
                                                 rows_from_feedback, screen)

__all__ = ["MAX_ROW_BYTES", "feedback_row", "row_code", "rows_from_feedback", "screen"]

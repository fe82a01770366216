"""Text helpers of the conversation ops: record normalisation, cleaning, token counts, language, MinHash."""

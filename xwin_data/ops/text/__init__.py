"""Conversation text ops: cleaning, stats and language id, filters, splitting, nested subsets."""

"""Arrow columns -> model inputs: planning the feeds from the schema (plan, columns), decoding them, row seeds."""

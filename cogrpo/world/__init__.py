"""The embedded shapes world: drawn images, GenEval-style prompts and a detector for them."""

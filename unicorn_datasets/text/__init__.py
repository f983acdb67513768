"""Text at every entrance: hygiene, reserved tokens, shared word/sentence helpers."""

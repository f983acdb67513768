"""Stage-3 math (mean shift, c3), real-image embeddings and modality-gap statistics."""

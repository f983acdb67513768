"""Running a build: the context every stage shares (context), the shard runner (shards), the loop over the
registered stages (loop: `build`, `collect_seeds`) and rank 0's last step (finish: manifest, card, summary)."""

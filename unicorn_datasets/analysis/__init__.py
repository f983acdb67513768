"""Looking at what a build made: diversity/balance report, clustering, near-duplicate captions."""

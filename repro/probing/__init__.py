"""SUPERB probing: a learned weighted sum of frozen layers feeding a small task head."""

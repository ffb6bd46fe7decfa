"""The paper's outputs: every figure and table, the claim checks, checksums and the report."""

"""The gate: thresholds, the conditions they make, and the verdict with its exit code."""

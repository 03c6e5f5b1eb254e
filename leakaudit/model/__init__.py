"""The classifier under audit: the safe loading front door, the feature taps, the input shape."""

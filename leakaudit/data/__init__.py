"""Image sets: every input kind read into uint8 tensors with a manifest hash."""

"""The audit's stages in order (inputs → attack → matches → evidence → document), and the sequencer that runs them."""

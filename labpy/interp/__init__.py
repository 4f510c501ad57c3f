"""Looking inside models: capture of activations, head scores, ablations."""

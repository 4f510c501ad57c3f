"""Small models trained in the lab so that a question has a clean answer: grokking, superposition, MLP neurons."""

"""KV-cached decoding (greedy, sampling, beam search) and target scoring for both architectures."""

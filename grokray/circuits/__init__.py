"""Circuit analysis: logit lens, causal patching, inference-path comparison (plain torch)."""

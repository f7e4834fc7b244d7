"""The sweep service: specs, grokking-aware stopping, the Ray Tune driver, the classifier actor."""

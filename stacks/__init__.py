"""Infrastructure: one stack composed of one construct per concern (bucket, fleet)."""

"""Simulated instruments: physics of the samples and the streaming clients that play them to scanlens."""

"""``scanlens demo``: an application of the service, a simulated instrument and the scoring.

Not a simulator and not part of the service: it starts the service in-process, runs the simulator
as the operator would and scores the live maps against the ground truth (``scanlens.models.scoring``).
"""

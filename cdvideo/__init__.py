"""cdvideo: personalized video generation with ClassDiffusion concepts and AnimateDiff.

The package root stays import-light (no torch, no diffusers) so that `cdvideo --help`,
`cdvideo env` and `cdvideo eval` start quickly; heavy modules import their libraries themselves.
"""

__version__ = "0.1.0"

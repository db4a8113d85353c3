"""ClassDiffusion personalization tuning: data, losses (SPL) and the loop that writes a concept file."""

from cdvideo.train.config import ConceptData, TrainConfig

__all__ = ["ConceptData", "TrainConfig", "train"]


def train(config: TrainConfig, progress: bool = True, components: dict | None = None):
    """Run one tuning and write the concept file (imports torch and diffusers on first call)."""
    from cdvideo.train.loop import train as run_training

    return run_training(config, progress=progress, components=components)

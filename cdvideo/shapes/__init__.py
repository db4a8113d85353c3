"""The Shapes world: a synthetic text-to-video world, its judge, and the small model trained on it."""

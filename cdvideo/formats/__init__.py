"""Readers for weight files made by other tools, one module per foreign format.

    safe_load.py           bytes -> tensors: safetensors or `torch.load(weights_only=True)`, never code
    sniff.py               what kind of file is this (concept, Custom Diffusion, embedding, LoRA, motion module, base)
    custom_diffusion.py    ClassDiffusion / diffusers Custom Diffusion outputs, the original repository's delta files
    textual_inversion.py   diffusers learned_embeds and A1111 embeddings
    concepts.py            any concept-like file -> Concept (deltas against the loaded base)
    lora.py                SD 1.5 LoRA (peft, diffusers, kohya) bound to the video pipeline
    animatediff.py         original AnimateDiff motion checkpoints -> diffusers MotionAdapter
    single_file.py         single-file SD 1.5 checkpoints, read offline with local configs
"""

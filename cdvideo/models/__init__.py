"""Models: presets, where their weights are, and the one place that loads them.

    presets.py  the preset dataclass and its sources (YAML, model directory, cdvideo.yaml, single file)
    sources.py  built-in models, the motion registry, the HF cache; `locate(preset, motion) -> ModelFiles`
    loading.py  pipelines, training components, adapters, the motion UNet, schedulers, device and dtype
    tiny.py     the tiny random model, built offline

The names below are the package's API; `from cdvideo.models import load_preset` is the usual import.
"""

from cdvideo.models.loading import (check_controlnet, load_controlnet, load_image_encoder, load_ip_adapter_weights,
                                    load_motion_adapter, load_pipeline, load_tokenizer, load_training_components,
                                    make_scheduler, motion_unet, resolve_device, resolve_dtype, task_pipeline)
from cdvideo.models.presets import (BASE_COMPONENTS, MODEL_DIR_PRESET, MOTION_ADAPTER_SUBFOLDER, SCHEDULERS,
                                    ModelPreset, is_weight_file, list_presets, load_preset, preset_lora_specs,
                                    presets_dir, single_file_config, write_model_dir_defaults)
from cdvideo.models.sources import (BUILTIN_MODELS, BUILTIN_PREFIX, SD_VAE_SCALE_FACTOR, ModelFiles, MotionEntry,
                                    adapter_location, check_available, locate, missing_weights, motion_max_frames,
                                    motion_modules_dir, motion_registry, resolve_motion, resolve_registered, resolve_source,
                                    shapes_model_dir, vae_scale_factor)

__all__ = [
    "BASE_COMPONENTS", "BUILTIN_MODELS", "BUILTIN_PREFIX", "MODEL_DIR_PRESET", "MOTION_ADAPTER_SUBFOLDER",
    "SCHEDULERS", "SD_VAE_SCALE_FACTOR", "ModelFiles", "ModelPreset", "MotionEntry", "adapter_location",
    "check_available", "check_controlnet", "is_weight_file", "list_presets", "load_controlnet", "load_image_encoder",
    "load_ip_adapter_weights", "load_motion_adapter",
    "load_pipeline", "load_preset",
    "load_tokenizer", "load_training_components", "locate", "make_scheduler", "missing_weights",
    "motion_max_frames", "motion_modules_dir", "motion_registry", "motion_unet", "preset_lora_specs",
    "presets_dir", "resolve_device", "resolve_dtype", "resolve_motion", "resolve_registered", "resolve_source", "shapes_model_dir",
    "single_file_config", "task_pipeline", "vae_scale_factor", "write_model_dir_defaults",
]

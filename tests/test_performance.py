"""Memory-saving defaults give the same model, and the same frames, as plain diffusers."""

import torch

from cdvideo.models.tiny import build_tiny_components


def test_motion_unet_shares_tensors_and_equals_diffusers_conversion():
    """cdvideo's UNetMotionModel takes the 2D UNet's and adapter's tensors (no copies) and equals from_unet2d's."""
    from diffusers import UNetMotionModel

    from cdvideo.models import motion_unet

    parts = build_tiny_components()
    unet, adapter = parts["unet"], parts["motion_adapter"]
    expected = UNetMotionModel.from_unet2d(unet, adapter).state_dict()
    model = motion_unet(unet, adapter)
    ours = model.state_dict()
    assert ours.keys() == expected.keys()
    assert all(torch.equal(ours[k], expected[k]) and ours[k].dtype == expected[k].dtype for k in ours)
    # Shared storage: the conversion allocated no second copy of the weights.
    assert model.conv_in.weight.data_ptr() == unet.conv_in.weight.data_ptr()
    motion = next(model.down_blocks[0].motion_modules.parameters())
    assert motion.data_ptr() == next(adapter.down_blocks[0].motion_modules.parameters()).data_ptr()
    assert not any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def _spy_on_from_unet2d(monkeypatch) -> list:
    """Record each UNetMotionModel.from_unet2d call's `load_weights` (False: cdvideo's meta build)."""
    from diffusers import UNetMotionModel

    calls = []
    original = UNetMotionModel.from_unet2d.__func__

    def spy(cls, unet, motion_adapter=None, load_weights=True):
        calls.append(load_weights)
        return original(cls, unet, motion_adapter, load_weights=load_weights)

    monkeypatch.setattr(UNetMotionModel, "from_unet2d", classmethod(spy))
    return calls


def test_motion_unet_falls_back_when_the_adapter_does_not_fit(monkeypatch):
    """A state dict that does not map one to one takes diffusers' own conversion (and its error)."""
    import pytest
    from diffusers import MotionAdapter

    from cdvideo.models import motion_unet

    parts = build_tiny_components()
    wrong = MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_norm_num_groups=32,
                          motion_num_attention_heads=2, use_motion_mid_block=True, motion_max_seq_length=32)
    calls = _spy_on_from_unet2d(monkeypatch)
    with pytest.raises(ValueError, match="Incompatible Motion Adapter"):
        motion_unet(parts["unet"], wrong)
    assert calls == [False, True]  # the meta build first, then diffusers' own conversion


def test_motion_unet_equals_diffusers_when_its_own_build_fails(monkeypatch):
    """When taking the tensors over fails, the model is diffusers' conversion, weight for weight."""
    from diffusers import UNetMotionModel

    from cdvideo.models import motion_unet

    parts = build_tiny_components()
    unet, adapter = parts["unet"], parts["motion_adapter"]
    expected = UNetMotionModel.from_unet2d(unet, adapter).state_dict()
    original = UNetMotionModel.load_state_dict

    def refuse_assign(self, state, *args, assign=False, **kwargs):
        if assign:
            raise RuntimeError("no assign")
        return original(self, state, *args, assign=assign, **kwargs)

    monkeypatch.setattr(UNetMotionModel, "load_state_dict", refuse_assign)
    calls = _spy_on_from_unet2d(monkeypatch)
    ours = motion_unet(unet, adapter).state_dict()
    assert calls == [False, True]
    assert ours.keys() == expected.keys() and all(torch.equal(ours[k], expected[k]) for k in ours)

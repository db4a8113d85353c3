"""Prompt files -> items, without loading any model: formats, expansion, validation messages, names."""

import json
import textwrap

import pytest

from cdvideo.batch import plan_batch
from cdvideo.cli import main
from cdvideo.errors import ConfigError
from cdvideo.prompts import read_prompt_file
from conftest import EXAMPLE_CONCEPT

TINY = {"model": "tiny", "num_frames": 4, "height": 32, "width": 32, "steps": 2}


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_txt_skips_comments_and_blank_lines(tmp_path):
    path = write(tmp_path, "p.txt", "# a comment\na dog running\n\n   \n  a cat sleeping  \n")
    requests = read_prompt_file(path)
    assert [r.fields["prompt"] for r in requests] == ["a dog running", "a cat sleeping"]
    assert [r.source for r in requests] == [f"{path}, line 2", f"{path}, line 5"]


def test_jsonl_defaults_seeds_and_strength_sweep_expand(tmp_path):
    path = write(tmp_path, "p.jsonl", f"""\
        {{"defaults": {{"steps": 3, "concepts": [{{"path": "{EXAMPLE_CONCEPT}", "strength": [0, 0.5, 1]}}]}}}}
        {{"prompt": "a <new1> dog", "seed": [1, 2]}}
        {{"prompt": "a <new1> dog swimming", "seed": 7, "steps": 5, "concepts": []}}
    """)
    requests = read_prompt_file(path)
    first = [(r.fields["concepts"][0].strength, r.fields["seed"]) for r in requests[:6]]
    assert first == [(0.0, 1), (0.0, 2), (0.5, 1), (0.5, 2), (1.0, 1), (1.0, 2)]
    assert all(r.fields["steps"] == 3 for r in requests[:6])
    assert requests[6].fields == {"prompt": "a <new1> dog swimming", "seed": 7, "steps": 5, "concepts": []}


def test_yaml_seeds_beyond_2_63_and_cli_seeds_replace_the_files(tmp_path):
    path = write(tmp_path, "p.yaml", """\
        defaults: {steps: 2}
        prompts:
          - a dog
          - {prompt: [a cat, a bird], seed: 18446744073709551615, name: birds}
    """)
    requests = read_prompt_file(path)
    assert [(r.fields["prompt"], r.fields.get("seed")) for r in requests] == [
        ("a dog", -1), ("a cat", 2**64 - 1), ("a bird", 2**64 - 1)]
    assert requests[1].name == "birds"
    assert [r.fields["seed"] for r in read_prompt_file(path, seeds=[5, 6])] == [5, 6, 5, 6, 5, 6]


def test_every_problem_names_file_entry_and_field(tmp_path):
    path = write(tmp_path, "p.yaml", """\
        - {prompt: a dog, stepz: 3}
        - {prompt: a dog, steps: two}
        - {prompt: a dog, seed: 2.5}
        - {prompt: a dog, concepts: [{path: x.safetensors, strength: high}]}
        - fine prompt
    """)
    with pytest.raises(ConfigError) as caught:
        read_prompt_file(path)
    message = str(caught.value)
    assert "4 problems" in message
    assert f"{path}, entry 1: unknown field(s) 'stepz'" in message
    assert f"{path}, entry 2: field 'steps': expected an integer, got 'two'" in message
    assert f"{path}, entry 3: field 'seed'" in message
    assert f"{path}, entry 4: field 'concepts'" in message and "'high'" in message


def test_bad_json_line_is_named(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"prompt": "a dog"}\n{"prompt": "a cat",}\n')
    with pytest.raises(ConfigError, match=r"p\.jsonl, line 2: not valid JSON"):
        read_prompt_file(path)


def test_settings_are_validated_before_any_model_loads(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"prompt": "a dog"}\n{"prompt": "a cat", "height": 30}\n')
    with pytest.raises(ConfigError, match=r"p\.jsonl, line 2: height must be a positive multiple of 8"):
        plan_batch(path, {"model": "tiny"})


def test_command_line_settings_win_over_the_files(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"prompt": "a cat", "height": 30, "steps": 9}\n')
    assert (plan_batch(path, TINY)[0].settings.height, plan_batch(path, TINY)[0].settings.steps) == (32, 2)


def test_missing_concept_fails_only_its_item(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"prompt": "a dog"}\n{"prompt": "a cat", "concepts": ["gone.safetensors"]}\n')
    items = plan_batch(path, TINY)
    assert items[0].error is None
    assert "concept file not found" in items[1].error and "gone.safetensors" in items[1].error


def test_file_names_are_safe_and_stable(tmp_path):
    path = write(tmp_path, "p.txt", "../../etc/passwd; rm -rf /\nA Dog!\nA Dog!\n")
    items = plan_batch(path, TINY, seeds=[3])
    assert [i.video_name for i in items] == ["0000-etc-passwd-rm-rf-3.mp4", "0001-a-dog-3.mp4", "0002-a-dog-3.mp4"]
    assert [i.name for i in plan_batch(path, TINY, seeds=[3])] == [i.name for i in items]


def test_random_seed_is_drawn_and_marked(tmp_path):
    items = plan_batch(write(tmp_path, "p.txt", "a dog\n"), TINY, seeds=[-1])
    assert items[0].random_seed and 0 <= items[0].settings.seed < 2**64
    assert items[0].name.endswith("-rand")


ANIMATEDIFF = """\
# motion module v1_15 (as in AnimateDiff's configs/prompts/v1/*.yaml)
- dreambooth_path: "models/DreamBooth_LoRA/toonyou_beta6.safetensors"
  lora_model_path: ""
  inference_config: "configs/inference/inference-v1.yaml"
  motion_module:    "models/Motion_Module/mm_sd_v15.ckpt"
  seed: [10788741199826055526, 6520604954829636163]
  steps: 25
  guidance_scale: 8
  W: 256
  H: 384
  L: 8
  prompt:
    - "best quality, masterpiece, 1girl"
    - "best quality, 1boy, formal"
  n_prompt:
    - "worst quality, low quality, letterboxed"
- motion_module: "models/Motion_Module/mm_sd_v15_v2.ckpt"
  motion_module_lora_configs:
    - path: "models/MotionLoRA/v2_lora_ZoomIn.ckpt"
      alpha: 1.0
  lora_model_path: "models/DreamBooth_LoRA/style.safetensors"
  seed: 45987230
  steps: 25
  guidance_scale: 7.5
  prompt: ["photo of coastline"]
  n_prompt: ["blur"]
"""


def test_animatediff_prompt_yaml_is_read_as_is(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    path = write(tmp_path / "configs", "v1.yaml", ANIMATEDIFF)
    (tmp_path / "configs" / "models" / "DreamBooth_LoRA").mkdir(parents=True)
    (tmp_path / "configs" / "models" / "DreamBooth_LoRA" / "toonyou_beta6.safetensors").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    requests = read_prompt_file(path)
    first, second, third = requests
    # prompts, negative prompts and seeds are zipped, as AnimateDiff's animate.py does
    assert (first.fields["prompt"], first.fields["seed"]) == ("best quality, masterpiece, 1girl", 10788741199826055526)
    assert (second.fields["prompt"], second.fields["seed"]) == ("best quality, 1boy, formal", 6520604954829636163)
    assert second.fields["negative_prompt"] == "worst quality, low quality, letterboxed"
    assert (first.fields["width"], first.fields["height"], first.fields["num_frames"]) == (256, 384, 8)
    assert (first.fields["steps"], first.fields["guidance_scale"]) == (25, 8)
    # beside the YAML when it is there, else relative to the working directory as AnimateDiff has it
    assert first.fields["model"] == str(tmp_path / "configs" / "models/DreamBooth_LoRA/toonyou_beta6.safetensors")
    motion = [v for k, v in first.fields.items() if k in ("motion", "motion_adapter")]
    assert motion == ["models/Motion_Module/mm_sd_v15.ckpt"]
    assert first.unsupported is None
    # the motion LoRA and the LoRA of the second entry go to their own settings (issue 3's loaders)
    assert third.fields["motion_loras"] == [{"path": "models/MotionLoRA/v2_lora_ZoomIn.ckpt", "strength": 1.0}]
    assert third.fields["loras"] == [{"path": "models/DreamBooth_LoRA/style.safetensors", "strength": 0.8}]


def test_animatediff_seed_count_mismatch_is_an_error(tmp_path):
    path = write(tmp_path, "a.yaml", """\
        - motion_module: mm.ckpt
          seed: [1, 2, 3]
          prompt: [a, b]
          n_prompt: [""]
    """)
    with pytest.raises(ConfigError, match=r"a\.yaml, entry 1: field 'seed': 3 seeds for 2 prompts"):
        read_prompt_file(path)


def test_dry_run_lists_items_and_writes_nothing(tmp_path, capsys):
    path = write(tmp_path, "p.yaml", f"- {{prompt: 'a <new1> dog', concepts: ['{EXAMPLE_CONCEPT}:0,1']}}\n")
    out = tmp_path / "out"
    code = main(["batch", str(path), "--out", str(out), "--model", "tiny", "--seeds", "1,2", "--dry-run"])
    printed = capsys.readouterr().out
    assert code == 0 and not out.exists()
    assert "4 items (dry run" in printed
    assert "tiny-dog.safetensors:0 " in printed and "tiny-dog.safetensors:1 " in printed


def test_cli_reports_file_problems_in_one_message(tmp_path, capsys):
    path = write(tmp_path, "p.jsonl", json.dumps({"prompt": "a dog", "width": 30}) + "\n")
    assert main(["batch", str(path), "--out", str(tmp_path / "o"), "--model", "tiny"]) == 2
    assert f"{path}, line 1: width must be a positive multiple of 8" in capsys.readouterr().err

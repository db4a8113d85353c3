"""Bad input, as a new (or careless, or hostile) user gives it: the checklist of issue 18. Keep it growing.

Each case of the table runs one command and asserts what the user sees and keeps: a non-zero exit, one
line on stderr naming the problem, no model loaded where the input allows refusing before, and every
file the user had still there, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
from pathlib import Path

import numpy as np
import pytest
import torch

from cdvideo.cli import main
from conftest import EXAMPLE_CONCEPT

QUICK = ["--model", "tiny", "--num-frames", "4", "--height", "32", "--width", "32", "--steps", "1", "--quiet"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones too) -> hash of its bytes; folders as '<dir>'."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        found[name] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def user_files(tmp_path, monkeypatch):
    """A working directory holding a user's folder, video, notes and sidecar-lookalike, all precious."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "precious.txt").write_text("do not lose me")
    (tmp_path / "holiday.mp4").write_bytes(b"the user's own video")
    (tmp_path / "notes.json").write_text('{"mine": true}')
    (tmp_path / "x.json").write_text('{"also": "mine"}')
    return tmp_path


@pytest.fixture
def no_model_loading(monkeypatch):
    import cdvideo.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before validation finished")

    monkeypatch.setattr(cdvideo.models, "load_pipeline", refuse)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(code, err, message):
    assert code != 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert message in lines[0], lines[0]
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------------
# 1. Output paths: nothing a user owns is deleted or overwritten; refused before loading.

RENDER_OUT_CASES = [
    # (--out, extra flags, message)
    ("photos", ["--format", "frames"], "existing folder that cdvideo did not write"),
    ("photos", [], "existing folder that cdvideo did not write"),
    (".", ["--format", "frames"], "names a folder, not a video"),
    ("..", ["--format", "frames"], "names a folder, not a video"),
    ("/dev/full", ["--format", "frames"], "not a plain file or folder"),
    ("/proc/x.mp4", [], "cannot write in /proc"),
    ("holiday.mp4", [], "cdvideo did not write it"),
    ("notes.mp4", [], "notes.json exists and is not a cdvideo sidecar"),
    ("x.json", ["--format", "gif"], "does not end in .gif"),
    ("x.json", ["--format", "mp4"], "does not end in .mp4"),
    ("clip.mp4", ["--format", "frames"], "a folder of PNG frames takes a path without an extension"),
    ("holiday.mp4/x.mp4", [], "holiday.mp4 is not a folder"),
]


@pytest.mark.parametrize("out,extra,message", RENDER_OUT_CASES, ids=[c[0] + " " + " ".join(c[1]) for c in RENDER_OUT_CASES])
def test_render_refuses_outputs_it_did_not_write(capsys, user_files, no_model_loading, out, extra, message):
    before = snapshot(user_files)
    code, _, err = run_cli(capsys, "render", *QUICK, "--prompt", "a dog", "--out", out, *extra)
    assert_one_line(code, err, message)
    assert snapshot(user_files) == before


def test_existing_user_folder_survives_out_untouched(capsys, user_files):
    """The reported data loss: `--out DIR` emptied the user's folder and filled it with frames."""
    before = snapshot(user_files)
    code, _, err = run_cli(capsys, "render", *QUICK, "--prompt", "a dog", "--out", "photos", "--format", "frames")
    assert code == 2 and "did not write" in err
    assert (user_files / "photos" / "precious.txt").read_text() == "do not lose me"
    assert snapshot(user_files) == before
    # Even past every check (a library caller), the writer itself refuses to replace the folder.
    from cdvideo.errors import UnsafeOutputError
    from cdvideo.export import write_video

    with pytest.raises(UnsafeOutputError):
        write_video(np.zeros((2, 8, 8, 3), np.uint8), user_files / "photos", fps=8, format="frames")
    assert snapshot(user_files) == before


def test_a_cdvideo_output_of_the_same_name_is_replaced(capsys, user_files):
    """What cdvideo wrote itself (a video its sidecar names, a marked frames folder) may be rendered again."""
    for out, extra in (("dog.mp4", []), ("frames", ["--format", "frames"])):
        for seed in ("1", "2"):
            code, _, err = run_cli(capsys, "render", *QUICK, "--prompt", "a dog", "--seed", seed, "--out", out, *extra)
            assert code == 0, err
        sidecar = json.loads((user_files / (Path(out).stem + ".json")).read_text())
        assert sidecar["settings"]["seed"] == 2


def _limit_file_size(monkeypatch, limit: int) -> None:
    """From now on, writes past `limit` bytes fail as on a full disk (RLIMIT_FSIZE: ffmpeg, a child, dies
    of SIGXFSZ mid-file; Python gets EFBIG), only while the video is encoded."""
    import cdvideo.export

    encode = cdvideo.export.encode_video

    def limited(*args, **kwargs):
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
        try:
            return encode(*args, **kwargs)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))

    monkeypatch.setattr("cdvideo.render.encode_video", limited)


@pytest.mark.parametrize("format", ["mp4", "gif"])
def test_failed_encode_keeps_the_previous_video_and_exits_non_zero(capsys, user_files, monkeypatch, format):
    """The reported corruption: a full disk during the encode renamed a truncated file over a good video
    and wrote a sidecar claiming success, exit 0."""
    out = f"dog.{format}"
    flags = [*QUICK[:-5], "--height", "64", "--width", "64", "--steps", "1", "--quiet"]
    code, _, err = run_cli(capsys, "render", *flags, "--prompt", "a dog", "--seed", "1", "--out", out)
    assert code == 0, err
    before = snapshot(user_files)
    _limit_file_size(monkeypatch, 600)
    code, _, err = run_cli(capsys, "render", *flags, "--prompt", "a dog", "--seed", "2", "--out", out)
    assert_one_line(code, err, "could not write")
    assert snapshot(user_files) == before  # old video and old sidecar, nothing left behind
    assert json.loads((user_files / "dog.json").read_text())["settings"]["seed"] == 1


# ---------------------------------------------------------------------------------------------------
# 2-3. Non-finite numbers and wrong types, from flags, sidecars, presets and concept files: one line, before loading.

def _sidecar(tmp: Path, **settings) -> Path:
    """A cdvideo sidecar whose settings hold `settings` (as an edited or hostile one would)."""
    path = tmp / "edited.json"
    base = {"prompt": "a dog", "model": "tiny", "num_frames": 4, "height": 32, "width": 32, "steps": 1}
    path.write_text(json.dumps({"format": "cdvideo.render", "video": "edited.mp4", "settings": {**base, **settings}}))
    return path


def _concept(tmp: Path, change: str) -> Path:
    """The example concept, damaged the way `change` says."""
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    path = tmp / f"{change}.safetensors"
    with safe_open(EXAMPLE_CONCEPT, framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(EXAMPLE_CONCEPT)
    if change == "nan_delta":
        name = next(k for k in tensors if k.startswith("unet."))
        tensors[name] = tensors[name].clone()
        tensors[name][0, 0] = float("nan")
    elif change == "inf_token":
        name = next(k for k in tensors if k.startswith("token."))
        tensors[name] = tensors[name].clone()
        tensors[name][0, 0] = float("inf")
    elif change == "class_words_number":
        metadata["class_words"] = json.dumps({json.loads(metadata["tokens"])[0]: 5})
    if change in ("nan_delta", "inf_token", "class_words_number"):
        save_file(tensors, path, metadata=metadata)
        return path
    raw = Path(EXAMPLE_CONCEPT).read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    if change == "header_not_json":
        body = b"{not json" + b" " * (length - 9)
    elif change == "metadata_string":
        header["__metadata__"] = "a string"
        body = json.dumps(header).encode()
    elif change == "entry_without_shape":
        name = next(k for k in header if k != "__metadata__")
        del header[name]["shape"]
        body = json.dumps(header).encode()
    elif change == "torch_zip":
        torch.save({"x": torch.zeros(2)}, path)
        return path
    path.write_bytes(len(body).to_bytes(8, "little") + body + raw[8 + length:])
    return path


def _preset(tmp: Path, **changes) -> Path:
    import yaml

    data = yaml.safe_load((Path(__file__).parent.parent / "cdvideo" / "presets" / "tiny.yaml").read_text())
    path = tmp / "preset.yaml"
    path.write_text(yaml.safe_dump({**data, **changes}))
    return path


SETTING_CASES = [
    # (name, argv builder taking tmp_path, message)
    ("guidance nan", lambda t: ["--guidance-scale", "nan"], "field 'guidance_scale': expected a finite number, got nan"),
    ("guidance inf", lambda t: ["--guidance-scale", "inf"], "field 'guidance_scale': expected a finite number, got inf"),
    ("rescale nan", lambda t: ["--guidance-rescale", "nan"], "field 'guidance_rescale': expected a finite number"),
    ("concept_start nan", lambda t: ["--concept-start", "nan"], "field 'concept_start': expected a finite number"),
    ("strength nan", lambda t: ["--concept", f"{EXAMPLE_CONCEPT}:nan"], "field 'strength': expected a finite number"),
    ("strength inf", lambda t: ["--concept", f"{EXAMPLE_CONCEPT}:inf"], "field 'strength': expected a finite number"),
    ("lora strength -inf", lambda t: ["--lora", "x.safetensors:-inf"], "field 'strength': expected a finite number"),
    ("concept NaN delta", lambda t: ["--concept", _concept(t, "nan_delta")], "holds NaN or infinite values"),
    ("concept Inf token", lambda t: ["--concept", _concept(t, "inf_token")], "holds NaN or infinite values"),
    ("concept header not JSON", lambda t: ["--concept", _concept(t, "header_not_json")], "header_not_json.safetensors"),
    ("concept metadata a string", lambda t: ["--concept", _concept(t, "metadata_string")], "metadata_string.safetensors"),
    ("concept entry without shape", lambda t: ["--concept", _concept(t, "entry_without_shape")],
     "entry_without_shape.safetensors"),
    ("concept torch zip named .safetensors", lambda t: ["--concept", _concept(t, "torch_zip")], "torch_zip.safetensors"),
    ("concept class word a number", lambda t: ["--concept", _concept(t, "class_words_number")],
     "class_words must map each token to a class word"),
    ("sidecar steps '2'", lambda t: ["--from", _sidecar(t, steps="2")], "field 'steps': expected an integer, got '2'"),
    ("sidecar seed 1.5", lambda t: ["--from", _sidecar(t, seed=1.5)], "field 'seed': expected an integer, got 1.5"),
    ("sidecar strength 'x'", lambda t: ["--from", _sidecar(t, concepts=[{"path": EXAMPLE_CONCEPT, "strength": "x"}])],
     "field 'strength': expected a finite number, got 'x'"),
    ("sidecar low_vram 'no'", lambda t: ["--from", _sidecar(t, low_vram="no")], "field 'low_vram': expected true or false"),
    ("sidecar video a number", lambda t: ["--from", _write(t / "s.json", '{"format": "cdvideo.render", "video": 5, '
                                                                          '"settings": {}}')], "'video' must be a file name"),
    ("sidecar NaN literal", lambda t: ["--from", _write(t / "s.json", '{"format": "cdvideo.render", "video": "a.mp4", '
                                                                      '"settings": {"guidance_scale": NaN}}')],
     "NaN is not a JSON number"),
    ("sidecar not JSON", lambda t: ["--from", _write(t / "s.json", "{oops")], "not valid JSON"),
    ("sidecar binary", lambda t: ["--from", _write(t / "s.json", b"\x89PNG\r\n\x1a\n\xff\xfe")], "not UTF-8 text"),
    ("sidecar huge value quoted short", lambda t: ["--from", _sidecar(t, scheduler=["x" * 100000])],
     "expected text, got ['xxxxxxxx"),
    ("preset height 'abc'", lambda t: ["--model", _preset(t, height="abc")], "field 'height': expected an integer, got 'abc'"),
    ("preset guidance .nan", lambda t: ["--model", _preset(t, guidance_scale=float("nan"))],
     "field 'guidance_scale': expected a finite number"),
]


def _write(path: Path, content) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


@pytest.mark.parametrize("name,argv,message", SETTING_CASES, ids=[c[0] for c in SETTING_CASES])
def test_bad_setting_is_one_line_before_loading(capsys, user_files, no_model_loading, name, argv, message):
    extra = [str(a) for a in argv(user_files)]
    before = snapshot(user_files)
    flags = [] if "--from" in extra else [*QUICK, "--prompt", "a <new1> dog"]
    code, _, err = run_cli(capsys, "render", *flags, *extra, "--out", "out.mp4")
    assert_one_line(code, err, message)
    assert len(err) < 400  # a huge value is quoted by a short prefix
    assert snapshot(user_files) == before


# ---------------------------------------------------------------------------------------------------
# 3-4. Prompt files for `cdvideo batch`: wrong types, undecodable or hostile files, a taken --out; the
# memory check per item. Every problem of a file is listed at once, one line per problem.

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
) + "prompts: [a dog]\n"

BATCH_CASES = [
    # (name, prompt file name, content, extra flags, message)
    ("binary prompt file", "p.txt", b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00", [], "not UTF-8 text"),
    ("UTF-16 prompt file", "p.yaml", "- a dog\n".encode("utf-16"), [], "UTF-16 text; save the prompt file as UTF-8"),
    ("billion laughs", "p.yaml", LAUGHS, [], "expands to more than 1000000 values"),
    ("deep nesting", "p.yaml", "- " + "[" * 200 + "]" * 200 + "\n", [], "nested more than 32 levels"),
    ("deep JSON nesting", "p.jsonl", '{"prompt": "a", "x": ' + "[" * 100000 + "]" * 100000 + "}\n", [], "line 1"),
    ("low_vram 'no'", "p.yaml", '- {prompt: a dog, low_vram: "no"}\n', [], "field 'low_vram': expected true or false, got 'no'"),
    ("steps '2'", "p.yaml", '- {prompt: a dog, steps: "2"}\n', [], "field 'steps': expected an integer, got '2'"),
    ("guidance .inf", "p.yaml", "- {prompt: a dog, guidance_scale: .inf}\n", [], "field 'guidance_scale': expected a finite number"),
    ("JSONL NaN", "p.jsonl", '{"prompt": "a dog", "guidance_scale": NaN}\n', [], "NaN is not a number"),
    ("strength nan in text", "p.yaml", f"- {{prompt: a dog, concepts: '{EXAMPLE_CONCEPT}:nan'}}\n", [],
     "strength must be a finite number"),
    ("strength list with .nan", "p.yaml", f"- {{prompt: a dog, concepts: {{path: {EXAMPLE_CONCEPT}, strength: [1, .nan]}}}}\n",
     [], "strength must be a finite number"),
    ("AnimateDiff lora_alpha abc", "p.yaml", "- prompt: [a dog]\n  n_prompt: [bad]\n  lora_model_path: x.safetensors\n"
                                             "  lora_alpha: abc\n", [], "field 'lora_alpha': expected a finite number, got 'abc'"),
    ("huge key quoted short", "p.jsonl", '{"prompt": "a dog", "' + "k" * 100000 + '": 1}\n', [], "unknown field(s) 'kkkk"),
    ("flag guidance nan", "p.yaml", "- a dog\n", ["--guidance-scale", "nan"], "expected a finite number, got nan"),
    ("--out an existing file", "p.yaml", "- a dog\n", ["--out", "holiday.mp4"], "exists and is not a folder"),
    ("--out a user folder", "p.yaml", "- a dog\n", ["--out", "photos"], "a folder of other files"),
    ("prompt file missing", "absent.yaml", None, [], "prompt file not found"),
]


@pytest.mark.parametrize("name,file,content,extra,message", BATCH_CASES, ids=[c[0] for c in BATCH_CASES])
def test_bad_prompt_file_is_refused_before_loading(capsys, user_files, no_model_loading, name, file, content,
                                                   extra, message):
    if content is not None:
        _write(user_files / file, content)
    before = snapshot(user_files)
    out = [] if "--out" in extra else ["--out", "run"]
    code, _, err = run_cli(capsys, "batch", file, *out, "--model", "tiny", "--quiet", "--no-gallery", *extra)
    assert code == 2 and "Traceback" not in err, err
    assert message in err, err
    assert len(err) < 600 and err.startswith("error: ")
    assert snapshot(user_files) == before


def test_oversized_prompt_file_is_refused_unread(capsys, user_files, no_model_loading, monkeypatch):
    monkeypatch.setattr("cdvideo.config.MAX_INPUT_BYTES", 1000)
    monkeypatch.setattr("cdvideo.config.read_text.__defaults__", ("file", 1000))
    (user_files / "p.txt").write_text("a dog\n" * 1000)
    code, _, err = run_cli(capsys, "batch", "p.txt", "--out", "run", "--model", "tiny", "--quiet")
    assert_one_line(code, err, "too large for a prompt file")


def test_batch_memory_check_fails_the_item_in_its_row_before_loading(capsys, user_files, no_model_loading):
    """`num_frames: 1000000` loaded the model and died out of memory; now the item fails alone, unloaded."""
    (user_files / "p.yaml").write_text("- {prompt: a dog, num_frames: 1000000}\n- {prompt: a cow, width: 100000, height: 100000}\n")
    code, out, err = run_cli(capsys, "batch", "p.yaml", "--out", "run", "--model", "tiny", "--quiet", "--no-gallery")
    assert code == 1, err
    records = [json.loads(line) for line in (user_files / "run" / "manifest.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["failed", "failed"]
    assert all("not enough memory" in r["error"] for r in records)


# ---------------------------------------------------------------------------------------------------
# 5. New tokens are checked as the tokenizer tokenizes: `dog` is stored as `dog</w>`.

@pytest.fixture
def no_training_load(monkeypatch):
    import cdvideo.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before validation finished")

    monkeypatch.setattr(cdvideo.models.loading, "_load_base_components", refuse)
    monkeypatch.setattr(cdvideo.models, "load_pipeline", refuse)


def _photos(folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(exist_ok=True)
    for index in range(2):
        Image.fromarray(np.full((64, 64, 3), 40 * index, np.uint8)).save(folder / f"{index}.png")
    return folder


TRAIN_CASES = [
    ("--token dog", ["--token", "dog"], "token 'dog' is already a word or word-piece of the tokenizer (dog</w>)"),
    ("--token Running", ["--token", "Running"], "use a new token such as <running1>"),
    ("--learning-rate nan", ["--learning-rate", "nan"], "field 'learning_rate': expected a finite number, got nan"),
    ("--spl-weight inf", ["--spl-weight", "inf"], "field 'spl_weight': expected a finite number, got inf"),
]


@pytest.mark.parametrize("name,extra,message", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_before_loading(capsys, user_files, no_training_load, name, extra, message):
    _photos(user_files / "dog-photos")
    before = snapshot(user_files)
    code, _, err = run_cli(capsys, "train", "--model", "tiny", "--images", "dog-photos", "--class-word", "dog",
                           "--out", "dog.safetensors", "--steps", "1", "--quiet", *extra)
    assert_one_line(code, err, message)
    assert snapshot(user_files) == before


def test_check_new_token_asks_the_tokenizer(tiny_pipeline):
    from cdvideo.concept import check_new_token
    from cdvideo.errors import InjectionError

    for word in ("dog", "Dog", "running"):
        with pytest.raises(InjectionError, match="already a word"):
            check_new_token(tiny_pipeline.tokenizer, word)
    for new in ("<new1>", "<dog1>", "sks"):
        check_new_token(tiny_pipeline.tokenizer, new)


def test_concept_whose_token_is_a_word_is_refused(capsys, user_files, tiny_pipeline):
    from cdvideo.concept import save_concept
    from conftest import make_concept

    path = save_concept(make_concept(tiny_pipeline, token="dog"), user_files / "dog-token.safetensors")
    code, _, err = run_cli(capsys, "render", *QUICK, "--prompt", "a dog", "--concept", path, "--out", "dog.mp4")
    assert_one_line(code, err, "use a new token such as <dog1>")
    assert not (user_files / "dog.mp4").exists()


# ---------------------------------------------------------------------------------------------------
# 7. eval: a tiny, corrupt or odd input is an error in its own row; the run goes on and exits 1.

def _good_video(path: Path) -> Path:
    from cdvideo.export import write_video

    rng = np.random.default_rng(0)
    return write_video((rng.random((4, 32, 32, 3)) * 255).astype(np.uint8), path, fps=8)


def _eval_input(tmp: Path, kind: str) -> Path:
    from PIL import Image

    if kind == "2x2 gif":
        path = tmp / "tiny.gif"
        frames = [Image.fromarray(np.full((2, 2, 3), 60 * i, np.uint8)) for i in range(4)]
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=125)
        return path
    if kind == "corrupt png in frames folder":
        folder = tmp / "frames"
        folder.mkdir()
        for i in range(3):
            Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(folder / f"{i:05d}.png")
        (folder / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
        return folder
    if kind == "truncated mp4":
        path = tmp / "cut.mp4"
        path.write_bytes(_good_video(tmp / "whole.mp4").read_bytes()[:300])
        (tmp / "whole.mp4").unlink()
        return path
    manifest = tmp / "run" / "manifest.jsonl"
    manifest.parent.mkdir()
    _good_video(manifest.parent / "ok.mp4")
    line = {"manifest video 5": '{"index": 0, "status": "done", "video": 5}',
            "manifest without keys": '{"index": 0}',
            "manifest video a list": '{"index": 0, "status": "done", "video": ["a"]}',
            "manifest not JSON": "{oops"}[kind]
    manifest.write_text(line + '\n{"index": 1, "status": "done", "video": "ok.mp4"}\n')
    return manifest


EVAL_CASES = ["2x2 gif", "corrupt png in frames folder", "truncated mp4", "manifest video 5", "manifest without keys",
              "manifest video a list", "manifest not JSON"]


@pytest.mark.parametrize("kind", EVAL_CASES)
def test_eval_reports_a_bad_video_in_its_row_and_goes_on(capsys, tmp_path, kind):
    bad = _eval_input(tmp_path, kind)
    good = _good_video(tmp_path / "good.mp4")
    code, out, err = run_cli(capsys, "eval", bad, good, "--metrics", "temporal_flickering,warping_error", "--no-plots")
    assert code == 1, err
    assert "Traceback" not in err and "could not be evaluated" in err
    assert "good.mp4" in out  # the run went on past the bad one

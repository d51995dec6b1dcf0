"""Serving a vision-language model: image_url content parts in /v1/chat/completions (data:
URLs, files under serve.image_dir), its limits and refusals, through the official openai
client; and `tunesmith chat --image`."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import openai
import pytest
from helpers import run_config, start, train_run
from vlm_helpers import build_qwen2_vl, write_colour_data

pytestmark = pytest.mark.usefixtures("one_thread")
QUESTION = "What colour is this?"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny Qwen2-VL, and a LoRA run of it in an adapters folder."""
    root = tmp_path_factory.mktemp("vlm-serve")
    model_dir = build_qwen2_vl(root / "model")
    data = write_colour_data(root / "data")
    config = run_config(
        root, model_dir, data, "colours", "train.max_steps=8", "train.learning_rate=5e-3",
        "data.cutoff_len=256", f"output.dir={root / 'adapters'}",
    )  # fmt: skip
    result = train_run(config)
    return {"model": model_dir, "adapters": root / "adapters", "run": result.run.root,
            "media": data.parent / "media"}  # fmt: skip


@pytest.fixture(scope="module")
def server(trained):
    live = start(
        trained["model"],
        trained["adapters"],
        image_dir=str(trained["media"]),
        max_images=2,
        max_image_bytes=40_000,
        max_image_pixels=150 * 150,
        max_body_bytes=400_000,
        max_prompt_tokens=400,
    )
    yield live
    live.stop()


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def ask(client, model: str, url: str, **kwargs):
    return client.chat.completions.create(
        model=model,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
        max_tokens=8,
        temperature=0,
        **kwargs,
    )


def expected(trained, image: Path) -> str:
    """The run's greedy reply, generated in process with the same engine code path."""
    from tunesmith.models.engine import GenerationParams
    from tunesmith.models.vlm_engine import VlmEngine
    from tunesmith.runs.trained import open_run

    model, processor = open_run(trained["run"]).load()
    question = [{"type": "image", "image": str(image)}, {"type": "text", "text": QUESTION}]
    conversation = [{"role": "user", "content": question}]
    params = GenerationParams(max_new_tokens=8)
    return VlmEngine(model, processor).generate([conversation], params)[0].text


def test_an_image_as_data_url_or_file_gets_the_runs_own_reply(server, trained, matrix_cell):
    matrix_cell("lora", "serves", "yes (images)", kind="Qwen2-VL (vision-language)")
    client = server.client()
    blue = trained["media"] / "blue.png"
    names = [m.id for m in client.models.list().data]
    assert names == ["base", "colours"]
    by_url = ask(client, "colours", data_url(blue))
    by_file = ask(client, "colours", "blue.png")
    want = expected(trained, blue)
    assert by_url.choices[0].message.content == by_file.choices[0].message.content == want
    assert by_url.usage.prompt_tokens > 20  # the image's tokens are in the prompt
    base = ask(client, "base", data_url(blue)).choices[0].message.content
    assert base != want  # the base answers as itself
    streamed = ask(client, "colours", data_url(blue), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == want


def _error(server, url_or_parts, **kwargs) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        if isinstance(url_or_parts, str):
            ask(server.client(), "colours", url_or_parts, **kwargs)
        else:
            server.client().chat.completions.create(
                model="colours", messages=[{"role": "user", "content": url_or_parts}], max_tokens=4
            )
    return caught.value


def test_remote_urls_outside_paths_and_oversized_images_are_refused(server, trained, tmp_path):
    from PIL import Image

    remote = _error(server, "https://example.com/cat.png")
    assert remote.code == "image_url_not_allowed" and "runs offline" in remote.message
    outside = _error(server, "../colours.json")
    assert outside.code == "image_url_not_allowed" and "outside serve.image_dir" in outside.message
    assert "no image file" in _error(server, "nothing.png").message
    three = [{"type": "image_url", "image_url": {"url": "red.png"}}] * 3
    too_many = _error(server, three)
    assert (
        "at most 2 images" in too_many.message
        and too_many.param == "messages.0.content.2.image_url"
    )
    wide = io.BytesIO()
    Image.new("RGB", (400, 100), (1, 2, 3)).save(wide, "PNG")  # few bytes, many pixels
    url = "data:image/png;base64," + base64.b64encode(wide.getvalue()).decode()
    assert "400 x 100 pixels" in _error(server, url).message
    noise = io.BytesIO()
    Image.frombytes("RGB", (140, 140), os.urandom(140 * 140 * 3)).save(noise, "PNG")
    url = "data:image/png;base64," + base64.b64encode(noise.getvalue()).decode()
    assert "larger than 40000 bytes" in _error(server, url).message
    assert "not a readable image" in _error(server, "data:image/png;base64,aGVsbG8=").message


def test_a_text_model_refuses_image_parts(tiny_model_dir, trained):
    live = start(tiny_model_dir)
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            ask(live.client(), "base", data_url(trained["media"] / "red.png"))
        assert caught.value.code == "images_not_supported"
    finally:
        live.stop()


def test_chat_cli_answers_about_an_image(trained, capsys):
    from tunesmith.cli.chat import chat_loop

    blue = trained["media"] / "blue.png"
    chat_loop(None, trained["run"], QUESTION, None, 8, 0.0, image=blue)
    assert capsys.readouterr().out.strip() == expected(trained, blue).strip()


def test_the_vllm_engine_refuses_a_vision_language_run_in_one_sentence(trained, monkeypatch):
    import tunesmith.runs.inference as inference
    from tunesmith.utils.errors import ModelError

    monkeypatch.setattr(inference, "require_vllm", lambda: None)  # as on a GPU with vLLM
    with pytest.raises(ModelError, match="not wired for vision-language models"):
        inference.create_engine(None, trained["run"], kind="vllm")

"""The `export` and `serve` sections."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from tunesmith.config.base import Section

DEFAULT_VERIFY_PROMPTS = [
    "Who are you?",
    "What is the capital of France?",
    "Write one sentence about the sea.",
]


GgufType = Literal[
    "f32",
    "f16",
    "bf16",
    "q8_0",
    "q5_1",
    "q5_0",
    "q4_1",
    "q4_0",
    "q6_k",
    "q5_k_m",
    "q4_k_m",
    "q3_k_m",
]  # export/gguf.py GGUF_TYPES


class ExportConfig(Section):
    """`tunesmith export`: merge the adapter into its base, save, reload and verify."""

    dir: str | None = Field(None, description="Output folder; default: RUN_FOLDER/export.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype of the saved weights (the merge itself runs in float32)."
    )
    max_shard_size: str = Field("2GB", description="safetensors shard size, e.g. 500MB.")
    verify: bool = Field(True, description="Reload the export and compare logits and template.")
    verify_prompts: list[str] = Field(
        default_factory=lambda: list(DEFAULT_VERIFY_PROMPTS),
        min_length=1,
        description="User prompts rendered with the chat template for the logits check.",
    )
    tolerance: float | None = Field(
        None,
        gt=0,
        description="Largest allowed |logit difference|; None: 1e-3 for float32, "
        "5% of the largest logit for 16-bit exports.",
    )
    gguf: bool = Field(
        False, description="Also write GGUF files of export.gguf_types (Llama, Mistral, Qwen2/3)."
    )
    gguf_types: list[GgufType] = Field(
        default_factory=lambda: ["f16"],
        min_length=1,
        description="model-<TYPE>.gguf per type: f32/f16/bf16/q8_0/q5_*/q4_* written by the "
        "gguf package; k-quants (q6_k, q5_k_m, q4_k_m, q3_k_m) by llama.cpp's llama-quantize.",
    )
    llama_cpp: str | None = Field(
        None,
        description="llama-quantize or its folder (llama.cpp's build/bin), for k-quants; "
        "default: $TUNESMITH_LLAMA_CPP, then PATH.",
    )
    overwrite: bool = False

    @field_validator("gguf_types")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class RouteConfig(Section):
    """A route: a name clients use as `model`, answered by `stable`, with `canary_percent` % of
    users (sticky by a hash of their user id) sent to `canary` instead (serve/canary.py)."""

    stable: str = Field(min_length=1, description="The model or adapter most traffic goes to.")
    canary: str | None = Field(None, description="The model or adapter on trial; None: no split.")
    canary_percent: float = Field(
        0.0, ge=0, le=100, description="Share of users sent to the canary, in percent."
    )


class ServeConfig(Section):
    """`tunesmith serve`: an OpenAI-compatible HTTP server for the base and its adapters."""

    host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 exposes the server.")
    port: int = Field(8000, ge=0, le=65535)
    model_name: str | None = Field(
        None, description="Name of the base model in /v1/models; default: model.name_or_path."
    )
    adapters_dir: str | None = Field(
        None, description="Folder of run folders or adapter folders; each subfolder is a model."
    )
    preload: bool = Field(True, description="Load every adapter at start; False: on first use.")
    api_key: str | None = Field(
        None, description="Required Bearer key; prefer the TUNESMITH_SERVE_API_KEY variable."
    )
    cors_origins: list[str] = Field(default_factory=list, description="[] keeps CORS off.")
    engine: Literal["transformers", "vllm"] = "transformers"
    batch_size: int = Field(16, ge=1, description="Requests generated together at most.")
    batch_wait_ms: float = Field(
        10.0, ge=0, description="How long the worker waits for more requests to join a batch."
    )
    max_queue: int = Field(256, ge=1, description="Waiting requests beyond this get 429.")
    request_timeout_s: float = Field(300.0, gt=0, description="Per request, queueing included.")
    shutdown_timeout_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM: stop accepting, let in-flight requests finish for this long, "
        "then cancel them and exit 0.",
    )
    max_tokens_limit: int = Field(2048, ge=1, description="Largest max_tokens a request may ask.")
    default_max_tokens: int = Field(256, ge=1)
    max_prompt_tokens: int = Field(4096, ge=1, description="Longer prompts get 400.")
    max_body_bytes: int = Field(
        1_000_000, ge=1024, description="Larger request bodies get 413 (chunked ones too)."
    )
    max_stop: int = Field(4, ge=0, description="Most stop sequences in a request (OpenAI: 4).")
    max_stop_chars: int = Field(
        32,
        ge=1,
        description="Longest stop sequence, in characters (generation builds a vocab x length "
        "table per distinct set of stop sequences).",
    )
    max_prompts: int = Field(
        32, ge=1, description="Most prompts in one /v1/completions request (a list prompt)."
    )
    max_logit_bias: int = Field(300, ge=0, description="Most logit_bias entries (OpenAI: 300).")
    max_request_tokens: int = Field(
        16_384,
        ge=1,
        description="Most tokens one request may ask to generate: prompts x n x max_tokens.",
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="An idle keep-alive connection is closed after this long."
    )
    read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Time a client has to send a request's head (from connecting or from the "
        "previous response) and, again, its body; slower connections are closed (408).",
    )
    max_header_bytes: int = Field(
        16_384, ge=1024, description="Larger request heads are refused (h11's limit)."
    )
    # image inputs (vision-language models; serve/images.py)
    image_dir: str | None = Field(
        None,
        description="Folder whose image files a request may name by path (or file:// URL); "
        "None: images come as data: URLs only. Remote http(s) URLs are never fetched.",
    )
    max_images: int = Field(4, ge=0, description="Most images in one chat request.")
    max_image_bytes: int = Field(
        5_000_000, ge=1, description="Largest image file or decoded data: URL, in bytes."
    )
    max_image_pixels: int = Field(
        16_000_000, ge=1, description="Largest image, width x height (a decompression bomb guard)."
    )
    # continuous improvement (issue 24): request log, feedback and canary routes
    log_dir: str | None = Field(
        None,
        description="Folder for requests.jsonl, feedback.jsonl and routes.json (PII redacted "
        "before writing); None: nothing is logged and POST /v1/feedback is refused.",
    )
    routes: dict[str, RouteConfig] = Field(
        default_factory=dict,
        description="Routes at start: {name: {stable, canary, canary_percent}}; routes.json in "
        "serve.log_dir (changes made through /v1/admin/routes) wins for the names it holds.",
    )

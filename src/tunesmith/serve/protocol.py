"""OpenAI request bodies (validated by pydantic) and OpenAI-style errors.

Requests that break the schema become 400 with `{"error": {"message", "type", "param",
"code"}}`, as OpenAI answers them, so clients show a reason instead of a bare status.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ROLES = ("system", "user", "assistant", "tool")
INT64 = 2**63  # OpenAI's seed is an int64


class APIError(Exception):
    """An error the server answers with an OpenAI-style body."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class _Request(BaseModel):
    # Unknown OpenAI fields (logprobs, ...) are accepted and ignored, as other servers do.
    # Strict: where OpenAI's schema says integer, "8" or 8.5 is an error, not 8.
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    # count and length: serve.max_stop, serve.max_stop_chars; always a list once validated
    stop: str | list[str] | None = Field(None, validate_default=True)
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="One choice per request.")
    presence_penalty: float = Field(0.0, ge=0, le=0, description="Not supported: 0 only.")
    frequency_penalty: float = Field(0.0, ge=0, le=0, description="Not supported: 0 only.")
    # accepted for compatibility and not applied; its size is bounded (serve.max_logit_bias)
    logit_bias: dict[str, float] | None = None
    # the end user (OpenAI's field; header X-User-Id too): a canary route's sticky assignment
    # and the request log (serve/canary.py, request_log.py)
    user: str | None = Field(None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _as_list(cls, value):
        return [value] if isinstance(value, str) else value or []

    @field_validator("logit_bias")
    @classmethod
    def _token_biases(cls, value):
        for token, bias in (value or {}).items():
            if not token.isdigit() or not -100 <= bias <= 100:
                raise ValueError("maps token ids to biases between -100 and 100")
        return value

    def requested_tokens(self) -> tuple[str, int | None]:
        """(the field that asked, how many tokens); max_completion_tokens wins when given."""
        if self.max_completion_tokens is not None:
            return "max_completion_tokens", self.max_completion_tokens
        return "max_tokens", self.max_tokens


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True)

    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    url: str = Field(min_length=1)  # data: URL or a file under serve.image_dir (serve/images.py)
    detail: Literal["auto", "low", "high"] | None = None  # accepted, not applied


class ImagePart(BaseModel):
    """An image for a vision-language model (serve/images.py opens and checks it)."""

    model_config = ConfigDict(strict=True)

    type: Literal["image_url"]
    image_url: ImageURL


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str | list[TextPart | ImagePart] | None = None  # None: an assistant's tool calls
    # tool calling (serve/tools.py): the assistant's calls, and a tool result's call id and name
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _content_or_calls(self) -> Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required (only an assistant's tool calls go without)")
        return self

    def as_dict(self) -> dict:
        content = self.content
        if isinstance(content, list) and any(isinstance(p, ImagePart) for p in content):
            parts = [
                {"type": "image_url", "url": p.image_url.url}
                if isinstance(p, ImagePart)
                else {"type": "text", "text": p.text}
                for p in content
            ]
            return {"role": self.role, "content": parts}
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        return {"role": self.role, "content": content}


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    # the functions the model may call (OpenAI's shape) and how (serve/tools.py: auto or none)
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None  # accepted; replies may hold several calls

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, value: list[Message]) -> list[Message]:
        if value[-1].role == "assistant":
            raise ValueError("the last message must come from the user or the system")
        return value


class CompletionRequest(_Request):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value):
        prompts = [value] if isinstance(value, str) else value
        if not prompts or any(not p for p in prompts):
            raise ValueError("prompt must be a non-empty string or a list of them")
        return prompts


def validation_error(errors: list[dict]) -> APIError:
    """The first pydantic error as one OpenAI-style 400."""
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON", code="invalid_json")
    message = first.get("msg", "invalid request")
    if first.get("type") == "literal_error" and loc and loc[-1] == "role":
        message = f"unknown role {first.get('input')!r}: expected one of {', '.join(ROLES)}"
    param = ".".join(loc) or None
    return APIError(400, f"{param}: {message}" if param else message, param=param)

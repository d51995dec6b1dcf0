"""The chat clients: a loaded local model, or any OpenAI-compatible endpoint.

The interface they implement (`ChatClient`, `Reply`, `replies_of`) is tunesmith.utils.llm, so
the data tools take a client without importing models/; runs/inference.make_client builds one
from a spec (it opens run folders, which sit above models/).

The seeds call `llm.generate(prompt)` without ever defining it (module 5, vague point 1). Here a
client takes whole conversations so the local model is prompted through its own chat template,
exactly as an API model is prompted through the server's. `chat` returns texts; `replies` also
says whether each reply finished or was cut by `max_new_tokens`, which teacher data needs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from tunesmith.utils.errors import ModelError
from tunesmith.utils.llm import ChatClient, Reply, replies_of

__all__ = ["ChatClient", "LocalClient", "OpenAIClient", "Reply", "replies_of"]

KEY_ENV = ("TUNESMITH_API_KEY", "OPENAI_API_KEY")  # first one set wins
BASE_URL_ENV = ("TUNESMITH_API_BASE", "OPENAI_BASE_URL")
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER_S = 60.0


class LocalClient:
    """A loaded causal LM behind the chat interface (runs/inference.local_client loads one by
    reference: a model ref, a run or an adapter folder)."""

    def __init__(self, model, tokenizer, batch_size: int = 8):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def replies(
        self, conversations: list[list[dict]], max_new_tokens: int = 256, temperature: float = 0.7
    ) -> list[Reply]:
        from tunesmith.models.generate import generate_replies

        return generate_replies(
            self.model,
            self.tokenizer,
            conversations,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            batch_size=self.batch_size,
        )

    def chat(
        self, conversations: list[list[dict]], max_new_tokens: int = 256, temperature: float = 0.7
    ) -> list[str]:
        return [r.text for r in self.replies(conversations, max_new_tokens, temperature)]


class OpenAIClient:
    """POST {base_url}/chat/completions, with bounded retries on 429/5xx and timeouts."""

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        concurrency: int = 4,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else first_env(KEY_ENV)
        self.max_retries = max_retries
        self.backoff = backoff
        self.concurrency = max(1, concurrency)
        self._sleep = sleep  # injectable so tests check the backoff without waiting
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self._http = httpx.Client(timeout=timeout, headers=headers)

    def replies(
        self, conversations: list[list[dict]], max_new_tokens: int = 256, temperature: float = 0.7
    ) -> list[Reply]:
        model = self.model_name()

        def one(messages: list[dict]) -> Reply:
            body = {
                "model": model,
                "messages": messages,
                "max_tokens": max_new_tokens,
                "temperature": temperature,
            }
            return _parse_completion(self._request("POST", "/chat/completions", body), self._url)

        if self.concurrency == 1 or len(conversations) <= 1:
            return [one(c) for c in conversations]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, conversations))  # map keeps the input order

    def chat(
        self, conversations: list[list[dict]], max_new_tokens: int = 256, temperature: float = 0.7
    ) -> list[str]:
        return [r.text for r in self.replies(conversations, max_new_tokens, temperature)]

    def model_name(self) -> str:
        """The configured model, or the only one the endpoint lists under /models."""
        if self.model:
            return self.model
        listed = self._request("GET", "/models")
        ids = [m.get("id") for m in listed.get("data", []) if isinstance(m, dict)]
        if len(ids) != 1:
            raise ModelError(
                f"{self._url('/models')} serves {len(ids)} models {ids[:10]}; name one as "
                f"{self.base_url}#<model>"
            )
        self.model = ids[0]
        return self.model

    def close(self) -> None:
        self._http.close()

    def _url(self, path: str) -> str:
        return self.base_url + path

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        url = self._url(path)
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.request(method, url, json=body)
            except httpx.ConnectError:
                raise ModelError(f"cannot connect to {url}: is the server running?") from None
            except httpx.TimeoutException:
                if attempt == self.max_retries:
                    raise ModelError(f"{url} did not answer in time, even after retries") from None
                self._sleep(self.backoff * 2**attempt)
                continue
            if response.status_code in RETRY_STATUS and attempt < self.max_retries:
                self._sleep(_retry_delay(response, self.backoff * 2**attempt))
                continue
            return _json_body(response, url)
        raise AssertionError("unreachable: the last attempt returns or raises")


def first_env(names: tuple[str, ...]) -> str | None:
    """The value of the first of these environment variables that is set."""
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def _retry_delay(response: httpx.Response, default: float) -> float:
    try:  # servers say how long to wait on 429; honour it within reason
        return min(float(response.headers["retry-after"]), _MAX_RETRY_AFTER_S)
    except (KeyError, ValueError):
        return default


def _json_body(response: httpx.Response, url: str) -> dict:
    status = response.status_code
    if status in (401, 403):
        raise ModelError(
            f"{url} rejected the API key (HTTP {status}); set {' or '.join(KEY_ENV)} "
            "or api_key to a valid key"
        )
    if status == 404:
        raise ModelError(f"{url} was not found (HTTP 404): check the base URL (often ends in /v1)")
    if status >= 400:
        raise ModelError(f"{url} answered HTTP {status}: {_server_message(response)}")
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(
            f"{url} returned malformed JSON (starts with {response.text[:80]!r})"
        ) from None
    if not isinstance(data, dict):
        raise ModelError(f"{url} returned JSON that is not an object: {type(data).__name__}")
    return data


def _server_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        error = None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error) if error else response.text[:200] or "(empty body)"


def _parse_completion(data: dict, url: Callable[[str], str]) -> Reply:
    try:
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""  # null content (e.g. a refusal) → ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ModelError(
            f"{url('/chat/completions')} returned JSON without choices[0].message.content"
        ) from None
    return Reply(content.strip(), choice.get("finish_reason") != "length")

"""The ``openai`` provider: any OpenAI-compatible HTTP API (``SENSE_AI_BASE_URL``).

- Analysis: ``POST {base}/chat/completions`` with ``response_format: json_object``, up to
  ``SENSE_AI_BATCH_SIZE`` messages per call, numbered; the model must answer
  ``{"results": [{"i": 0, "sentiment": -1..1, "emotion": "<label>", "satisfaction": 0..100}]}``
  with one item per message. Anything else is a ``BadAnswer``.
- Embeddings: ``POST {base}/embeddings`` with ``dimensions: 512`` (honoured by models that can
  shorten their vectors, e.g. text-embedding-3-*). The column is ``vector(512)``: a model that
  answers another size is refused with a ``BadAnswer`` that says so.
- Every call has ``SENSE_AI_TIMEOUT_SECONDS``; 429, 5xx, timeouts and connection errors are
  retried ``SENSE_AI_MAX_RETRIES`` times with exponential backoff (``Retry-After`` honoured up
  to ``MAX_RETRY_AFTER``), then raise ``Unavailable``. A circuit breaker opens after
  ``SENSE_AI_CIRCUIT_THRESHOLD`` consecutive unavailable calls and fails calls at once for
  ``SENSE_AI_CIRCUIT_COOLDOWN_SECONDS``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from workers.circuit import CircuitBreaker, CircuitOpen
from workers.embedding import DIMENSIONS
from workers.errors import BadAnswer, Unavailable
from workers.sentiment import EMOTIONS, TextAnalysis, fold

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("sense.ai")

MAX_RETRY_AFTER = 30.0
BACKOFF_BASE = 0.5
RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_LABELS = {fold(e): e for e in EMOTIONS}  # "gratidao" and "Gratidão" are gratidão

SYSTEM_PROMPT = (
    "You analyse WhatsApp messages that customers sent to a company, mostly in Brazilian "
    "Portuguese. For each numbered message give: sentiment, a number from -1 (very negative) "
    "to 1 (very positive), reading irony and negation as a person would; emotion, exactly one "
    f"of {', '.join(EMOTIONS)}; satisfaction, an integer from 0 (furious) to 100 (delighted) "
    "for how satisfied the customer is with the company. Answer only with JSON of the form "
    '{"results": [{"i": <number>, "sentiment": <float>, "emotion": "<label>", '
    '"satisfaction": <int>}]}, one item per message.'
)


class _Item(msgspec.Struct):
    i: int
    sentiment: float
    emotion: str
    satisfaction: int


class _Results(msgspec.Struct):
    results: list[_Item]


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message


class _Completion(msgspec.Struct):
    choices: list[_Choice]


class _Embedding(msgspec.Struct):
    embedding: list[float]
    index: int = -1


class _Embeddings(msgspec.Struct):
    data: list[_Embedding]


class OpenAICompatible:
    name = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        chat_model: str = "gpt-4o-mini",
        embedding_model: str = "text-embedding-3-small",
        timeout: float = 10.0,
        max_retries: int = 2,
        batch_size: int = 20,
        circuit: CircuitBreaker | None = None,
        sleep: Any = time.sleep,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
        )
        self.chat_model = chat_model
        self.embedding_model = embedding_model
        self.version = f"openai/{chat_model}+{embedding_model}"
        self.max_retries = max_retries
        self.batch_size = batch_size
        self.circuit = circuit or CircuitBreaker(5, 30.0)
        self.sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAICompatible:
        assert settings.ai_base_url is not None  # checked by load_settings
        return cls(
            settings.ai_base_url,
            api_key=settings.ai_api_key,
            chat_model=settings.ai_chat_model,
            embedding_model=settings.ai_embedding_model,
            timeout=settings.ai_timeout_seconds,
            max_retries=settings.ai_max_retries,
            batch_size=settings.ai_batch_size,
            circuit=CircuitBreaker(
                settings.ai_circuit_threshold, settings.ai_circuit_cooldown_seconds
            ),
        )

    def close(self) -> None:
        self.client.close()

    # the provider interface ---------------------------------------------------------------

    def analyze(self, texts: list[str]) -> list[TextAnalysis]:
        out: list[TextAnalysis] = []
        for start in range(0, len(texts), self.batch_size):
            out.extend(self._analyze_chunk(texts[start : start + self.batch_size]))
        return out

    def embed(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        body = {"model": self.embedding_model, "input": texts, "dimensions": DIMENSIONS}
        raw = self._post("embeddings", body)
        try:
            data = msgspec.json.decode(raw, type=_Embeddings).data
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BadAnswer(f"embeddings: not an embeddings answer ({exc})") from None
        if len(data) != len(texts):
            raise BadAnswer(f"embeddings: {len(data)} vectors for {len(texts)} texts")
        if all(0 <= d.index < len(data) for d in data):
            data = sorted(data, key=lambda d: d.index)
        for d in data:
            if len(d.embedding) != DIMENSIONS:
                raise BadAnswer(
                    f"embeddings: model {self.embedding_model!r} answered {len(d.embedding)} "
                    f"dimensions; the embedding column is vector({DIMENSIONS}): use a model "
                    f"that honours dimensions={DIMENSIONS}"
                )
            if not all(math.isfinite(x) for x in d.embedding):
                raise BadAnswer("embeddings: a vector has non-finite values")
        return [_unit(d.embedding) for d in data]

    # internals ------------------------------------------------------------------------------

    def _analyze_chunk(self, texts: list[str]) -> list[TextAnalysis]:
        numbered = "\n".join(
            msgspec.json.encode({"i": i, "text": t}).decode() for i, t in enumerate(texts)
        )
        body = {
            "model": self.chat_model,
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": numbered},
            ],
        }
        raw = self._post("chat/completions", body)
        try:
            completion = msgspec.json.decode(raw, type=_Completion)
            content = completion.choices[0].message.content or ""
            results = msgspec.json.decode(_strip_fence(content), type=_Results).results
        except (msgspec.DecodeError, msgspec.ValidationError, IndexError) as exc:
            raise BadAnswer(f"chat completion: not the JSON asked for ({exc})") from None
        by_index = {r.i: r for r in results}
        out = []
        for i in range(len(texts)):
            item = by_index.get(i)
            if item is None:
                raise BadAnswer(f"chat completion: no result for message {i} of {len(texts)}")
            out.append(_checked(item))
        return out

    def _post(self, path: str, body: dict[str, Any]) -> bytes:
        try:
            self.circuit.before_call()
        except CircuitOpen as exc:
            raise Unavailable(str(exc)) from None
        attempt = 0
        while True:
            delay: float | None = None
            try:
                response = self.client.post(
                    path,
                    content=msgspec.json.encode(body),
                    headers={"Content-Type": "application/json"},
                )
            except httpx.TimeoutException:
                problem = f"{path}: timed out"
            except httpx.TransportError as exc:
                problem = f"{path}: {exc.__class__.__name__}: {exc}"
            else:
                if response.status_code < 300:
                    self.circuit.success()
                    return response.content
                problem = f"{path}: HTTP {response.status_code} {response.text[:200]!r}"
                if response.status_code not in RETRY_STATUS:
                    # the API is up and refuses this request: not an outage
                    self.circuit.success()
                    raise BadAnswer(problem)
                delay = _retry_after(response)
            if attempt >= self.max_retries:
                self.circuit.failure()
                raise Unavailable(f"{problem} (after {attempt + 1} attempts)")
            if delay is None:
                delay = BACKOFF_BASE * 2**attempt * random.uniform(1.0, 1.5)
            log.info("AI API %s; retrying in %.2f s", problem, delay)
            self.sleep(delay)
            attempt += 1


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER)
    except ValueError:
        return None


def _strip_fence(content: str) -> str:
    """Some compatible servers wrap the JSON in a Markdown code fence despite json_object."""
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`")
        text = text.removeprefix("json").strip()
    return text


def _checked(item: _Item) -> TextAnalysis:
    if not (-1.0 <= item.sentiment <= 1.0) or not math.isfinite(item.sentiment):
        raise BadAnswer(f"chat completion: sentiment {item.sentiment} outside [-1, 1]")
    if not 0 <= item.satisfaction <= 100:
        raise BadAnswer(f"chat completion: satisfaction {item.satisfaction} outside 0..100")
    emotion = _LABELS.get(fold(item.emotion.strip()))
    if emotion is None:
        raise BadAnswer(f"chat completion: emotion {item.emotion!r} is not one of the labels")
    return TextAnalysis(round(item.sentiment, 4), emotion, item.satisfaction)


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]

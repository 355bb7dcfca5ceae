"""The teacher client: litellm chat completions, concurrent, rate-limited, retried, budgeted
and cached.

One :meth:`TeacherClient.complete` call returns the text of one request:

1. answered from the :class:`~components.teacher_corpus.cache.ResponseCache` when stored
   (free: no budget, no slot, no rate limit); a request already in flight in this process is
   waited for, and one another process or machine is paying for (it holds the request's claim
   in the cache) too: nothing is paid twice;
2. else, holding the request's claim, sent through ``litellm.acompletion`` with at most
   ``concurrency`` requests in flight, starts spaced to ``requests_per_minute``, a per-request timeout, and litellm's own retries
   switched off so that every retry is ours and counted;
3. retried with exponential back-off and jitter on 429 (its Retry-After honoured, and every
   request pauses until then), 5xx, timeouts, connection errors and malformed responses (no
   choices, empty text, a body that is not JSON); after ``max_retries`` the stage fails with
   :class:`TeacherError` (the cache keeps what was done);
4. charged to the budget: each request reserves its worst case (1 request, a prompt estimate +
   ``max_tokens``, their price) before it is sent, so no limit is overshot by the requests in
   flight; when a limit would be crossed :class:`BudgetExhausted` is raised instead. A request
   the provider may have completed and billed without our seeing the answer (it timed out, or
   its 200 answer was unusable) is counted *possibly billed* at that worst case, and counts
   against the budget;
5. stored in the cache as soon as it arrives, secrets removed.

The API key is read from the environment variable named in config, handed to litellm per call
and registered for redaction; it is never logged, cached or returned, and an endpoint that
echoes it inside an answer gets it replaced by ``***`` before the answer is used or stored.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from components.common.errors import ExpectedError
from components.common.logs import redact, register_secret
from components.teacher_corpus.cache import ResponseCache, request_key
from components.teacher_corpus.config import TeacherConfig

log = logging.getLogger(__name__)

#: Longest Retry-After we wait for (a bogus header must not park the stage for hours).
MAX_RETRY_AFTER_S = 600.0
#: Prompt tokens are estimated before a request at one token per this many characters
#: (conservative for English BPE vocabularies, which average about four).
CHARS_PER_TOKEN = 3
RETRY_CAUSES = ("rate_limited", "server_error", "timeout", "connection", "malformed")
#: Failures after which the provider may have produced (and billed) an answer we never saw.
MAYBE_BILLED = ("timeout", "malformed")


def _litellm():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch at import
    import litellm

    litellm.suppress_debug_info = True  # no "Give Feedback" banners on stdout
    return litellm


class TeacherError(ExpectedError, RuntimeError):
    """The teacher cannot be used (authentication, unknown model, retries exhausted): the stage
    stops. Responses received so far stay cached; a re-run resumes from them."""


class BudgetExhausted(RuntimeError):
    """A budget limit would be crossed by the next request."""


class RequestRejected(RuntimeError):
    """The provider refused this one request (400: too long, content policy); it is dropped."""


class MalformedResponse(RuntimeError):
    """A 200 answer without usable text."""


@dataclass(frozen=True)
class Completion:
    """One answered request."""

    text: str
    key: str
    cached: bool
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None


@dataclass
class Accounting:
    """What the teacher did; the stage writes it into its stats and MLflow metrics."""

    requests: int = 0
    """HTTP requests sent (retries included)."""
    responses: int = 0
    """Requests answered with usable text (each stored in the cache)."""
    cache_hits: int = 0
    retries: Counter = field(default_factory=Counter)
    """Retries by cause (rate_limited, server_error, timeout, connection, malformed)."""
    rejected_requests: int = 0
    """Requests the provider refused (400) and that were dropped."""
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    cached_tokens_in: int = 0
    cached_tokens_out: int = 0
    cost_saved_usd: float = 0.0
    """Spend the cache avoided (the recorded cost of every cache hit)."""
    latency_s: float = 0.0
    """Summed wall time of the successful requests."""
    budget_exhausted: str | None = None
    """Which limit stopped new requests, if one did."""
    possibly_billed_requests: int = 0
    """Requests that timed out or got an unusable 200 answer: the provider may have billed them."""
    possibly_billed_tokens: int = 0
    """Their worst case (prompt estimate + ``max_tokens`` each), counted against the budget."""
    possibly_billed_cost_usd: float = 0.0

    @property
    def spent_tokens(self) -> int:
        return self.tokens_in + self.tokens_out + self.possibly_billed_tokens

    @property
    def spent_cost_usd(self) -> float:
        return self.cost_usd + self.possibly_billed_cost_usd

    def as_dict(self, cost_known: bool) -> dict[str, Any]:
        return {
            "requests": self.requests, "responses": self.responses, "cache_hits": self.cache_hits,
            "retries": {cause: self.retries.get(cause, 0) for cause in RETRY_CAUSES},
            "retries_total": sum(self.retries.values()), "rejected_requests": self.rejected_requests,
            "tokens": {"in": self.tokens_in, "out": self.tokens_out},
            "cached_tokens": {"in": self.cached_tokens_in, "out": self.cached_tokens_out},
            "cost_usd": round(self.cost_usd, 6) if cost_known else None,
            "cost_saved_by_cache_usd": round(self.cost_saved_usd, 6) if cost_known else None,
            "cost_known": cost_known,
            "mean_latency_s": round(self.latency_s / self.responses, 4) if self.responses else None,
            "budget_exhausted": self.budget_exhausted is not None,
            "budget_exhausted_by": self.budget_exhausted,
            "possibly_billed": {"requests": self.possibly_billed_requests, "tokens": self.possibly_billed_tokens,
                                "cost_usd": round(self.possibly_billed_cost_usd, 6) if cost_known else None},
        }


class RateLimiter:
    """Spaces request starts evenly: at most ``per_minute`` per minute."""

    def __init__(self, per_minute: float):
        self.interval = 60.0 / per_minute
        self._next = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


class Pricing:
    """USD per token, from ``teacher.price`` or litellm's cost map; None when unknown."""

    def __init__(self, cfg: TeacherConfig):
        self.input: float | None = None
        self.output: float | None = None
        if cfg.price.input_usd_per_million is not None:
            self.input = cfg.price.input_usd_per_million / 1e6
            self.output = cfg.price.output_usd_per_million / 1e6
        else:
            try:
                info = _litellm().get_model_info(cfg.model)
                self.input, self.output = info["input_cost_per_token"], info["output_cost_per_token"]
            except Exception:  # litellm raises several types for an unmapped model
                pass

    @property
    def known(self) -> bool:
        return self.input is not None and self.output is not None

    def cost(self, tokens_in: int, tokens_out: int) -> float | None:
        if not self.known:
            return None
        return tokens_in * self.input + tokens_out * self.output


def resolve_api_key(cfg: TeacherConfig) -> str | None:
    """The key from ``cfg.api_key_env`` (registered for redaction); an error if it is unset."""
    if cfg.api_key_env is None:
        return None
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise TeacherError(f"teacher.api_key_env: environment variable {cfg.api_key_env} is not set "
                           "(on a cluster, mount the teacher Secret into the teacher_corpus task)")
    register_secret(key)
    return key


def _retry_after(exc: BaseException) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms) header of a failed response."""
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return None
    headers = {str(k).lower(): v for k, v in headers.items()}
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return float(value) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # the HTTP-date form
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def classify(exc: BaseException) -> str | None:
    """The retry cause of ``exc``, or None when retrying cannot help."""
    litellm = _litellm()
    if isinstance(exc, MalformedResponse):
        return "malformed"
    if isinstance(exc, (litellm.Timeout, TimeoutError)) or getattr(exc, "status_code", None) == 408:
        return "timeout"
    if isinstance(exc, litellm.RateLimitError) or getattr(exc, "status_code", None) == 429:
        return "rate_limited"
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and status >= 500:
        # litellm reports a 200 whose body is not JSON as a 500 with the decoder's message
        cause = exc.__cause__ or exc.__context__
        text = str(exc)
        if isinstance(cause, json.JSONDecodeError) or "Expecting value" in text or "JSONDecodeError" in text:
            return "malformed"
        return "server_error"
    if isinstance(exc, litellm.APIConnectionError):
        return "connection"
    return None


class TeacherClient:
    """Async teacher requests (see the module docstring)."""

    def __init__(self, cfg: TeacherConfig, cache: ResponseCache, api_key: str | None, seed: int = 0):
        self.cfg, self.cache, self._api_key = cfg, cache, api_key
        self.params: dict[str, Any] = {"temperature": cfg.temperature, "max_tokens": cfg.max_tokens,
                                       **cfg.extra_params}
        self.pricing = Pricing(cfg)
        if cfg.budget.max_cost_usd is not None and not self.pricing.known:
            raise TeacherError(f"teacher.budget.max_cost_usd is set but the price of {cfg.model!r} is "
                               "unknown to litellm: set teacher.price.input_usd_per_million and "
                               "output_usd_per_million")
        self.stats = Accounting()
        self._slots: asyncio.Semaphore | None = None
        self._limiter = RateLimiter(cfg.requests_per_minute) if cfg.requests_per_minute else None
        self._resume_at = 0.0  # every request waits until then after a 429 with Retry-After
        self._jitter = random.Random(seed)
        self._reserved = {"requests": 0, "tokens": 0, "cost": 0.0}
        self._inflight: dict[str, asyncio.Future] = {}
        self._litellm = _litellm()

    # -- budget ------------------------------------------------------------------------------

    def _reserve(self, prompt_chars: int) -> dict[str, float]:
        budget = self.cfg.budget
        if self.stats.budget_exhausted:
            raise BudgetExhausted(self.stats.budget_exhausted)
        tokens = prompt_chars // CHARS_PER_TOKEN + 1 + self.cfg.max_tokens
        cost = self.pricing.cost(prompt_chars // CHARS_PER_TOKEN + 1, self.cfg.max_tokens) or 0.0
        spent_tokens = self.stats.spent_tokens
        exceeded = None
        if budget.max_requests is not None and self.stats.requests + self._reserved["requests"] + 1 > budget.max_requests:
            exceeded = f"max_requests={budget.max_requests} ({self.stats.requests} sent)"
        elif budget.max_tokens is not None and spent_tokens + self._reserved["tokens"] + tokens > budget.max_tokens:
            exceeded = (f"max_tokens={budget.max_tokens} ({spent_tokens} used; the next request may take "
                        f"up to {tokens})")
        elif (budget.max_cost_usd is not None
              and self.stats.spent_cost_usd + self._reserved["cost"] + cost > budget.max_cost_usd):
            exceeded = (f"max_cost_usd={budget.max_cost_usd} (${self.stats.spent_cost_usd:.4f} spent; the next "
                        f"request may cost up to ${cost:.4f})")
        if exceeded:
            self.stats.budget_exhausted = exceeded
            log.warning("teacher budget reached: %s. No new requests; requests in flight finish and are "
                        "cached, cached answers are still used. Raise teacher.budget to continue: a re-run "
                        "reuses every cached response for free.", exceeded)
            raise BudgetExhausted(exceeded)
        reservation = {"requests": 1, "tokens": tokens, "cost": cost}
        for k, v in reservation.items():
            self._reserved[k] += v
        return reservation

    def _release(self, reservation: dict[str, float]) -> None:
        for k, v in reservation.items():
            self._reserved[k] -= v

    # -- requests ----------------------------------------------------------------------------

    async def complete(self, messages: list[dict[str, str]], attempt: int = 0) -> Completion:
        """The answer to ``messages`` (``attempt`` > 0: a fresh sample after a rejected answer)."""
        key = request_key(self.cfg.model, messages, self.params, attempt)
        while (entry := await self.cache.get(key)) is None and key in self._inflight:
            # the same request is in flight for another job: share its answer, do not send it twice
            await asyncio.shield(self._inflight[key])
        if entry is not None:
            return self._hit(key, entry)
        done = asyncio.get_running_loop().create_future()
        self._inflight[key] = done
        try:
            entry, claim = await self.cache.claim(key)  # another process may be paying for it
            if entry is not None:
                return self._hit(key, entry)
            try:
                return await self._request(key, messages, attempt)
            finally:
                await asyncio.shield(self.cache.release(claim))
        finally:
            del self._inflight[key]
            done.set_result(None)

    def _hit(self, key: str, entry: dict[str, Any]) -> Completion:
        """An answer from the cache: free, and counted as a hit."""
        usage = entry.get("usage", {})
        self.stats.cache_hits += 1
        self.stats.cached_tokens_in += usage.get("prompt_tokens", 0)
        self.stats.cached_tokens_out += usage.get("completion_tokens", 0)
        self.stats.cost_saved_usd += entry.get("cost_usd") or 0.0
        return Completion(entry["text"], key, True, usage.get("prompt_tokens", 0),
                          usage.get("completion_tokens", 0), entry.get("cost_usd"))

    async def _request(self, key: str, messages: list[dict[str, str]], attempt: int) -> Completion:
        prompt_chars = sum(len(m["content"]) for m in messages)
        for retry in range(self.cfg.max_retries + 1):
            reservation = self._reserve(prompt_chars)
            try:
                async with self._semaphore():
                    await self._wait_turn()  # inside the slot: a 429 seen meanwhile pauses this request too
                    self._reserved["requests"] -= reservation.pop("requests")  # now counted as sent
                    self.stats.requests += 1
                    started = time.monotonic()
                    response = await self._send(messages)
                latency = time.monotonic() - started
                text, tokens_in, tokens_out = self._parse(response, prompt_chars)
            except BaseException as exc:
                cause = classify(exc) if isinstance(exc, Exception) else None
                if cause in MAYBE_BILLED and "requests" not in reservation:  # sent: the provider may bill it
                    self.stats.possibly_billed_requests += 1
                    self.stats.possibly_billed_tokens += reservation["tokens"]
                    self.stats.possibly_billed_cost_usd += reservation["cost"]
                self._release(reservation)
                if not isinstance(exc, Exception):  # cancellation, KeyboardInterrupt, SystemExit
                    raise
                if cause is None:
                    raise self._not_retryable(exc) from None
                if retry == self.cfg.max_retries:
                    raise TeacherError(f"teacher request failed after {retry + 1} attempts "
                                       f"(last: {cause}: {redact(str(exc))[:300]})") from None
                self.stats.retries[cause] += 1
                await asyncio.sleep(self._backoff(retry, cause, exc))
                continue
            self._release(reservation)
            cost = self.pricing.cost(tokens_in, tokens_out)
            self.stats.responses += 1
            self.stats.tokens_in += tokens_in
            self.stats.tokens_out += tokens_out
            self.stats.cost_usd += cost or 0.0
            self.stats.latency_s += latency
            await self.cache.put(key, {
                "key": key, "model": self.cfg.model, "messages": messages, "params": self.params,
                "attempt": attempt, "text": text,
                "usage": {"prompt_tokens": tokens_in, "completion_tokens": tokens_out},
                "cost_usd": cost, "latency_s": round(latency, 4), "created_at": time.time(),
            })
            return Completion(text, key, False, tokens_in, tokens_out, cost)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _semaphore(self) -> asyncio.Semaphore:
        if self._slots is None:  # created inside the running event loop
            self._slots = asyncio.Semaphore(self.cfg.concurrency)
        return self._slots

    async def _wait_turn(self) -> None:
        pause = self._resume_at - time.monotonic()
        if pause > 0:
            await asyncio.sleep(pause)
        if self._limiter is not None:
            await self._limiter.wait()

    async def _send(self, messages: list[dict[str, str]]) -> Any:
        async with asyncio.timeout(self.cfg.timeout_s + 5.0):  # a guard in case a provider ignores timeout
            return await self._litellm.acompletion(
                model=self.cfg.model, messages=messages, api_base=self.cfg.api_base, api_key=self._api_key,
                timeout=self.cfg.timeout_s, num_retries=0, max_retries=0, drop_params=True, **self.params,
            )

    @staticmethod
    def _parse(response: Any, prompt_chars: int) -> tuple[str, int, int]:
        try:
            text = response.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            raise MalformedResponse("response without choices") from None
        if not isinstance(text, str) or not text.strip():
            raise MalformedResponse("response without text")
        text = redact(text)  # an endpoint that echoes the key must not get it into any output
        usage = getattr(response, "usage", None)
        tokens_in = getattr(usage, "prompt_tokens", None) or prompt_chars // CHARS_PER_TOKEN + 1
        tokens_out = getattr(usage, "completion_tokens", None) or len(text) // CHARS_PER_TOKEN + 1
        return text, int(tokens_in), int(tokens_out)

    def _backoff(self, retry: int, cause: str, exc: BaseException) -> float:
        delay = min(self.cfg.backoff_max_s, self.cfg.backoff_initial_s * 2 ** retry)
        delay *= self._jitter.uniform(0.5, 1.0)
        if cause == "rate_limited":
            retry_after = _retry_after(exc)
            if retry_after is not None:
                retry_after = min(retry_after, MAX_RETRY_AFTER_S)
                delay = max(delay, retry_after)
                self._resume_at = max(self._resume_at, time.monotonic() + retry_after)
        log.debug("teacher %s; retry %d in %.2fs", cause, retry + 1, delay)
        return delay

    def _not_retryable(self, exc: BaseException) -> Exception:
        """The error to raise for ``exc``. The HTTP status decides first: litellm picks its
        exception class partly from the error text (a 401 can arrive as a BadRequestError)."""
        litellm = self._litellm
        message = redact(str(exc))[:300]
        status = getattr(exc, "status_code", None)
        if status in (401, 403) or isinstance(exc, (litellm.AuthenticationError, litellm.PermissionDeniedError)):
            return TeacherError(f"the teacher refused the API key from ${self.cfg.api_key_env} "
                                f"(HTTP {status}): {message}")
        if status == 404 or isinstance(exc, litellm.NotFoundError):
            return TeacherError(f"teacher model {self.cfg.model!r} not found at "
                                f"{self.cfg.api_base or 'the provider'}: {message}")
        if status == 402 or isinstance(exc, litellm.PaymentRequiredError):
            return TeacherError(f"the teacher account cannot pay for requests (HTTP 402): {message}")
        if status in (400, 413, 422) or isinstance(exc, litellm.BadRequestError):
            self.stats.rejected_requests += 1
            return RequestRejected(message)
        return TeacherError(f"teacher request failed ({type(exc).__name__}, HTTP {status}): {message}")

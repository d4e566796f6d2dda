"""
One session's summary, folded line by line: pure, no I/O, so the same code
catches up from a stored file (in a thread) and follows live lines (in the reactor).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from datetime import datetime, timezone

import orjson

from fulabd.formats import AgentFormat
from fulabd.formats.common import TITLE_KINDS, TOKEN_KINDS, Usage


# Responses whose later lines may still come: a response's lines are written together (in the samples, at most
# one other response between two lines of one response), so older ones are final and their usage is let go.
RECENT_RESPONSES = 256


def parse_timestamp(text: str | None) -> datetime | None:
    """An ISO-8601 instant (a zone-less one taken as UTC), or None for anything else."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _added(total: dict, tokens: dict, sign: int = 1) -> None:
    for kind, value in tokens.items():
        total[kind] = total.get(kind, 0) + sign * value


def _counted(tokens: dict) -> dict:
    return {kind: tokens.get(kind, 0) for kind in TOKEN_KINDS}


class Accumulator:
    """The running facts of one session; `summary()` renders them."""

    def __init__(self, agent: AgentFormat | None):
        self.agent = agent
        self.lines = 0            # lines folded in: the next line expected is this one
        self.started: datetime | None = None
        self.ended: datetime | None = None
        self.models: set[str] = set()
        self.model: str | None = None  # the model now in use, for running totals (Codex)
        self.turns = 0
        self.first_prompt: str | None = None
        self.titles: dict[str, str] = {}
        self.tool_calls: Counter = Counter()
        self.tool_errors = 0
        self.files: dict[str, None] = {}  # insertion-ordered set
        self.commands = 0
        self.launches: dict[str, str] = {}  # launching call id (or the sub-agent's id) -> sub-agent id
        self.responses: OrderedDict[str, Usage] = OrderedDict()  # recent responses' largest usage, by key
        self.response_tokens = dict.fromkeys(TOKEN_KINDS, 0)  # their sum
        self.by_model: dict = {}                # model -> tokens: responses' final usages plus running totals
        self.running: dict | None = None        # the last running total (Codex token_count)

    def add(self, raw: bytes) -> None:
        """Fold in the next line of the session."""
        self.lines += 1
        if self.agent is None:
            return
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if isinstance(line, dict):
            self._fold(self.agent.facts(line))

    def _fold(self, facts) -> None:
        moment = parse_timestamp(facts.timestamp)
        if moment is not None:
            self.started = moment if self.started is None else min(self.started, moment)
            self.ended = moment if self.ended is None else max(self.ended, moment)
        if facts.model:
            self.models.add(facts.model)
            self.model = facts.model
        if facts.prompt is not None:
            self.turns += 1
            self.first_prompt = self.first_prompt or facts.prompt
        if facts.title is not None:
            self.titles[facts.title[0]] = facts.title[1]
        for _, name, is_command in facts.tools:
            self.tool_calls[name] += 1
            self.commands += is_command
        self.tool_errors += facts.errors
        self.files.update(dict.fromkeys(facts.files))
        for call_id in facts.launches:
            self.launches.setdefault(call_id, call_id)
        for call_id, agent in facts.agents:
            self.launches[call_id if call_id is not None else agent] = agent
        if facts.usage is not None:
            self._count(facts.usage)

    def _count(self, usage: Usage) -> None:
        if usage.key is None:  # a running total: what is new since the last one is the current model's
            previous = self.running or {}
            delta = {kind: max(0, value - previous.get(kind, 0)) for kind, value in usage.tokens.items()}
            _added(self.by_model.setdefault(self.model, {}), delta)
            self.running = usage.tokens
            return
        known = self.responses.get(usage.key)
        if known is not None:
            if usage.tokens["output"] <= known.tokens["output"]:
                self.responses.move_to_end(usage.key)
                return  # the same response again, or an earlier block of it
            _added(self.by_model[known.model], known.tokens, -1)
            _added(self.response_tokens, _counted(known.tokens), -1)
        self.responses[usage.key] = usage
        self.responses.move_to_end(usage.key)
        if len(self.responses) > RECENT_RESPONSES:
            self.responses.popitem(last=False)
        _added(self.by_model.setdefault(usage.model, {}), usage.tokens)
        _added(self.response_tokens, _counted(usage.tokens))

    def tokens(self) -> dict:
        """{input, output, cache-read, cache-write}: responses once each, plus the last running total."""
        running = self.running or {}
        return {kind: self.response_tokens[kind] + running.get(kind, 0) for kind in TOKEN_KINDS}

    def title(self) -> str | None:
        return next((self.titles[kind] for kind in TITLE_KINDS if self.titles.get(kind)), self.first_prompt)

    def summary(self, prices) -> dict:
        """The summary's own fields (the service adds identity, sub-agent sessions and their tokens)."""
        duration = (self.ended - self.started).total_seconds() if self.started is not None else None
        return {
            "title": self.title(),
            "started": iso(self.started),
            "ended": iso(self.ended),
            "duration-s": round(duration, 3) if duration is not None else None,
            "models": sorted(self.models),
            "turns": self.turns,
            "tool-calls": dict(sorted(self.tool_calls.items())),
            "tool-errors": self.tool_errors,
            "files-touched": list(self.files),
            "commands": self.commands,
            "subagents": sorted(set(self.launches.values())),
            "tokens": self.tokens(),
            "cost-usd": prices.cost(self.by_model),
            "prices-date": prices.date,
            "lines": self.lines,
        }

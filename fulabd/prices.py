"""
The dated price table that turns token counts into an estimated cost.

Shipped as `fulabd/data/prices.json`; `--prices FILE` replaces it whole.
A model the table does not name has no price: its cost is None, never a guess.
"""

from __future__ import annotations

import re
from importlib import resources

import orjson

from fulabd.formats.common import CACHE_WRITE_1H, TOKEN_KINDS

PRICE_KINDS = TOKEN_KINDS + (CACHE_WRITE_1H,)
REQUIRED_KINDS = ("input", "output", "cache-read", "cache-write")
DATED_SUFFIX = re.compile(r"-\d{8}$")  # claude-sonnet-4-20250514 is priced as claude-sonnet-4
CONTEXT_SUFFIX = re.compile(r"\[[0-9a-z]+\]$")  # claude-opus-4-7[1m]


class BadPrices(ValueError):
    """A price file that cannot be used; the message says what to fix."""


class PriceTable:
    def __init__(self, date: str, models: dict[str, dict]):
        self.date = date
        self.models = models

    @classmethod
    def shipped(cls) -> "PriceTable":
        return cls.parse(resources.files("fulabd").joinpath("data/prices.json").read_bytes(), "the shipped table")

    @classmethod
    def load(cls, path: str | None) -> "PriceTable":
        """The table at `path`, or the shipped one when `path` is None."""
        if path is None:
            return cls.shipped()
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise BadPrices(f"cannot read the price file {path}: {e.strerror}") from None
        return cls.parse(data, path)

    @classmethod
    def parse(cls, data: bytes, where: str) -> "PriceTable":
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise BadPrices(f"{where} is not valid JSON ({e})") from None
        if not isinstance(value, dict) or not isinstance(value.get("date"), str) or not isinstance(
                value.get("models"), dict):
            raise BadPrices(f"{where} needs a \"date\" string and a \"models\" object "
                            "(see fulabd/data/prices.json for the shape)")
        models = {}
        for model, prices in value["models"].items():
            if not isinstance(prices, dict) or any(kind not in prices for kind in REQUIRED_KINDS):
                raise BadPrices(f"{where}: model {model!r} needs the prices {', '.join(REQUIRED_KINDS)}")
            for kind in PRICE_KINDS:
                price = prices.get(kind, 0)
                if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
                    raise BadPrices(f"{where}: the {kind} price of {model!r} must be a number of dollars "
                                    "per million tokens, 0 or more")
            models[model] = {kind: float(prices.get(kind, prices["cache-write"] if kind == CACHE_WRITE_1H else 0))
                             for kind in PRICE_KINDS}
        return cls(value["date"], models)

    def price(self, model: str | None) -> dict | None:
        """The prices of `model`, by its exact name or without a date or context-size suffix."""
        if not isinstance(model, str):
            return None
        for name in (model, CONTEXT_SUFFIX.sub("", model), DATED_SUFFIX.sub("", CONTEXT_SUFFIX.sub("", model))):
            if name in self.models:
                return self.models[name]
        return None

    def cost(self, tokens_by_model: dict) -> float | None:
        """Dollars for {model: tokens}; None when some tokens belong to a model without a price."""
        total = 0.0
        for model, tokens in tokens_by_model.items():
            if not any(tokens.values()):
                continue
            prices = self.price(model)
            if prices is None:
                return None
            one_hour = tokens.get(CACHE_WRITE_1H, 0)
            total += (tokens.get("input", 0) * prices["input"] + tokens.get("output", 0) * prices["output"]
                      + tokens.get("cache-read", 0) * prices["cache-read"]
                      + (tokens.get("cache-write", 0) - one_hour) * prices["cache-write"]
                      + one_hour * prices[CACHE_WRITE_1H]) / 1e6
        return round(total, 6)

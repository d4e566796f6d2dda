// Counts and costs as the list and the session header both show them.

export function formatCount(n) {
  if (n < 1000) return String(n);
  if (n < 1e6) return `${(n / 1000).toFixed(n < 1e4 ? 1 : 0)}k`;
  return `${(n / 1e6).toFixed(n < 1e7 ? 2 : 1)}M`;
}

export function formatCost(usd) {
  if (usd === null || usd === undefined) return "—";
  return usd > 0 && usd < 0.01 ? `$${usd.toFixed(4)}` : `$${usd.toFixed(2)}`;
}

// A summary's tokens (`{input, output, cache-read, cache-write}`): their total, and each kind for a tooltip.
export function tokenTotal(tokens) {
  return tokens.input + tokens.output + tokens["cache-read"] + tokens["cache-write"];
}

export function tokenBreakdown(tokens) {
  return `input ${tokens.input.toLocaleString()}, output ${tokens.output.toLocaleString()}, ` +
    `cache read ${tokens["cache-read"].toLocaleString()}, cache write ${tokens["cache-write"].toLocaleString()}`;
}

// Why a cost is what it is: the price table's date and the models, or the model it has no price for.
export function costNote(summary) {
  return summary["cost-usd"] === null
    ? `no price for ${summary.models.join(", ") || "an unnamed model"} in the table of ${summary["prices-date"]}`
    : `estimated from list prices of ${summary["prices-date"]} (${summary.models.join(", ")})`;
}

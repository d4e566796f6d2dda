// Times as the reader sees them: the local clock, the day, durations, "ago".

export const PAUSE_MS = 10 * 60 * 1000;   // a gap longer than this between two lines gets a marker

// Made once: building an Intl formatter costs far more than using one, and every row formats a time.
const FULL = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "long" });
const DAY = new Intl.DateTimeFormat(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
const CLOCK = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });

export function parse(iso) {
  const then = Date.parse(iso);
  return Number.isNaN(then) ? null : then;
}

export function clock(iso) {
  const then = parse(iso);
  return then === null ? "" : CLOCK.format(then);
}

// The full local date and time, for a title attribute.
export function full(iso) {
  const then = parse(iso);
  return then === null ? "" : FULL.format(then);
}

export function dayKey(ms) {
  const date = new Date(ms);
  return `${date.getFullYear()}-${date.getMonth()}-${date.getDate()}`;
}

export function dayLabel(ms) {
  return DAY.format(ms);
}

export function ago(iso) {
  const then = parse(iso);
  if (then === null) return "";
  const seconds = Math.max(0, (Date.now() - then) / 1000);
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return new Date(then).toLocaleDateString();
}

// "850 ms", "12.3 s", "4 min 5 s", "2 h 10 min", "3 d 4 h".
export function duration(ms) {
  if (ms < 0 || !Number.isFinite(ms)) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h} h ${m % 60} min`;
  return `${Math.floor(h / 24)} d ${h % 24} h`;
}

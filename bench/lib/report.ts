// Benchmark results: the comparison model every benchmark fills in, its summary (median, min–max, ratios), the
// Markdown tables, and the files written to bench/results/.
import fs from 'node:fs';
import path from 'node:path';
import type { RunOutcome } from './alternate.js';
import type { HostInfo } from './host.js';
import { ratio, summarize, type Summary } from './stats.js';

export interface FigureDef {
  key: string;
  label: string;
  unit: string;
  /** Decimals shown in the tables. */
  digits: number;
  /** For the reader: whether a smaller value is better (default true). */
  lowerIsBetter?: boolean;
}

/** One run as stored: its figures (null when not measured) and anything else worth keeping. */
export interface RunRecord {
  config: string;
  round: number;
  seq: number;
  ok: boolean;
  error?: string;
  retriedErrors: string[];
  attempts: number;
  startedAt: string;
  wallMs: number;
  figures: Record<string, number | null>;
  details?: unknown;
}

export interface FigureSummary {
  key: string;
  /** Per configuration, over its successful runs. */
  perConfig: Record<string, Summary>;
  /** Candidate median / baseline median. */
  ratioOfMedians: number;
  /** Candidate / baseline within each round where both succeeded. */
  pairRatios: number[];
  pairRatio: Summary;
}

/** Configurations compared side by side under the same parameters. */
export interface Comparison {
  title: string;
  params: Record<string, unknown>;
  configs: string[];
  baseline: string;
  candidate: string;
  figures: FigureDef[];
  runs: RunRecord[];
  summary: FigureSummary[];
}

export interface BenchResult {
  name: string;
  description: string;
  comparisons: Comparison[];
  notes: string[];
  /** Markdown shown before the comparisons (e.g. a headline table). */
  summary?: string;
  /** An SVG picture, written beside the results as <base>.svg. */
  svg?: string;
  /** Extra data kept in the JSON. */
  data?: unknown;
}

export interface FigureValues {
  figures: Record<string, number | null>;
  details?: unknown;
}

/** Turns alternation outcomes into stored runs. */
export function toRunRecords<T extends FigureValues>(outcomes: RunOutcome<T>[]): RunRecord[] {
  return outcomes.map((o) => ({
    config: o.config,
    round: o.round,
    seq: o.seq,
    ok: o.ok,
    error: o.error,
    retriedErrors: o.retriedErrors,
    attempts: o.attempts,
    startedAt: o.startedAt,
    wallMs: Math.round(o.wallMs),
    figures: o.value?.figures ?? {},
    details: o.value?.details,
  }));
}

export function summarizeComparison(
  runs: RunRecord[],
  figures: FigureDef[],
  baseline: string,
  candidate: string,
  configs: string[],
): FigureSummary[] {
  const ok = runs.filter((r) => r.ok);
  const rounds = [...new Set(ok.map((r) => r.round))].sort((a, b) => a - b);
  return figures.map((figure) => {
    const perConfig: Record<string, Summary> = {};
    for (const config of configs) perConfig[config] = summarize(ok.filter((r) => r.config === config).map((r) => r.figures[figure.key]));
    const pairRatios: number[] = [];
    for (const round of rounds) {
      const a = ok.find((r) => r.round === round && r.config === baseline)?.figures[figure.key];
      const b = ok.find((r) => r.round === round && r.config === candidate)?.figures[figure.key];
      const value = ratio(b ?? NaN, a ?? NaN);
      if (Number.isFinite(value)) pairRatios.push(value);
    }
    return {
      key: figure.key,
      perConfig,
      ratioOfMedians: ratio(perConfig[candidate]?.median ?? NaN, perConfig[baseline]?.median ?? NaN),
      pairRatios,
      pairRatio: summarize(pairRatios),
    };
  });
}

export function makeComparison(options: {
  title: string;
  params: Record<string, unknown>;
  configs: string[];
  figures: FigureDef[];
  runs: RunRecord[];
}): Comparison {
  const [baseline, candidate] = options.configs;
  return {
    ...options,
    baseline,
    candidate,
    summary: summarizeComparison(options.runs, options.figures, baseline, candidate, options.configs),
  };
}

// ---------------------------------------------------------------- Markdown

function escapeCell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

/** A Markdown table with padded columns; `align` per column: 'l' or 'r'. */
export function markdownTable(headers: string[], rows: string[][], align: ('l' | 'r')[] = []): string {
  const cells = [headers, ...rows].map((row) => row.map(escapeCell));
  const widths = headers.map((_, i) => Math.max(3, ...cells.map((row) => (row[i] ?? '').length)));
  const pad = (text: string, i: number) => (align[i] === 'r' ? text.padStart(widths[i]) : text.padEnd(widths[i]));
  const line = (row: string[]) => `| ${row.map((cell, i) => pad(cell ?? '', i)).join(' | ')} |`;
  const rule = `| ${widths.map((w, i) => (align[i] === 'r' ? '-'.repeat(w - 1) + ':' : '-'.repeat(w))).join(' | ')} |`;
  return [line(cells[0]), rule, ...cells.slice(1).map(line)].join('\n');
}

export function formatNumber(value: number, digits: number): string {
  if (!Number.isFinite(value)) return '–';
  return value.toFixed(digits);
}

function formatRatio(value: number): string {
  return Number.isFinite(value) ? value.toFixed(2) : '–';
}

/** The table of one comparison: a row per figure; median and min–max per configuration, then the ratios. */
export function comparisonTable(comparison: Comparison): string {
  const { baseline, candidate } = comparison;
  const others = comparison.configs.filter((c) => c !== baseline && c !== candidate);
  const configs = [baseline, candidate, ...others];
  const headers = ['figure', ...configs.flatMap((c) => [`${c} median`, `${c} min–max`]), `${candidate}/${baseline}`, 'per-pair ratio min–max'];
  const rows = comparison.figures.map((figure) => {
    const s = comparison.summary.find((x) => x.key === figure.key)!;
    const cells = [`${figure.label} (${figure.unit})`];
    for (const config of configs) {
      const c = s.perConfig[config];
      cells.push(c && c.n ? formatNumber(c.median, figure.digits) : '–');
      cells.push(c && c.n ? `${formatNumber(c.min, figure.digits)}–${formatNumber(c.max, figure.digits)}` : '–');
    }
    cells.push(formatRatio(s.ratioOfMedians));
    cells.push(s.pairRatio.n ? `${formatRatio(s.pairRatio.min)}–${formatRatio(s.pairRatio.max)}` : '–');
    return cells;
  });
  return markdownTable(headers, rows, ['l', ...configs.flatMap(() => ['r', 'r'] as const), 'r', 'r']);
}

function runsLine(comparison: Comparison): string {
  const parts = comparison.configs.map((config) => {
    const runs = comparison.runs.filter((r) => r.config === config);
    const ok = runs.filter((r) => r.ok).length;
    return `${config} ${ok}/${runs.length} ok`;
  });
  const rounds = Math.max(0, ...comparison.runs.map((r) => r.round));
  const retried = comparison.runs.filter((r) => r.attempts > 1).length;
  return `${rounds} rounds, alternating ${comparison.configs.join(' ')} …; ${parts.join(', ')}${retried ? `; ${retried} run(s) needed a retry` : ''}`;
}

export function hostMarkdown(host: HostInfo): string {
  const criu = Object.entries(host.criu)
    .map(([version, text]) => `${version}: ${text}`)
    .join('; ');
  return [
    `- host: ${host.hostname}, kernel ${host.kernel}`,
    `- CPU: ${host.cpuModel}, ${host.cores} cores; memory ${host.memoryMiB} MiB; load average at start ${host.loadAverage.map((l) => l.toFixed(2)).join(' ')}`,
    `- node ${host.node}; CRIU ${criu || 'none'}`,
    `- lazyd commit ${host.git.commit ?? 'unknown'}${host.git.dirty ? ' (working tree has uncommitted changes)' : ''}`,
  ].join('\n');
}

export function resultMarkdown(result: BenchResult, host: HostInfo, meta: { startedAt: string; finishedAt: string; argv: string[] }): string {
  const out: string[] = [
    `## ${result.name}: ${result.description}`,
    '',
    `Run ${meta.startedAt} – ${meta.finishedAt}; \`${['node dist/bench/run.js', ...meta.argv].join(' ')}\``,
    '',
    hostMarkdown(host),
    '',
  ];
  if (result.summary) out.push(result.summary, '');
  for (const comparison of result.comparisons) {
    out.push(`### ${comparison.title}`, '', runsLine(comparison), '', comparisonTable(comparison), '');
    const failed = comparison.runs.filter((r) => !r.ok);
    for (const run of failed) out.push(`- run ${run.seq} (${run.config}, round ${run.round}) failed: ${run.error?.split('\n')[0]}`);
    if (failed.length) out.push('');
  }
  if (result.notes.length) out.push('Notes:', '', ...result.notes.map((n) => `- ${n}`), '');
  return out.join('\n');
}

// ---------------------------------------------------------------- files

/** A file-name-safe local timestamp: 2025-01-31T14-05-09. */
export function fileStamp(date = new Date()): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${p(date.getMonth() + 1)}-${p(date.getDate())}T${p(date.getHours())}-${p(date.getMinutes())}-${p(date.getSeconds())}`;
}

/** Writes <dir>/<base>.json and <dir>/<base>.md; returns both paths. */
export function writeResultFiles(dir: string, base: string, json: unknown, markdown: string): { json: string; markdown: string } {
  fs.mkdirSync(dir, { recursive: true });
  const jsonFile = path.join(dir, `${base}.json`);
  const mdFile = path.join(dir, `${base}.md`);
  fs.writeFileSync(jsonFile, JSON.stringify(json, (_key, value) => (typeof value === 'bigint' ? value.toString() : value), 2) + '\n');
  fs.writeFileSync(mdFile, markdown.endsWith('\n') ? markdown : markdown + '\n');
  return { json: jsonFile, markdown: mdFile };
}

// A small SVG bar chart without a chart library: groups of bars on a log scale, one group per label, one bar per
// series, with a reference line at 1 (for ratios: below 1 = the candidate is better when lower is better).
export interface BarGroup {
  label: string;
  /** One value per series (NaN / non-finite: no bar, "–"). */
  values: number[];
}

export interface BarChart {
  title: string;
  subtitle?: string;
  series: string[];
  groups: BarGroup[];
  /** Log-scale bounds (default 0.01 … 100). */
  min?: number;
  max?: number;
}

const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];

function esc(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

export function barChartSvg(chart: BarChart): string {
  const min = chart.min ?? 0.01;
  const max = chart.max ?? 100;
  const barW = 11;
  const groupGap = 14;
  const groupW = chart.series.length * barW + groupGap;
  const left = 60;
  const perRow = 4;
  const legendRows = Math.ceil(chart.series.length / perRow);
  const top = 50 + legendRows * 16;
  const plotH = 300;
  const width = Math.max(760, left + chart.groups.length * groupW + 90);
  const height = top + plotH + 240;
  const y = (v: number) => top + plotH * (1 - (Math.log10(Math.min(max, Math.max(min, v))) - Math.log10(min)) / (Math.log10(max) - Math.log10(min)));
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${left}" y="18" font-size="14" font-weight="bold">${esc(chart.title)}</text>`,
  ];
  if (chart.subtitle) out.push(`<text x="${left}" y="34">${esc(chart.subtitle)}</text>`);
  // Legend.
  chart.series.forEach((name, i) => {
    const x = left + (i % perRow) * 170;
    const yy = 42 + Math.floor(i / perRow) * 16;
    out.push(`<rect x="${x}" y="${yy}" width="10" height="10" fill="${COLORS[i % COLORS.length]}"/>`, `<text x="${x + 14}" y="${yy + 9}">${esc(name)}</text>`);
  });
  // Axis: decades.
  for (let e = Math.ceil(Math.log10(min)); e <= Math.floor(Math.log10(max)); e++) {
    const v = 10 ** e;
    const yy = y(v).toFixed(1);
    out.push(
      `<line x1="${left}" x2="${width - 10}" y1="${yy}" y2="${yy}" stroke="${e === 0 ? '#000' : '#ddd'}" stroke-width="${e === 0 ? 1.2 : 1}"/>`,
      `<text x="${left - 6}" y="${(y(v) + 4).toFixed(1)}" text-anchor="end">${v >= 1 ? v.toFixed(0) : v}×</text>`,
    );
  }
  chart.groups.forEach((group, g) => {
    const x0 = left + 8 + g * groupW;
    group.values.forEach((v, i) => {
      const x = x0 + i * barW;
      if (!Number.isFinite(v) || v <= 0) {
        out.push(`<text x="${x + barW / 2}" y="${(y(1) - 3).toFixed(1)}" text-anchor="middle" fill="#999">–</text>`);
        return;
      }
      const y1 = y(1);
      const yv = y(v);
      out.push(
        `<rect x="${x}" y="${Math.min(y1, yv).toFixed(1)}" width="${barW - 2}" height="${Math.max(1, Math.abs(yv - y1)).toFixed(1)}" fill="${COLORS[i % COLORS.length]}"><title>${esc(`${group.label}, ${chart.series[i]}: ${v.toPrecision(3)}`)}</title></rect>`,
      );
    });
    const cx = x0 + (group.values.length * barW) / 2;
    out.push(`<text transform="translate(${cx.toFixed(1)},${top + plotH + 8}) rotate(55)" font-size="10">${esc(group.label)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

// The metric kinds lazyd's registries are made of: prom-client counters and gauges whose value is read when a
// scrape asks (collect callbacks), and a histogram whose buckets are kept elsewhere (natively, or in plain
// counters) and only formatted here.
import client from 'prom-client';

type Read<T> = () => T | undefined;

export function counter(registry: client.Registry, name: string, help: string, value: () => number | undefined): void {
  new client.Counter({
    name,
    help,
    registers: [registry],
    collect() {
      const v = value();
      this.reset();
      if (v !== undefined) this.inc(Number(v));
    },
  });
}

export function labelledCounter(
  registry: client.Registry,
  name: string,
  help: string,
  label: string,
  values: () => Record<string, number> | undefined,
): void {
  new client.Counter({
    name,
    help,
    labelNames: [label],
    registers: [registry],
    collect() {
      const all = values();
      this.reset();
      for (const [key, v] of Object.entries(all ?? {})) this.inc({ [label]: key }, Number(v));
    },
  });
}

export function gauge(registry: client.Registry, name: string, help: string, value: () => number | undefined): void {
  new client.Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      const v = value();
      this.set(v === undefined ? 0 : Number(v));
    },
  });
}

/**
 * A histogram whose buckets are kept natively (per-bucket counts in µs, a sum in µs and a count): exported as
 * cumulative buckets in seconds. prom-client's Histogram only observes samples one by one, so this is a metric
 * object of our own that the registry formats like any other.
 */
export class NativeHistogram {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  constructor(
    readonly name: string,
    readonly help: string,
    private readonly read: Read<{ boundsUs: number[]; counts: number[]; sumUs: number; count: number }>,
  ) {}
  get() {
    const h = this.read();
    const values: { metricName: string; labels: Record<string, string | number>; value: number }[] = [];
    let cumulative = 0;
    const bounds = h?.boundsUs ?? [Infinity];
    for (let i = 0; i < bounds.length; i++) {
      cumulative += Number(h?.counts[i] ?? 0);
      const le = Number.isFinite(bounds[i]) ? String(bounds[i] / 1e6) : '+Inf';
      values.push({ metricName: `${this.name}_bucket`, labels: { le }, value: cumulative });
    }
    values.push({ metricName: `${this.name}_sum`, labels: {}, value: Number(h?.sumUs ?? 0) / 1e6 });
    values.push({ metricName: `${this.name}_count`, labels: {}, value: Number(h?.count ?? 0) });
    return { name: this.name, help: this.help, type: this.type, values, aggregator: this.aggregator };
  }
}

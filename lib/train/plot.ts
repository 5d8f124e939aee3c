/**
 * Training curves as pictures: a vega-lite line chart (one line per series, log-scale optional)
 * rendered to SVG by vega, then to PNG by sharp. No hand-written plotting.
 */
import sharp from 'sharp';
import { checkKeys, optionKeys } from '../errors.js';

// vega and vega-lite are ES modules only: loaded with import(), which both the ESM and the CJS
// builds of this package can do.
// The two calls used, typed here (the packages' types do not resolve in the CJS type-check).
interface VegaLite {
  compile(spec: Record<string, unknown>): { spec: unknown };
}
interface VegaView {
  toSVG(): Promise<string>;
  finalize(): void;
}
interface Vega {
  parse(spec: unknown): unknown;
  View: new (runtime: unknown, opts: { renderer: 'none' }) => VegaView;
}
// The CJS build compiles import() to require(), which cannot load these packages: there, a real
// dynamic import created at run time takes over.
async function importEsm(specifier: string): Promise<unknown> {
  try {
    return (await import(specifier)) as unknown;
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code !== 'ERR_REQUIRE_ESM' && code !== 'ERR_REQUIRE_ASYNC_MODULE') throw e;
    return (new Function('s', 'return import(s)') as (s: string) => Promise<unknown>)(specifier);
  }
}
let libs: Promise<[Vega, VegaLite]> | null = null;
const load = () =>
  (libs ??= Promise.all([importEsm('vega') as Promise<Vega>, importEsm('vega-lite') as Promise<VegaLite>]));

/** One named curve: (step, value) points. */
export interface CurveSeries {
  name: string;
  points: readonly (readonly [number, number])[];
}

export interface CurveOptions {
  title?: string;
  /** Log-scale y axis (default false); non-positive values are dropped then. */
  logY?: boolean;
  width?: number;
  height?: number;
  xTitle?: string;
  yTitle?: string;
}
const CURVE_KEYS = optionKeys<CurveOptions>()(['title', 'logY', 'width', 'height', 'xTitle', 'yTitle']);

/** The chart as an SVG string. */
export async function curvesSvg(series: readonly CurveSeries[], opts: CurveOptions = {}): Promise<string> {
  checkKeys('curvesSvg options', opts, CURVE_KEYS);
  const values: { step: number; value: number; series: string }[] = [];
  for (const s of series) {
    for (const [step, value] of s.points) {
      if (!Number.isFinite(step) || !Number.isFinite(value)) continue;
      if (opts.logY && value <= 0) continue;
      values.push({ step, value, series: s.name });
    }
  }
  const [vega, vl] = await load();
  const spec: Record<string, unknown> = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: opts.title ?? '',
    width: opts.width ?? 640,
    height: opts.height ?? 320,
    background: 'white',
    data: { values },
    mark: { type: 'line', strokeWidth: 1.5 },
    encoding: {
      x: { field: 'step', type: 'quantitative', title: opts.xTitle ?? 'step' },
      y: {
        field: 'value',
        type: 'quantitative',
        title: opts.yTitle ?? 'loss',
        scale: opts.logY ? { type: 'log' } : { zero: false },
      },
      color: { field: 'series', type: 'nominal', title: null },
    },
  };
  const compiled = vl.compile(spec).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

/** Writes the chart as a PNG file. */
export async function writeCurvesPng(
  path: string,
  series: readonly CurveSeries[],
  opts: CurveOptions = {},
): Promise<void> {
  checkKeys('writeCurvesPng options', opts, CURVE_KEYS);
  const svg = await curvesSvg(series, opts);
  await sharp(Buffer.from(svg)).png().toFile(path);
}

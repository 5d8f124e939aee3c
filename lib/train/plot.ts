/**
 * Training curves as pictures: a vega-lite line chart (one line per series, log-scale optional)
 * rendered to SVG by vega, then to PNG by sharp. No hand-written plotting.
 */
import * as vega from 'vega';
import * as vl from 'vega-lite';
import sharp from 'sharp';

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

/** The chart as an SVG string. */
export async function curvesSvg(series: readonly CurveSeries[], opts: CurveOptions = {}): Promise<string> {
  const values: { step: number; value: number; series: string }[] = [];
  for (const s of series) {
    for (const [step, value] of s.points) {
      if (!Number.isFinite(step) || !Number.isFinite(value)) continue;
      if (opts.logY && value <= 0) continue;
      values.push({ step, value, series: s.name });
    }
  }
  const spec: vl.TopLevelSpec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: opts.title ?? '',
    width: opts.width ?? 640,
    height: opts.height ?? 320,
    background: 'white',
    data: { values },
    mark: { type: 'line', strokeWidth: 1.5 },
    encoding: {
      x: { field: 'step', type: 'quantitative', title: opts.xTitle ?? 'step' },
      y: { field: 'value', type: 'quantitative', title: opts.yTitle ?? 'loss', scale: opts.logY ? { type: 'log' } : { zero: false } },
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
export async function writeCurvesPng(path: string, series: readonly CurveSeries[], opts: CurveOptions = {}): Promise<void> {
  const svg = await curvesSvg(series, opts);
  await sharp(Buffer.from(svg)).png().toFile(path);
}

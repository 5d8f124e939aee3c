import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { curvesSvg, writeCurvesPng } from '../lib/train/plot.js';

describe('training curves', () => {
  const pts = Array.from({ length: 50 }, (_, i) => [i * 10, 2 * Math.exp(-i / 10) + 0.05] as const);
  it('draws one line per series into an SVG with the axis titles', async () => {
    const svg = await curvesSvg(
      [
        { name: 'loss', points: pts },
        { name: 'recon', points: pts.map(([s, v]) => [s, v / 2] as const) },
      ],
      { title: 'tokenizer', yTitle: 'value' },
    );
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('tokenizer');
    expect(svg).toContain('value');
    expect(svg).toContain('recon');
    expect((svg.match(/class="mark-line/g) ?? []).length).toBeGreaterThanOrEqual(1);
  });
  it('writes a PNG of the requested size (log scale drops non-positive values)', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mvq-plot-'));
    const out = path.join(dir, 'curve.png');
    await writeCurvesPng(out, [{ name: 'loss', points: [...pts, [600, 0], [610, Number.NaN]] }], {
      logY: true,
      width: 300,
      height: 150,
    });
    const meta = await sharp(out).metadata();
    expect(meta.format).toBe('png');
    expect(meta.width!).toBeGreaterThan(300);
    expect(meta.height!).toBeGreaterThan(150);
    fs.rmSync(dir, { recursive: true, force: true });
  });
});
